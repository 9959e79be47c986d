"""Decode-speed benchmark: upstream LLaVA generate vs the package's lean loop, AVC, VCD and M3ID.

One process, one checkpoint, the same inputs for every method: a llava_v1 prompt with one image
(576 image tokens; the question is padded so that the merged prompt has ``prompt_tokens`` = 626
positions, LLaVA-1.5's usual length), repeated ``batch`` times, greedy, with EOS forbidden so that
every call generates exactly the asked number of new tokens. For each method, dtype, batch size
and number of new tokens N, after ``warmup`` untimed calls, the median of ``runs`` timed calls of
(the methods of one dtype and batch size take turns, run by run, so that a busy spell of a shared
machine slows them all alike instead of one):

    prefill_ms          = t(1)                      (the same call with max_new_tokens=1)
    decode_ms_per_token = (t(N) - t(1)) / (N - 1)
    tokens_per_s        = batch * N / t(N)          (end to end, prefill included)
    peak_mem_gib        = torch.cuda.max_memory_allocated() over the t(N) calls (None on CPU)

Methods: ``plain`` (upstream LLaVA ``model.generate``, no method keyword), ``lean`` (the package's
decode loop with one branch, ``lean_generate``), ``avc`` (``model.generate(..., avc=AVCConfig())``:
both branches as one forward over 2B rows), ``avc_sequential`` (two forwards per token, the
official code's structure), ``vcd`` and ``m3id`` (default configs).

This module is the benchmark's logic (``run_benchmark(...) -> list[dict]``, the tables, saved rows);
beside it, ``decode_backends.py`` holds the two backends (one class each: checkpoint, loading, inputs,
the methods' calls), ``decode_targets.py`` the AVC ratios and the target verdicts, and
``bench_decode.py`` the command line. It is tooling, not part of the installed package. A row that
cannot run here (nf4 without a GPU, the time budget spent, an error) is kept with ``None`` metrics and
a ``skipped`` or ``error`` reason, never dropped silently.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch

from decode_backends import (BACKENDS, DTYPES, METHODS, PROMPT_TOKENS, BenchBackend, BenchInputs, HFBackend,
                             LlavaBackend, LoadedModel, bench_image)
from decode_targets import CPU_DECODE_LIMIT, TargetVerdict, add_ratios, check_targets, format_targets

__all__ = [
    "BACKENDS", "CPU_DECODE_LIMIT", "DTYPES", "METHODS", "PROMPT_TOKENS", "ROW_KEYS", "BenchBackend", "BenchInputs",
    "HFBackend", "LlavaBackend", "LoadedModel", "TargetVerdict", "add_ratios", "bench_image", "check_targets",
    "cpu_model", "format_table", "format_targets", "machine_info", "read_rows", "run_benchmark", "write_json",
]

#: Keys every row has (extra keys: preset, prompt_tokens, runs, e2e_ms, machine, ratios, ...).
ROW_KEYS = ("method", "dtype", "batch", "new_tokens", "prefill_ms", "decode_ms_per_token",
            "tokens_per_s", "peak_mem_gib", "device")
MS_PER_S = 1e3
BYTES_PER_GIB = 2**30
#: Longest skip / error reason shown in the table's note column.
NOTE_WIDTH = 60
ELLIPSIS = "..."

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------- machine


def _on_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _llava_version() -> str:
    try:
        return version("llava-torch")
    except PackageNotFoundError:  # an `import llava` from a clone has no distribution metadata
        return "unknown"


def machine_info(device: str) -> dict:
    """Where and with what a benchmark ran: machine, library versions, date."""
    import transformers

    if _on_cuda(device):
        machine = f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    else:
        machine = f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return {
        "machine": machine,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "llava": _llava_version(),
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if _on_cuda(device):
        torch.cuda.synchronize(torch.device(device))


def _timed(call: Callable[[int], torch.Tensor], n: int, device: str) -> tuple[float, torch.Tensor]:
    """(seconds, output) of one call, synchronised on CUDA."""
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        output = call(n)
    _sync(device)
    return time.perf_counter() - start, output


def _sequences(output) -> torch.Tensor:
    """The (B, T) ids of a generate output (a tensor, or an output object with ``sequences``)."""
    return output.sequences if hasattr(output, "sequences") else output


def _free(device: str) -> None:
    gc.collect()
    if _on_cuda(device):
        torch.cuda.empty_cache()


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


class _GroupTimer:
    """Times every method of one (dtype, batch) group, INTERLEAVED: run r calls each method's t(1) and
    t(N) before run r + 1 starts, so a slow spell of a shared machine hits all methods alike. A method
    that fails (e.g. CUDA OOM at batch 8) is recorded and left out of the later runs; the others go on."""

    def __init__(self, calls: dict, device: str, batch: int, new_tokens: Sequence[int], log: Log):
        self.calls, self.device, self.batch, self.new_tokens, self.log = calls, device, batch, new_tokens, log
        self.cuda = _on_cuda(device)
        self.failed: dict = {}
        self.prefill = {method: [] for method in calls}
        self.totals = {method: {n: [] for n in new_tokens} for method in calls}
        self.peaks = {method: {n: 0 for n in new_tokens} for method in calls}
        self.lead: dict = {}
        self.generated: dict = {}

    def attempt(self, method: str, action: Callable[[], object]) -> None:
        if method in self.failed:
            return
        try:
            action()
        except Exception as error:  # noqa: BLE001 - e.g. CUDA OOM at batch 8: the others go on
            self.log(f"{method} batch {self.batch}: error ({_reason(error)})")
            self.failed[method] = error
            _free(self.device)

    def warm(self, method: str) -> None:
        _timed(self.calls[method], min(self.new_tokens), self.device)

    def one_run(self, method: str) -> None:
        seconds, output = _timed(self.calls[method], 1, self.device)
        self.prefill[method].append(seconds)
        self.lead[method] = _sequences(output).shape[1] - 1  # columns before the new tokens (a BOS with 4.37)
        for n in self.new_tokens:
            self._time_n(method, n)

    def _time_n(self, method: str, n: int) -> None:
        """One t(N) call: its time, its peak memory (CUDA), and a check of the shape it generated."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(torch.device(self.device))
        seconds, output = _timed(self.calls[method], n, self.device)
        self.totals[method][n].append(seconds)
        if self.cuda:
            peak = torch.cuda.max_memory_allocated(torch.device(self.device))
            self.peaks[method][n] = max(self.peaks[method][n], peak)
        sequences = _sequences(output)  # (B, lead + n)
        self.generated[method, n] = sequences.shape[1] - self.lead[method]
        if self.generated[method, n] != n or sequences.shape[0] != self.batch:
            raise RuntimeError(f"asked for {self.batch} x {n} new tokens, got {sequences.shape[0]} x "
                               f"{self.generated[method, n]}")

    def metrics(self, method: str) -> list[dict]:
        """The medians of one method, one dict per N (ROW_KEYS' metrics, e2e_ms, generated_tokens)."""
        t1 = statistics.median(self.prefill[method])
        metrics = []
        for n in self.new_tokens:
            tn = statistics.median(self.totals[method][n])
            metrics.append(dict(
                prefill_ms=MS_PER_S * t1,
                decode_ms_per_token=MS_PER_S * (tn - t1) / (n - 1),
                tokens_per_s=self.batch * n / tn,
                peak_mem_gib=self.peaks[method][n] / BYTES_PER_GIB if self.cuda else None,
                e2e_ms=MS_PER_S * tn,
                generated_tokens=self.generated[method, n],
            ))
        return metrics


def _measure_group(calls: dict, device: str, batch: int, new_tokens: Sequence[int], runs: int, warmup: int,
                   log: Log) -> dict:
    """Time every method of one (dtype, batch) group, interleaved (`_GroupTimer`).

    Returns:
        {method: [metrics per N] or an Exception (that method failed; the others went on)}.
    """
    timer = _GroupTimer(calls, device, batch, new_tokens, log)
    for method in calls:
        for _ in range(warmup):
            timer.attempt(method, lambda: timer.warm(method))
    for _ in range(runs):
        for method in calls:
            timer.attempt(method, lambda: timer.one_run(method))
    return {method: timer.failed[method] if method in timer.failed else timer.metrics(method) for method in calls}


# ------------------------------------------------------------------------------------------ rows


def _row(method, dtype, batch, new_tokens, device, **extra) -> dict:
    row = dict(method=method, dtype=dtype, batch=batch, new_tokens=new_tokens, prefill_ms=None,
               decode_ms_per_token=None, tokens_per_s=None, peak_mem_gib=None, device=device)
    row.update(extra)
    return row


def _check_args(dtypes, batches, new_tokens, runs, warmup, methods) -> None:
    for name, values, allowed in (("dtype", dtypes, DTYPES), ("method", methods, METHODS)):
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise ValueError(f"unknown {name}(s) {unknown}; choose from {', '.join(allowed)}.")
    if not batches or min(batches) < 1:
        raise ValueError(f"batch sizes must be >= 1; got {list(batches)}.")
    if not new_tokens or min(new_tokens) < 2:
        raise ValueError(f"new token counts must be >= 2 (decode ms/token needs t(N) - t(1)); got {list(new_tokens)}.")
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0; got runs={runs}, warmup={warmup}.")


@dataclass
class _Run:
    """One run_benchmark call: its settings, and the rows measured or skipped so far."""

    backend: BenchBackend
    device: str
    batches: list
    new_tokens: list
    methods: list
    runs: int
    warmup: int
    prompt_tokens: int
    time_budget_s: Optional[float]
    common: dict  # keys every row of this run gets: preset, runs, machine, backend
    log: Log
    on_row: Optional[Callable[[dict], None]]
    start: float = field(default_factory=time.perf_counter)
    rows: list = field(default_factory=list)

    def emit(self, row: dict) -> None:
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row(row)

    def skip(self, dtype: str, batches: list, methods: list, **fields) -> None:
        """Rows with None metrics and the reason in ``fields`` (skipped= or error=)."""
        for batch in batches:
            for method in methods:
                for n in self.new_tokens:
                    self.emit(_row(method, dtype, batch, n, self.device, **{**self.common, **fields}))

    def budget_spent(self) -> bool:
        return self.time_budget_s is not None and time.perf_counter() - self.start > self.time_budget_s

    def measure_dtype(self, checkpoint: Path, dtype: str) -> None:
        """Every batch size of one dtype; a dtype that cannot load here is kept as skipped rows."""
        try:
            loaded = self.backend.load_for_dtype(checkpoint, dtype, self.device)
        except Exception as error:  # noqa: BLE001 - kept as a skipped row with the reason
            self.log(f"{dtype}: skipped ({_reason(error)})")
            self.skip(dtype, self.batches, self.methods, skipped=_reason(error))
            return
        with self.backend.session():
            for batch in self.batches:
                self.measure_batch(loaded, dtype, batch)

    def measure_batch(self, loaded: LoadedModel, dtype: str, batch: int) -> None:
        inputs = self.backend.build_inputs(loaded, batch, self.prompt_tokens)
        extra = dict(prompt_tokens=inputs.prompt_tokens)
        if self.budget_spent():
            self.skip(dtype, [batch], self.methods, **extra, skipped=f"time budget of {self.time_budget_s:.0f} s spent")
            return
        calls = {method: self.backend.method_call(method, loaded, inputs) for method in self.methods}
        measured = _measure_group(calls, self.device, batch, self.new_tokens, self.runs, self.warmup, self.log)
        for method in self.methods:
            if isinstance(measured[method], Exception):
                self.skip(dtype, [batch], [method], **extra, error=_reason(measured[method]))
                continue
            for n, metrics in zip(self.new_tokens, measured[method]):
                self.emit(_row(method, dtype, batch, n, self.device, **self.common, **extra, **metrics))


def run_benchmark(
    *,
    preset: str = "tiny",
    device: str = "cpu",
    dtypes: Iterable[str] = ("fp32",),
    batches: Iterable[int] = (1, 8),
    new_tokens: Iterable[int] = (64, 256),
    runs: int = 5,
    warmup: int = 1,
    methods: Iterable[str] = METHODS,
    checkpoint=None,
    prompt_tokens: int = PROMPT_TOKENS,
    time_budget_s: Optional[float] = None,
    on_row: Optional[Callable[[dict], None]] = None,
    log: Log = print,
    backend: str = "llava",
) -> list[dict]:
    """Measure every (dtype, batch, method, new_tokens) combination; returns one dict per row.

    Args:
        preset: shape of the random checkpoint built (or reused) in ``.cache/llava-bench-<preset>``
            (``.cache/llava-bench-hf-<preset>`` for the hf backend).
        device: "cpu" or "cuda" (or "cuda:N").
        dtypes: any of fp32, fp16, nf4 (nf4 needs CUDA: the rows are kept as skipped elsewhere).
        batches, new_tokens: the grid; every N must be >= 2.
        runs, warmup: timed calls (median) and untimed calls per method, dtype and batch size.
        methods: any of METHODS.
        checkpoint: an existing checkpoint directory instead of the preset's random one.
        prompt_tokens: merged prompt length (text + image tokens) to pad the question to.
        time_budget_s: (dtype, batch) groups not started within this many seconds are kept as
            skipped rows.
        on_row: called with each row as soon as it is measured (progress, incremental JSON).
        backend: a key of BACKENDS: "llava" (the original LLaVA codebase, patched) or "hf" (llava-hf
            through transformers' generate; plain = transformers' own generate).
    Returns:
        Rows with the keys ROW_KEYS (metrics None when skipped) plus ``preset``, ``prompt_tokens``,
        ``runs``, ``machine``, ``e2e_ms``, ``generated_tokens`` and ``skipped`` / ``error`` reasons.
    """
    dtypes, batches, new_tokens, methods = list(dtypes), list(batches), list(new_tokens), list(methods)
    _check_args(dtypes, batches, new_tokens, runs, warmup, methods)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}.")
    bench_backend = BACKENDS[backend]()
    start = time.perf_counter()
    machine = machine_info(device)["machine"]
    path = Path(checkpoint) if checkpoint is not None else bench_backend.ensure_checkpoint(preset, device=device,
                                                                                          log=log)
    common = dict(preset=preset if checkpoint is None else str(path), runs=runs, machine=machine, backend=backend)
    run = _Run(backend=bench_backend, device=device, batches=batches, new_tokens=new_tokens, methods=methods,
               runs=runs, warmup=warmup, prompt_tokens=prompt_tokens, time_budget_s=time_budget_s, common=common,
               log=log, on_row=on_row, start=start)
    for dtype in dtypes:
        run.measure_dtype(path, dtype)
        _free(device)
    add_ratios(run.rows)
    return run.rows


# ------------------------------------------------------------------------------------ saved rows


def read_rows(paths: Iterable) -> list[dict]:
    """The rows of one or more ``--json`` files (a folder: every ``*.json`` in it), in order."""
    rows = []
    for path in map(Path, paths):
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            rows += _read_rows_file(file)
    return rows


def _read_rows_file(file: Path) -> list[dict]:
    try:
        loaded = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{file}: not a benchmark JSON file ({error}).") from error
    if not isinstance(loaded, list) or not all(isinstance(r, dict) and set(ROW_KEYS) <= set(r) for r in loaded):
        raise ValueError(f"{file}: not a list of benchmark rows (keys {', '.join(ROW_KEYS)}).")
    return loaded


def write_json(rows: list[dict], path) -> None:
    """Write the rows as a JSON list (written to a temporary file, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------- output


def _cell(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _note(row: dict) -> str:
    note = row.get("skipped") or row.get("error") or ""
    return note if len(note) <= NOTE_WIDTH else note[:NOTE_WIDTH - len(ELLIPSIS)] + ELLIPSIS


def _markdown(header: list[str], cells: list[list[str]]) -> list[str]:
    """A markdown table: the header row, the rule, one row per entry of `cells`."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(row) + " |"
                                                                            for row in cells]


def _rows_table(rows: list[dict]) -> list[str]:
    header = ["method", "dtype", "batch", "new_tokens", "prefill_ms", "decode_ms_per_token", "tokens_per_s",
              "peak_mem_gib", "device", "note"]
    return _markdown(header, [[str(r["method"]), str(r["dtype"]), str(r["batch"]), str(r["new_tokens"]),
                               _cell(r["prefill_ms"], 1), _cell(r["decode_ms_per_token"], 2),
                               _cell(r["tokens_per_s"], 1), _cell(r["peak_mem_gib"], 2), str(r["device"]), _note(r)]
                              for r in rows])


def _ratios_table(records: list[dict]) -> list[str]:
    header = ["dtype", "batch", "new_tokens", "avc/lean decode", "avc/plain end-to-end", "avc/plain prefill",
              "avc_sequential/lean decode"]
    return _markdown(header, [[str(r["dtype"]), str(r["batch"]), str(r["new_tokens"]),
                               _cell(r["avc_over_lean_decode"], 2), _cell(r["avc_over_plain_e2e"], 2),
                               _cell(r["avc_over_plain_prefill"], 2), _cell(r["avc_sequential_over_lean_decode"], 2)]
                              for r in records])


def format_table(rows: list[dict], info: Optional[dict] = None) -> str:
    """A Markdown table of the rows and one of the AVC ratios, headed by the machine facts."""
    lines = []
    if info:
        lines.append(f"machine: {info['machine']}; torch {info['torch']}, transformers {info['transformers']}, "
                     f"llava-torch {info['llava']}, Python {info['python']}; {info['date']}")
        lines.append("")
    lines += _rows_table(rows)
    records = add_ratios(rows)
    if records:
        lines += [""] + _ratios_table(records)
    return "\n".join(lines)
