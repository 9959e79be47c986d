"""Smoke tests of the decode benchmark (llava_avc.bench, scripts/bench_decode.py) at tiny size, CPU.

They check that every method runs and reports the asked shape; they never assert a time.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from llava_avc import bench

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
    from llava_avc import loading
    from llava_avc.patches import compat

    rows = bench.run_benchmark(checkpoint=tiny_llava_dir, methods=["plain", "avc"], dtypes=["nf4"], batches=[1],
                               new_tokens=[4, 8], runs=1, warmup=0, log=quiet)
    assert [(row["method"], row["new_tokens"]) for row in rows] == [("plain", 4), ("plain", 8), ("avc", 4), ("avc", 8)]
    quantizes_here = compat.TRANSFORMERS_VERSION >= loading.MIN_TRANSFORMERS_CPU_QUANT
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
    assert bench.ensure_checkpoint("tiny", tiny_llava_dir, log=messages.append) == tiny_llava_dir.resolve()
    assert config.stat().st_mtime_ns == before and messages == []
