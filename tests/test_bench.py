"""Smoke tests of the decode benchmark (scripts/decode_benchmark.py, scripts/bench_decode.py) at tiny size, CPU.

They check that every method runs and reports the asked shape; they never assert a time.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import decode_benchmark as bench  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def quiet(message):
    pass


def test_every_method_runs_with_the_asked_batch_and_token_count(tiny_llava_dir):
    rows = bench.run_benchmark(checkpoint=tiny_llava_dir, methods=bench.METHODS, dtypes=["fp32"], batches=[1, 2],
                               new_tokens=[4], runs=1, warmup=0, log=quiet)
    assert len(rows) == len(bench.METHODS) * 2
    assert {(row["method"], row["batch"]) for row in rows} == {(m, b) for m in bench.METHODS for b in (1, 2)}
    for row in rows:
        assert set(bench.ROW_KEYS) <= set(row)
        assert not row.get("error") and not row.get("skipped"), row
        assert row["new_tokens"] == row["generated_tokens"] == 4
        assert row["batch"] in (1, 2) and row["dtype"] == "fp32" and row["device"] == "cpu"
        assert row["prompt_tokens"] == bench.PROMPT_TOKENS  # 576 image tokens + 50 text tokens
        assert row["peak_mem_gib"] is None  # CPU
        for key in ("prefill_ms", "decode_ms_per_token", "tokens_per_s"):
            assert isinstance(row[key], float)
    avc = [row for row in rows if row["method"] == "avc"]
    assert all(row["avc_over_lean_decode"] is not None for row in avc)


def test_nf4_rows_are_measured_where_possible_and_skipped_with_a_reason_otherwise(tiny_llava_dir):
    """transformers >= 4.53 quantizes on the CPU (measured rows); 4.37 needs a GPU (skipped rows)."""
    from llava_avc.backends import devices
    from llava_avc.backends.llava import compat

    rows = bench.run_benchmark(checkpoint=tiny_llava_dir, methods=["plain", "avc"], dtypes=["nf4"], batches=[1],
                               new_tokens=[4, 8], runs=1, warmup=0, log=quiet)
    assert [(row["method"], row["new_tokens"]) for row in rows] == [("plain", 4), ("plain", 8), ("avc", 4), ("avc", 8)]
    quantizes_here = compat.TRANSFORMERS_VERSION >= devices.MIN_TRANSFORMERS_CPU_QUANT
    for row in rows:
        if quantizes_here:
            assert not row.get("skipped") and row["decode_ms_per_token"] is not None and row["dtype"] == "nf4"
        else:
            assert "GPU" in row["skipped"] and row["prefill_ms"] is None and row["tokens_per_s"] is None


def test_bad_grid_is_refused_before_loading(tiny_llava_dir):
    with pytest.raises(ValueError, match="new token counts must be >= 2"):
        bench.run_benchmark(checkpoint=tiny_llava_dir, new_tokens=[1], log=quiet)
    with pytest.raises(ValueError, match="unknown method"):
        bench.run_benchmark(checkpoint=tiny_llava_dir, methods=["beam"], log=quiet)


def test_command_line_writes_json_rows_with_the_required_keys(tiny_llava_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_decode", ROOT / "scripts" / "bench_decode.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "bench.json"
    code = script.main(["--checkpoint", str(tiny_llava_dir), "--batches", "1", "--new-tokens", "2,3",
                        "--runs", "1", "--warmup", "0", "--methods", "plain,lean,avc", "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())
    assert [(row["method"], row["new_tokens"]) for row in rows] == [
        (method, n) for method in ("plain", "lean", "avc") for n in (2, 3)]
    for row in rows:
        assert set(bench.ROW_KEYS) <= set(row)
        assert row["batch"] == 1
    printed = capsys.readouterr().out
    assert "| method | dtype | batch | new_tokens | prefill_ms |" in printed
    assert "avc/lean decode" in printed and "machine:" in printed


def test_an_existing_checkpoint_of_the_preset_is_reused(tiny_llava_dir):
    config = tiny_llava_dir / "config.json"
    before = config.stat().st_mtime_ns
    messages = []
    reused = bench.LlavaBackend().ensure_checkpoint("tiny", tiny_llava_dir, log=messages.append)
    assert reused == tiny_llava_dir.resolve()
    assert config.stat().st_mtime_ns == before and messages == []


# ------------------------------------------------------------------------------ target verdicts


def _gpu_rows(lean_decode=20.0, avc_decode=22.0, plain_prefill=30.0, avc_prefill=69.0, plain_e2e=1500.0,
              avc_e2e=1490.0, plain_peak=6.2, avc_peak=6.8):
    """Rows as a CUDA run of bench_decode.py writes them (fp16 and nf4 at batch 1, the nf4 peak run)."""
    rows = []
    for dtype in ("fp16", "nf4"):
        for method, decode, prefill, e2e in (("lean", lean_decode, plain_prefill, plain_e2e),
                                             ("plain", lean_decode, plain_prefill, plain_e2e),
                                             ("avc", avc_decode, avc_prefill, avc_e2e)):
            rows.append(dict(method=method, dtype=dtype, batch=1, new_tokens=64, prefill_ms=prefill,
                             decode_ms_per_token=decode, tokens_per_s=64000 / e2e, peak_mem_gib=None,
                             device="cuda", e2e_ms=e2e, preset="7b-shape"))
    for method, peak in (("plain", plain_peak), ("avc", avc_peak)):
        rows.append(dict(method=method, dtype="nf4", batch=1, new_tokens=256, prefill_ms=50.0,
                         decode_ms_per_token=35.0, tokens_per_s=25.0, peak_mem_gib=peak, device="cuda",
                         e2e_ms=9000.0, preset="7b-shape"))
    return rows


def _verdicts(rows):
    return {verdict.target: verdict.verdict for verdict in bench.check_targets(rows)}


def test_targets_are_judged_at_their_limits():
    at_limits = _verdicts(_gpu_rows(avc_decode=22.0, avc_prefill=69.0, avc_peak=6.8))  # 1.10 x, 2.3 x, plain + 0.6
    gpu = {target: verdict for target, verdict in at_limits.items() if target.startswith("GPU")}
    assert len(gpu) == 7 and set(gpu.values()) == {"met"}
    over = _verdicts(_gpu_rows(avc_decode=22.5, avc_prefill=70.0, avc_e2e=1500.0, avc_peak=6.85))
    assert {target: verdict for target, verdict in over.items() if target.startswith("GPU")} == dict.fromkeys(gpu, "not met")
    absolute = _verdicts(_gpu_rows(plain_peak=6.9, avc_peak=7.05))  # within plain + 0.6, above 7.0 GiB
    assert [verdict for target, verdict in absolute.items() if "peak" in target] == ["not met"]


def test_targets_without_their_rows_are_not_measured():
    rows = [row for row in _gpu_rows() if row["dtype"] == "fp16"]
    skipped = dict(rows[-1], decode_ms_per_token=None, prefill_ms=None, e2e_ms=None, skipped="time budget spent")
    verdicts = _verdicts(rows[:-1] + [skipped])
    assert set(verdicts.values()) == {"not measured"}


def test_a_real_cpu_run_is_judged_only_on_the_cpu_target(tiny_llava_dir):
    rows = bench.run_benchmark(checkpoint=tiny_llava_dir, methods=["plain", "lean", "avc"], dtypes=["fp32"],
                               batches=[1], new_tokens=[4], runs=1, warmup=0, log=quiet)
    for row in rows:
        row["preset"] = "tiny"  # a --checkpoint run records the path; this checkpoint is the tiny preset
    verdicts = bench.check_targets(rows)
    assert {v.verdict for v in verdicts if v.target.startswith("GPU")} == {"not measured"}
    (cpu,) = [v for v in verdicts if v.target.startswith("CPU")]
    ratio = next(row["avc_over_lean_decode"] for row in rows if row["method"] == "avc")
    assert cpu.verdict == ("met" if ratio <= bench.CPU_DECODE_LIMIT else "not met")
    assert f"{ratio:.2f} x" in cpu.detail


def test_report_mode_reads_saved_rows_and_refuses_other_files(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_decode", ROOT / "scripts" / "bench_decode.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    bench.write_json(_gpu_rows()[:6], tmp_path / "run" / "b1-64.json")
    bench.write_json(_gpu_rows()[6:], tmp_path / "run" / "nf4-b1-256.json")
    assert script.main(["--report", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "| GPU fp16, batch 1: AVC decode <= 1.10 x lean | met | 1.100 x |" in printed
    assert "| GPU nf4, batch 1, 256 new tokens: AVC peak <= 7.0 GiB and <= plain + 0.6 GiB | met |" in printed
    (tmp_path / "notes.json").write_text('{"not": "rows"}')
    assert script.main(["--report", str(tmp_path / "notes.json")]) == 2
    assert "not a list of benchmark rows" in capsys.readouterr().err
