"""Both transformers profiles (4.37.2 and 4.57.x) give the same greedy tokens.

scripts/test.sh runs the suite once per profile and points LLAVA_AVC_OTHER_PYTHON at the other
profile's interpreter; this test runs tests/profile_tokens.py under both and compares.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")

OTHER_PYTHON = os.environ.get("LLAVA_AVC_OTHER_PYTHON")
SCRIPT = Path(__file__).with_name("profile_tokens.py")


def _tokens(python: str, workdir: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([python, str(SCRIPT), str(workdir)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not OTHER_PYTHON, reason="set LLAVA_AVC_OTHER_PYTHON (scripts/test.sh does) to compare profiles")
def test_greedy_tokens_are_the_same_on_both_transformers_profiles(tmp_path):
    here = _tokens(sys.executable, tmp_path / "here")
    there = _tokens(OTHER_PYTHON, tmp_path / "there")
    assert here["transformers"] != there["transformers"], "the two interpreters run the same transformers"
    assert here["tokens"] == there["tokens"]
