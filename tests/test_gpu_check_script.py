"""scripts/gpu_check.sh, the one prepared call for a lent GPU, run here at tiny size on the CPU.

A lent GPU is scarce (one call of a few minutes), so the script must not rot: every step has to
run and leave its files in $OUT. The grid is shrunk through GPU_CHECK_* (no time is asserted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import decode_benchmark as bench  # noqa: E402
from llava_avc.backends.devices import MIN_TRANSFORMERS_CPU_QUANT  # noqa: E402
from llava_avc.backends.llava.compat import TRANSFORMERS_VERSION  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_every_step_runs_and_leaves_its_files(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, GPU_CHECK_RUNS="1", GPU_CHECK_TOKENS="3",
               GPU_CHECK_LONG_TOKENS="4", HF_HUB_OFFLINE="1")
    env.pop("WHEELS", None)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "tiny", "cpu"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = (out / "steps.txt").read_text().splitlines()
    assert [line.split(" (")[0].removeprefix("== gpu_check: ") for line in steps] == [
        "1 machine and doctor", "2 CUDA tests", "3 batch 1, 3 new tokens, all methods",
        "4 nf4 peak memory, batch 1, 4 new tokens", "5 batch 8, 3 new tokens", "6 report", "done"]
    assert "doctor: healthy" in (out / "doctor.txt").read_text()
    assert "skipped" in (out / "pytest-gpu.txt").read_text()  # no CUDA here: every gpu test skips, with its reason

    rows = {name: json.loads((out / f"{name}.json").read_text()) for name in ("b1", "nf4-b1-long", "b8")}
    assert {row["method"] for row in rows["b1"]} == set(bench.METHODS)
    assert {(row["dtype"], row["batch"], row["new_tokens"]) for row in rows["b1"]} == {("fp32", 1, 3), ("nf4", 1, 3)}
    assert {(row["method"], row["batch"], row["new_tokens"]) for row in rows["nf4-b1-long"]} == {
        (method, 1, 4) for method in ("plain", "lean", "avc")}
    assert {(row["method"], row["batch"]) for row in rows["b8"]} == {(m, 8) for m in ("plain", "lean", "avc")}
    quantizes_here = TRANSFORMERS_VERSION >= MIN_TRANSFORMERS_CPU_QUANT
    for row in rows["nf4-b1-long"]:
        assert (row["decode_ms_per_token"] is not None) == quantizes_here, row
        assert quantizes_here or "GPU" in row["skipped"]

    report = (out / "report.md").read_text()
    assert "| target | verdict | measured |" in report
    assert report.count("| not measured |") >= 7  # the seven GPU targets: no CUDA rows here
