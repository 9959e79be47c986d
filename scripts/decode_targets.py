"""The decode benchmark's ratios and the project's speed and memory targets (docs/benchmarks.md).

``add_ratios(rows)`` puts the AVC ratios (to lean, to plain) on the avc rows of ``run_benchmark``'s
output (scripts/decode_benchmark.py); ``check_targets(rows)`` judges each target on those ratios as
"met", "not met" or "not measured" (never guessed), and ``format_targets`` makes the verdicts a
Markdown table. Rows are plain dicts, so saved ``--json`` files of several runs can be judged together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

#: The project's speed and memory targets, as limits on the ratios below, measured in one run:
GPU_DECODE_LIMIT = 1.10  # AVC decode ms/token <= 1.10 x lean, fp16 and nf4, batch 1
GPU_PREFILL_LIMIT = 2.3  # AVC prefill <= 2.3 x plain prefill
GPU_E2E_LIMIT = 1.0  # AVC end to end (64 new tokens) faster than upstream generate: ratio < 1
E2E_NEW_TOKENS = 64
PEAK_NEW_TOKENS = 256  # nf4, batch 1: AVC peak <= 7.0 GiB and <= plain + 0.6 GiB
PEAK_LIMIT_GIB = 7.0
PEAK_OVER_PLAIN_GIB = 0.6
CPU_DECODE_LIMIT = 1.5  # tiny preset on a CPU: AVC decode ms/token <= 1.5 x lean
#: The dtypes and the batch size the GPU targets are judged at.
GPU_TARGET_DTYPES = ("fp16", "nf4")
TARGET_BATCH = 1


# -------------------------------------------------------------------------------------- ratios


def _ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def _by_cell(rows: list[dict]) -> dict:
    """{(method, dtype, batch, new_tokens): row}; of equal keys the last row counts."""
    return {(r["method"], r["dtype"], r["batch"], r["new_tokens"]): r for r in rows}


def _set_avc_ratios(row: dict, lean: dict, plain: dict, sequential: dict) -> None:
    row["avc_over_lean_decode"] = _ratio(row["decode_ms_per_token"], lean.get("decode_ms_per_token"))
    row["avc_over_plain_e2e"] = _ratio(row.get("e2e_ms"), plain.get("e2e_ms"))
    row["avc_over_plain_prefill"] = _ratio(row["prefill_ms"], plain.get("prefill_ms"))
    if sequential:
        sequential["avc_sequential_over_lean_decode"] = _ratio(
            sequential["decode_ms_per_token"], lean.get("decode_ms_per_token"))


def add_ratios(rows: list[dict]) -> list[dict]:
    """Put, on every avc row, ``avc_over_lean_decode``, ``avc_over_plain_e2e`` (t(N) ratio, < 1 =
    AVC faster end to end) and ``avc_over_plain_prefill``; on avc_sequential rows its decode
    ratio to lean. Returns the ratio records (dtype, batch, new_tokens, ratios) for the table."""
    index = _by_cell(rows)
    records = []
    for (method, dtype, batch, n), row in index.items():
        if method != "avc":
            continue
        sequential = index.get(("avc_sequential", dtype, batch, n), {})
        _set_avc_ratios(row, index.get(("lean", dtype, batch, n), {}), index.get(("plain", dtype, batch, n), {}),
                        sequential)
        records.append(dict(
            dtype=dtype, batch=batch, new_tokens=n,
            avc_over_lean_decode=row["avc_over_lean_decode"],
            avc_over_plain_e2e=row["avc_over_plain_e2e"],
            avc_over_plain_prefill=row["avc_over_plain_prefill"],
            avc_sequential_over_lean_decode=sequential.get("avc_sequential_over_lean_decode"),
        ))
    return records


# ------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class TargetVerdict:
    target: str
    verdict: str  # "met", "not met" or "not measured"
    detail: str


def _measured(row: Optional[dict], key: str) -> bool:
    return bool(row) and row.get(key) is not None and not row.get("skipped") and not row.get("error")


def _verdict(target: str, ok: Optional[bool], detail: str) -> TargetVerdict:
    verdict = "not measured" if ok is None else ("met" if ok else "not met")
    return TargetVerdict(target, verdict, detail)


def _ratio_verdict(target: str, row: Optional[dict], ratio_key: str, measured_key: str,
                   passes: Callable[[float], bool], unit: str = " x") -> TargetVerdict:
    """The verdict on one ratio of an avc row (add_ratios' keys); "not measured" without the row."""
    value = row.get(ratio_key) if _measured(row, measured_key) else None
    return _verdict(target, None if value is None else passes(value), "-" if value is None else f"{value:.3f}{unit}")


def _gpu_speed_verdicts(gpu: dict, dtype: str) -> list[TargetVerdict]:
    """Decode, end-to-end and prefill targets of one dtype at batch 1."""
    avc = gpu.get(("avc", dtype, TARGET_BATCH, E2E_NEW_TOKENS))
    return [
        _ratio_verdict(f"GPU {dtype}, batch 1: AVC decode <= {GPU_DECODE_LIMIT:.2f} x lean",
                       avc, "avc_over_lean_decode", "decode_ms_per_token", lambda r: r <= GPU_DECODE_LIMIT),
        _ratio_verdict(f"GPU {dtype}, batch 1, {E2E_NEW_TOKENS} new tokens: AVC end to end faster than "
                       "upstream generate", avc, "avc_over_plain_e2e", "e2e_ms", lambda r: r < GPU_E2E_LIMIT,
                       unit=" x upstream's time"),
        _ratio_verdict(f"GPU {dtype}, batch 1: AVC prefill <= {GPU_PREFILL_LIMIT} x plain prefill",
                       avc, "avc_over_plain_prefill", "prefill_ms", lambda r: r <= GPU_PREFILL_LIMIT),
    ]


def _peak_verdict(gpu: dict) -> TargetVerdict:
    """nf4, batch 1, PEAK_NEW_TOKENS: AVC's peak memory, absolute and over plain's."""
    avc_peak = gpu.get(("avc", "nf4", TARGET_BATCH, PEAK_NEW_TOKENS))
    plain_peak = gpu.get(("plain", "nf4", TARGET_BATCH, PEAK_NEW_TOKENS))
    peak_ok, peak_detail = None, "-"
    if _measured(avc_peak, "peak_mem_gib") and _measured(plain_peak, "peak_mem_gib"):
        avc_gib, plain_gib = avc_peak["peak_mem_gib"], plain_peak["peak_mem_gib"]
        peak_ok = avc_gib <= PEAK_LIMIT_GIB and avc_gib <= plain_gib + PEAK_OVER_PLAIN_GIB
        peak_detail = f"AVC {avc_gib:.2f} GiB, plain {plain_gib:.2f} GiB"
    return _verdict(
        f"GPU nf4, batch 1, {PEAK_NEW_TOKENS} new tokens: AVC peak <= {PEAK_LIMIT_GIB} GiB and <= plain + "
        f"{PEAK_OVER_PLAIN_GIB} GiB", peak_ok, peak_detail)


def _cpu_verdict(rows: list[dict]) -> TargetVerdict:
    """Every fp32 avc row of the tiny preset on the CPU must meet CPU_DECODE_LIMIT."""
    cpu = [r for r in rows if r["method"] == "avc" and r["device"] == "cpu" and r.get("preset") == "tiny"
           and r["dtype"] == "fp32" and r.get("avc_over_lean_decode") is not None]
    ratios = [r["avc_over_lean_decode"] for r in cpu]
    return _verdict(
        f"CPU, tiny, fp32, every batch: AVC decode <= {CPU_DECODE_LIMIT} x lean", None if not ratios
        else max(ratios) <= CPU_DECODE_LIMIT,
        ", ".join(f"{r['avc_over_lean_decode']:.2f} x (batch {r['batch']}, {r['new_tokens']} tokens)" for r in cpu)
        or "-")


def check_targets(rows: list[dict]) -> list[TargetVerdict]:
    """Judge the benchmark targets on ``rows`` (one or several runs' rows, e.g. gpu_check's JSON files).

    GPU targets read rows whose device is CUDA; the CPU target every fp32 row of the ``tiny`` preset
    (the issue names no batch size for it, so every batch measured must meet it). A
    target without the rows it needs is "not measured", never guessed. Of rows with the same
    (method, dtype, batch, new_tokens) the last one counts.
    """
    add_ratios(rows)
    gpu = _by_cell([r for r in rows if str(r["device"]).startswith("cuda")])
    verdicts = [verdict for dtype in GPU_TARGET_DTYPES for verdict in _gpu_speed_verdicts(gpu, dtype)]
    return verdicts + [_peak_verdict(gpu), _cpu_verdict(rows)]


def format_targets(verdicts: Iterable[TargetVerdict]) -> str:
    lines = ["| target | verdict | measured |", "|---|---|---|"]
    lines += [f"| {v.target} | {v.verdict} | {v.detail} |" for v in verdicts]
    return "\n".join(lines)
