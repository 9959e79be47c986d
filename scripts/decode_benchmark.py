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

This module is the benchmark's logic (``run_benchmark(...) -> list[dict]``, the target verdicts,
the tables); ``scripts/bench_decode.py`` beside it is its command line. It is tooling, not part of
the installed package. A row that cannot run here (nf4 without a GPU, the time budget spent, an error)
is kept with ``None`` metrics and a ``skipped`` or ``error`` reason, never dropped silently.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch

METHODS = ("plain", "lean", "avc", "avc_sequential", "vcd", "m3id")
BACKENDS = ("llava", "hf")
DTYPES = ("fp32", "fp16", "nf4")
#: Keys every row has (extra keys: preset, prompt_tokens, runs, e2e_ms, machine, ratios, ...).
ROW_KEYS = ("method", "dtype", "batch", "new_tokens", "prefill_ms", "decode_ms_per_token",
            "tokens_per_s", "peak_mem_gib", "device")
#: Merged prompt length of LLaVA-1.5 in the paper-style setting: 576 image tokens + 50 text tokens.
PROMPT_TOKENS = 626
QUESTION = "Is there a person in the image?"
#: Words appended to QUESTION until the prompt reaches PROMPT_TOKENS (any tokenizer).
_FILLER = ("Please", "answer", "with", "yes", "or", "no", "and", "then", "describe", "the", "image",
           "in", "one", "short", "sentence")
_ONE_TOKEN_FILLERS = ("a", "the", ".", ",")


# --------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info(device: str) -> dict:
    """Where and with what a benchmark ran: machine, library versions, date."""
    import transformers

    if str(device).startswith("cuda"):
        machine = f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    else:
        machine = f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    try:
        from importlib.metadata import version

        llava_version = version("llava-torch")
    except Exception:  # an `import llava` from a clone has no distribution metadata
        llava_version = "unknown"
    return {
        "machine": machine,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "llava": llava_version,
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------ checkpoint


#: The repository's cache folder (git-ignored), whatever the working directory.
CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache"


def default_checkpoint_dir(preset: str) -> Path:
    """``<repository>/.cache/llava-bench-<preset>`` (LLaVA's loader needs 'llava' in the directory name)."""
    return CACHE_DIR / f"llava-bench-{preset}"


def _reusable(path: Path, preset: str) -> bool:
    """A finished checkpoint of this preset whose vision tower path still exists (not moved)."""
    from llava_avc.testing.tiny import BUILD_INFO_FILE

    try:
        info = json.loads((path / BUILD_INFO_FILE).read_text())
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("preset") == preset and Path(config.get("mm_vision_tower", "")).is_dir()


def ensure_checkpoint(preset: str = "tiny", directory=None, *, device: str = "cpu",
                      log: Callable[[str], None] = print) -> Path:
    """Reuse or build (seed 0) the random checkpoint of ``preset`` in ``directory``.

    On CUDA the weights are created on the GPU (a 7B-shaped model takes seconds there instead of
    minutes on a CPU); if that fails the build falls back to the CPU.
    """
    from llava_avc.testing.tiny import make_tiny_llava

    path = Path(directory) if directory is not None else default_checkpoint_dir(preset)
    if _reusable(path, preset):
        return path.resolve()
    log(f"building a random {preset} checkpoint in {path} ...")
    start = time.perf_counter()
    built = None
    if str(device).startswith("cuda"):
        try:
            with torch.device(device):
                built = make_tiny_llava(path, preset=preset, seed=0, force=True)
        except Exception as error:  # noqa: BLE001 - reported, then the CPU build is tried
            log(f"building on {device} failed ({type(error).__name__}: {error}); building on the CPU")
        torch.cuda.empty_cache()
    if built is None:
        built = make_tiny_llava(path, preset=preset, seed=0, force=True)
    log(f"built in {time.perf_counter() - start:.1f} s")
    return built


def load_for_dtype(checkpoint, dtype: str, device: str):
    """``(tokenizer, model, image_processor, context_len)`` in ``dtype`` (fp32, fp16 or nf4).

    Raises:
        ValueError: unknown dtype, or nf4 without CUDA (llava_avc.backends.llava.loading explains).
    """
    from llava_avc.backends.llava.loading import load_model

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}.")
    if dtype == "nf4":
        return load_model(str(checkpoint), load_4bit=True, device=device)
    torch_dtype = torch.float32 if dtype == "fp32" else torch.float16
    return load_model(str(checkpoint), device=device, dtype=torch_dtype)


# ---------------------------------------------------------------------------------------- inputs


@dataclass
class BenchInputs:
    """The same prompt and image, repeated ``batch`` times."""

    input_ids: torch.Tensor  # (B, T) with one IMAGE_TOKEN_INDEX per row
    images: torch.Tensor  # (B, 3, H, W)
    image_sizes: list
    question: str
    prompt_tokens: int  # merged length: text tokens + image tokens
    image_tokens: int


def bench_image():
    """matplotlib's Grace Hopper photo (512x600), or a synthetic image where matplotlib is absent."""
    try:
        from llava_avc.testing.tiny import sample_image

        return sample_image()
    except (ImportError, OSError):  # no matplotlib (lent GPU machines) or no sample data: draw one
        from PIL import Image

        return Image.radial_gradient("L").resize((512, 600)).convert("RGB")


def _prompt_ids(tokenizer, question: str, model_config) -> torch.Tensor:
    from llava_avc.backends.llava.prompts import build_prompt, prompt_ids

    return prompt_ids(tokenizer, build_prompt(question, "llava_v1", model_config))


def fit_question(tokenizer, model_config, num_ids: int, base: str = QUESTION) -> tuple[str, torch.Tensor]:
    """Extend ``base`` with filler words until the llava_v1 prompt has ``num_ids`` ids (placeholder
    included). Returns (question, ids); the ids may be longer than asked if ``base`` already is."""
    question = base
    ids = _prompt_ids(tokenizer, question, model_config)
    words = list(_FILLER) * (1 + num_ids // len(_FILLER))
    for word in words:
        if len(ids) >= num_ids:
            break
        candidate = f"{question} {word}"
        candidate_ids = _prompt_ids(tokenizer, candidate, model_config)
        if len(candidate_ids) <= num_ids:
            question, ids = candidate, candidate_ids
            continue
        for short in _ONE_TOKEN_FILLERS:  # the word overshoots: close the gap token by token
            candidate_ids = _prompt_ids(tokenizer, f"{question} {short}", model_config)
            if len(candidate_ids) <= num_ids:
                question, ids = f"{question} {short}", candidate_ids
                break
        else:
            break
    return question, ids


def _image_token_count(model, input_ids, images, image_sizes) -> int:
    """Number of image features LLaVA's merge produces for this image (576 for LLaVA-1.5)."""
    from llava_avc.backends.llava.adapter import LlavaAdapter

    with torch.no_grad():
        merged = LlavaAdapter(model).merge_image(input_ids, None, images, image_sizes)
    start, end = merged.image_spans[0]
    return end - start


def build_inputs(tokenizer, model, image_processor, batch: int, prompt_tokens: int = PROMPT_TOKENS,
                 image=None) -> BenchInputs:
    """The benchmark prompt (llava_v1, one image) with ``prompt_tokens`` merged positions, x batch."""
    from llava_avc.backends.llava.prompts import prepare_images

    image = image if image is not None else bench_image()
    images = prepare_images([image], image_processor, model, dtype=model.get_vision_tower().dtype)
    probe_ids = _prompt_ids(tokenizer, QUESTION, model.config).unsqueeze(0).to(model.device)
    image_tokens = _image_token_count(model, probe_ids, images, [image.size])
    question, ids = fit_question(tokenizer, model.config, prompt_tokens - image_tokens + 1)
    ids = ids.unsqueeze(0).to(model.device)
    return BenchInputs(
        input_ids=ids.repeat(batch, 1),
        images=images.repeat(batch, 1, 1, 1),
        image_sizes=[image.size] * batch,
        question=question,
        prompt_tokens=ids.shape[1] - 1 + image_tokens,
        image_tokens=image_tokens,
    )


# --------------------------------------------------------------------------------------- methods


def method_call(method: str, model, inputs: BenchInputs, eos_token_id: int) -> Callable[[int], torch.Tensor]:
    """``max_new_tokens -> output ids`` for one method, greedy, EOS suppressed, patched LLaVA."""
    from transformers.generation import LogitsProcessorList, SuppressTokensLogitsProcessor

    from llava_avc.algorithm.config import AVCConfig, M3IDConfig, VCDConfig
    from llava_avc.interfaces.api import contrastive_generate, lean_generate

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}.")

    def kwargs(n: int) -> dict:
        return dict(images=inputs.images, image_sizes=inputs.image_sizes, do_sample=False,
                    max_new_tokens=n, use_cache=True,
                    logits_processor=LogitsProcessorList([SuppressTokensLogitsProcessor([eos_token_id])]))

    ids = inputs.input_ids
    calls = {
        "plain": lambda n: model.generate(ids, **kwargs(n)),
        "lean": lambda n: lean_generate(model, ids, **kwargs(n)),
        "avc": lambda n: model.generate(ids, avc=AVCConfig(), **kwargs(n)),
        "avc_sequential": lambda n: contrastive_generate(model, ids, config=AVCConfig(), sequential=True,
                                                         **kwargs(n)),
        "vcd": lambda n: model.generate(ids, vcd=VCDConfig(), **kwargs(n)),
        "m3id": lambda n: model.generate(ids, m3id=M3IDConfig(), **kwargs(n)),
    }
    return calls[method]


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
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
    return output.sequences if hasattr(output, "sequences") else output


# ------------------------------------------------------------------------------------------ rows


def _row(method, dtype, batch, new_tokens, device, **extra) -> dict:
    row = dict(method=method, dtype=dtype, batch=batch, new_tokens=new_tokens, prefill_ms=None,
               decode_ms_per_token=None, tokens_per_s=None, peak_mem_gib=None, device=device)
    row.update(extra)
    return row


def _measure_group(calls: dict, device: str, batch: int, new_tokens: Sequence[int], runs: int, warmup: int,
                   log: Callable[[str], None]) -> dict:
    """Time every method of one (dtype, batch) group, INTERLEAVED: run r calls each method's t(1) and
    t(N) before run r + 1 starts, so a slow spell of a shared machine hits all methods alike.

    Returns:
        {method: [metrics per N] or an Exception (that method failed; the others went on)}.
    """
    cuda = str(device).startswith("cuda")
    failed: dict = {}
    prefill = {method: [] for method in calls}
    totals = {method: {n: [] for n in new_tokens} for method in calls}
    peaks = {method: {n: 0 for n in new_tokens} for method in calls}
    lead, generated = {}, {}

    def attempt(method, action) -> None:
        if method in failed:
            return
        try:
            action()
        except Exception as error:  # noqa: BLE001 - e.g. CUDA OOM at batch 8: the others go on
            log(f"{method} batch {batch}: error ({type(error).__name__}: {error})")
            failed[method] = error
            _free(device)

    def one_run(method) -> None:
        seconds, output = _timed(calls[method], 1, device)
        prefill[method].append(seconds)
        lead[method] = _sequences(output).shape[1] - 1  # columns before the new tokens (a BOS with 4.37)
        for n in new_tokens:
            if cuda:
                torch.cuda.reset_peak_memory_stats(torch.device(device))
            seconds, output = _timed(calls[method], n, device)
            totals[method][n].append(seconds)
            if cuda:
                peaks[method][n] = max(peaks[method][n], torch.cuda.max_memory_allocated(torch.device(device)))
            sequences = _sequences(output)
            generated[method, n] = sequences.shape[1] - lead[method]
            if generated[method, n] != n or sequences.shape[0] != batch:
                raise RuntimeError(f"asked for {batch} x {n} new tokens, got {sequences.shape[0]} x {generated[method, n]}")

    for method in calls:
        for _ in range(warmup):
            attempt(method, lambda: _timed(calls[method], min(new_tokens), device))
    for _ in range(runs):
        for method in calls:
            attempt(method, lambda: one_run(method))

    results: dict = {}
    for method in calls:
        if method in failed:
            results[method] = failed[method]
            continue
        t1 = statistics.median(prefill[method])
        results[method] = []
        for n in new_tokens:
            tn = statistics.median(totals[method][n])
            results[method].append(dict(
                prefill_ms=1e3 * t1,
                decode_ms_per_token=1e3 * (tn - t1) / (n - 1),
                tokens_per_s=batch * n / tn,
                peak_mem_gib=peaks[method][n] / 2**30 if cuda else None,
                e2e_ms=1e3 * tn,
                generated_tokens=generated[method, n],
            ))
    return results


def _free(device: str) -> None:
    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


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


# ------------------------------------------------------------------- the llava-hf backend (--backend hf)


def ensure_hf_checkpoint(preset: str = "tiny", directory=None, *, log: Callable[[str], None] = print) -> Path:
    """Reuse or build (seed 0) the random llava-hf checkpoint of ``preset`` (``.cache/llava-bench-hf-<preset>``)."""
    from llava_avc.testing.tiny import BUILD_INFO_FILE
    from llava_avc.testing.tiny_hf import make_tiny_llava_hf

    path = Path(directory) if directory is not None else CACHE_DIR / f"llava-bench-hf-{preset}"
    try:
        if json.loads((path / BUILD_INFO_FILE).read_text()).get("preset") == preset:
            return path.resolve()
    except (OSError, ValueError):
        pass
    log(f"building a random llava-hf {preset} checkpoint in {path} ...")
    return make_tiny_llava_hf(path, preset=preset, seed=0, force=True)


def load_hf_for_dtype(checkpoint, dtype: str, device: str):
    """``(processor, model)`` of a llava-hf checkpoint in ``dtype`` (fp32, fp16 or nf4)."""
    from transformers import AutoProcessor

    from llava_avc.backends.hf.pipeline import _model_class, quantization_config

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}.")
    kwargs = {"dtype": torch.float32 if dtype == "fp32" else torch.float16}
    if dtype == "nf4":
        kwargs.update(quantization_config=quantization_config(True, False), device_map=device)
    model = _model_class(str(checkpoint)).from_pretrained(str(checkpoint), **kwargs).eval()
    if dtype != "nf4":
        model.to(device)
    return AutoProcessor.from_pretrained(str(checkpoint)), model


def build_hf_inputs(processor, model, batch: int, prompt_tokens: int = PROMPT_TOKENS, image=None) -> BenchInputs:
    """The benchmark prompt (the chat template, one image) padded to ``prompt_tokens`` ids, x batch."""
    from llava_avc.backends.hf.pipeline import HFPipeline

    pipeline = HFPipeline(processor, model)
    image = image if image is not None else bench_image()

    def ids_of(question: str):
        return pipeline.inputs([question], [image])

    question, inputs = QUESTION, ids_of(QUESTION)
    for word in list(_FILLER) * (1 + prompt_tokens // len(_FILLER)):
        if inputs["input_ids"].shape[1] >= prompt_tokens:
            break
        candidate = ids_of(f"{question} {word}")
        if candidate["input_ids"].shape[1] > prompt_tokens:
            break
        question, inputs = f"{question} {word}", candidate
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    sizes = inputs.get("image_sizes")
    return BenchInputs(
        input_ids=inputs["input_ids"].repeat(batch, 1),
        images=inputs["pixel_values"].repeat(batch, *([1] * (inputs["pixel_values"].dim() - 1))),
        image_sizes=None if sizes is None else sizes.repeat(batch, 1),
        question=question,
        prompt_tokens=inputs["input_ids"].shape[1],
        image_tokens=image_tokens,
    )


def hf_method_call(method: str, model, inputs: BenchInputs, eos_token_id: int) -> Callable[[int], torch.Tensor]:
    """``max_new_tokens -> output ids`` for one method on a llava-hf model, greedy, EOS suppressed."""
    import llava_avc
    from llava_avc.algorithm.config import AVCConfig, M3IDConfig, VCDConfig
    from llava_avc.backends.hf.generation import contrastive_decoding, lean_decoding

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}.")

    def kwargs(n: int) -> dict:
        extra = {} if inputs.image_sizes is None else {"image_sizes": inputs.image_sizes}
        return dict(input_ids=inputs.input_ids, pixel_values=inputs.images, do_sample=False, max_new_tokens=n,
                    suppress_tokens=[eos_token_id], **extra)

    calls = {
        "plain": lambda n: model.generate(**kwargs(n)),
        "lean": lambda n: model.generate(custom_generate=lean_decoding, **kwargs(n)),
        "avc": lambda n: llava_avc.generate(model, avc=AVCConfig(), **kwargs(n)),
        "avc_sequential": lambda n: model.generate(custom_generate=contrastive_decoding, avc=AVCConfig(),
                                                   sequential=True, **kwargs(n)),
        "vcd": lambda n: llava_avc.generate(model, vcd=VCDConfig(), **kwargs(n)),
        "m3id": lambda n: llava_avc.generate(model, m3id=M3IDConfig(), **kwargs(n)),
    }
    return calls[method]


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
    log: Callable[[str], None] = print,
    backend: str = "llava",
) -> list[dict]:
    """Measure every (dtype, batch, method, new_tokens) combination; returns one dict per row.

    Args:
        preset: shape of the random checkpoint built (or reused) in ``.cache/llava-bench-<preset>``.
        device: "cpu" or "cuda" (or "cuda:N").
        dtypes: any of fp32, fp16, nf4 (nf4 needs CUDA: the rows are kept as skipped elsewhere).
        batches, new_tokens: the grid; every N must be >= 2.
        runs, warmup: timed calls (median) and untimed calls per method, dtype and batch size.
        methods: any of METHODS.
        checkpoint: an existing LLaVA checkpoint directory instead of the preset's random one.
        prompt_tokens: merged prompt length (text + image tokens) to pad the question to.
        time_budget_s: (dtype, batch) groups not started within this many seconds are kept as
            skipped rows.
        on_row: called with each row as soon as it is measured (progress, incremental JSON).
        backend: "llava" (the original LLaVA codebase, patched) or "hf" (llava-hf through
            transformers' generate; plain = transformers' own generate).
    Returns:
        Rows with the keys ROW_KEYS (metrics None when skipped) plus ``preset``, ``prompt_tokens``,
        ``runs``, ``machine``, ``e2e_ms``, ``generated_tokens`` and ``skipped`` / ``error`` reasons.
    """
    dtypes, batches, new_tokens, methods = list(dtypes), list(batches), list(new_tokens), list(methods)
    _check_args(dtypes, batches, new_tokens, runs, warmup, methods)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}.")
    start = time.perf_counter()
    machine = machine_info(device)["machine"]
    if checkpoint is not None:
        path = Path(checkpoint)
    elif backend == "hf":
        path = ensure_hf_checkpoint(preset, log=log)
    else:
        path = ensure_checkpoint(preset, device=device, log=log)
    common = dict(preset=preset if checkpoint is None else str(path), runs=runs, machine=machine, backend=backend)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    def skip_all(dtype, batch_list, method_list, **fields) -> None:
        for batch in batch_list:
            for method in method_list:
                for n in new_tokens:
                    emit(_row(method, dtype, batch, n, device, **{**common, **fields}))

    for dtype in dtypes:
        try:
            loaded = load_hf_for_dtype(path, dtype, device) if backend == "hf" else load_for_dtype(path, dtype, device)
        except Exception as error:  # noqa: BLE001 - kept as a skipped row with the reason
            log(f"{dtype}: skipped ({type(error).__name__}: {error})")
            skip_all(dtype, batches, methods, skipped=f"{type(error).__name__}: {error}")
            continue
        with _backend_context(backend):
            for batch in batches:
                inputs, model, eos = _backend_inputs(backend, loaded, batch, prompt_tokens)
                extra = dict(prompt_tokens=inputs.prompt_tokens)
                if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
                    skip_all(dtype, [batch], methods, **extra, skipped=f"time budget of {time_budget_s:.0f} s spent")
                    continue
                call_of = hf_method_call if backend == "hf" else method_call
                calls = {method: call_of(method, model, inputs, eos) for method in methods}
                measured = _measure_group(calls, device, batch, new_tokens, runs, warmup, log)
                for method in methods:
                    if isinstance(measured[method], Exception):
                        error = measured[method]
                        skip_all(dtype, [batch], [method], **extra, error=f"{type(error).__name__}: {error}")
                        continue
                    for n, metrics in zip(new_tokens, measured[method]):
                        emit(_row(method, dtype, batch, n, device, **common, **extra, **metrics))
        del loaded, model
        _free(device)
    add_ratios(rows)
    return rows


def _backend_context(backend: str):
    """llava-avc's patch of the original LLaVA for the llava backend; nothing for hf."""
    if backend == "hf":
        return contextlib.nullcontext()
    from llava_avc.patches.llava_patch import patched

    return patched()


def _backend_inputs(backend: str, loaded, batch: int, prompt_tokens: int):
    """(BenchInputs, model, EOS id) of a loaded checkpoint."""
    if backend == "hf":
        processor, model = loaded
        return build_hf_inputs(processor, model, batch, prompt_tokens), model, processor.tokenizer.eos_token_id
    tokenizer, model, image_processor, _ = loaded
    return build_inputs(tokenizer, model, image_processor, batch, prompt_tokens), model, tokenizer.eos_token_id


# -------------------------------------------------------------------------------------- ratios


def _ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def add_ratios(rows: list[dict]) -> list[dict]:
    """Put, on every avc row, ``avc_over_lean_decode``, ``avc_over_plain_e2e`` (t(N) ratio, < 1 =
    AVC faster end to end) and ``avc_over_plain_prefill``; on avc_sequential rows its decode
    ratio to lean. Returns the ratio records (dtype, batch, new_tokens, ratios) for the table."""
    index = {(r["method"], r["dtype"], r["batch"], r["new_tokens"]): r for r in rows}
    records = []
    for (method, dtype, batch, n), row in index.items():
        if method != "avc":
            continue
        lean = index.get(("lean", dtype, batch, n), {})
        plain = index.get(("plain", dtype, batch, n), {})
        sequential = index.get(("avc_sequential", dtype, batch, n), {})
        row["avc_over_lean_decode"] = _ratio(row["decode_ms_per_token"], lean.get("decode_ms_per_token"))
        row["avc_over_plain_e2e"] = _ratio(row.get("e2e_ms"), plain.get("e2e_ms"))
        row["avc_over_plain_prefill"] = _ratio(row["prefill_ms"], plain.get("prefill_ms"))
        if sequential:
            sequential["avc_sequential_over_lean_decode"] = _ratio(
                sequential["decode_ms_per_token"], lean.get("decode_ms_per_token"))
        records.append(dict(
            dtype=dtype, batch=batch, new_tokens=n,
            avc_over_lean_decode=row["avc_over_lean_decode"],
            avc_over_plain_e2e=row["avc_over_plain_e2e"],
            avc_over_plain_prefill=row["avc_over_plain_prefill"],
            avc_sequential_over_lean_decode=sequential.get("avc_sequential_over_lean_decode"),
        ))
    return records


# ------------------------------------------------------------------------------------- targets

#: The project's speed and memory targets (docs/benchmarks.md), as limits on the ratios above, measured in one run:
GPU_DECODE_LIMIT = 1.10  # AVC decode ms/token <= 1.10 x lean, fp16 and nf4, batch 1
GPU_PREFILL_LIMIT = 2.3  # AVC prefill <= 2.3 x plain prefill
GPU_E2E_LIMIT = 1.0  # AVC end to end (64 new tokens) faster than upstream generate: ratio < 1
E2E_NEW_TOKENS = 64
PEAK_NEW_TOKENS = 256  # nf4, batch 1: AVC peak <= 7.0 GiB and <= plain + 0.6 GiB
PEAK_LIMIT_GIB = 7.0
PEAK_OVER_PLAIN_GIB = 0.6
CPU_DECODE_LIMIT = 1.5  # tiny preset on a CPU: AVC decode ms/token <= 1.5 x lean


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


def check_targets(rows: list[dict]) -> list[TargetVerdict]:
    """Judge the benchmark targets on ``rows`` (one or several runs' rows, e.g. gpu_check's JSON files).

    GPU targets read rows whose device is CUDA; the CPU target every fp32 row of the ``tiny`` preset
    (the issue names no batch size for it, so every batch measured must meet it). A
    target without the rows it needs is "not measured", never guessed. Of rows with the same
    (method, dtype, batch, new_tokens) the last one counts.
    """
    add_ratios(rows)
    gpu = {(r["method"], r["dtype"], r["batch"], r["new_tokens"]): r for r in rows if str(r["device"]).startswith("cuda")}
    verdicts = []
    for dtype in ("fp16", "nf4"):
        avc = gpu.get(("avc", dtype, 1, E2E_NEW_TOKENS))
        verdicts += [
            _ratio_verdict(f"GPU {dtype}, batch 1: AVC decode <= {GPU_DECODE_LIMIT:.2f} x lean",
                           avc, "avc_over_lean_decode", "decode_ms_per_token", lambda r: r <= GPU_DECODE_LIMIT),
            _ratio_verdict(f"GPU {dtype}, batch 1, {E2E_NEW_TOKENS} new tokens: AVC end to end faster than "
                           "upstream generate", avc, "avc_over_plain_e2e", "e2e_ms", lambda r: r < GPU_E2E_LIMIT,
                           unit=" x upstream's time"),
            _ratio_verdict(f"GPU {dtype}, batch 1: AVC prefill <= {GPU_PREFILL_LIMIT} x plain prefill",
                           avc, "avc_over_plain_prefill", "prefill_ms", lambda r: r <= GPU_PREFILL_LIMIT),
        ]
    avc_peak = gpu.get(("avc", "nf4", 1, PEAK_NEW_TOKENS))
    plain_peak = gpu.get(("plain", "nf4", 1, PEAK_NEW_TOKENS))
    peak_ok, peak_detail = None, "-"
    if _measured(avc_peak, "peak_mem_gib") and _measured(plain_peak, "peak_mem_gib"):
        avc_gib, plain_gib = avc_peak["peak_mem_gib"], plain_peak["peak_mem_gib"]
        peak_ok = avc_gib <= PEAK_LIMIT_GIB and avc_gib <= plain_gib + PEAK_OVER_PLAIN_GIB
        peak_detail = f"AVC {avc_gib:.2f} GiB, plain {plain_gib:.2f} GiB"
    verdicts.append(_verdict(
        f"GPU nf4, batch 1, {PEAK_NEW_TOKENS} new tokens: AVC peak <= {PEAK_LIMIT_GIB} GiB and <= plain + "
        f"{PEAK_OVER_PLAIN_GIB} GiB", peak_ok, peak_detail))
    cpu = [r for r in rows if r["method"] == "avc" and r["device"] == "cpu" and r.get("preset") == "tiny"
           and r["dtype"] == "fp32" and r.get("avc_over_lean_decode") is not None]
    ratios = [r["avc_over_lean_decode"] for r in cpu]
    verdicts.append(_verdict(
        f"CPU, tiny, fp32, every batch: AVC decode <= {CPU_DECODE_LIMIT} x lean", None if not ratios
        else max(ratios) <= CPU_DECODE_LIMIT,
        ", ".join(f"{r['avc_over_lean_decode']:.2f} x (batch {r['batch']}, {r['new_tokens']} tokens)" for r in cpu)
        or "-"))
    return verdicts


def format_targets(verdicts: Iterable[TargetVerdict]) -> str:
    lines = ["| target | verdict | measured |", "|---|---|---|"]
    lines += [f"| {v.target} | {v.verdict} | {v.detail} |" for v in verdicts]
    return "\n".join(lines)


def read_rows(paths: Iterable) -> list[dict]:
    """The rows of one or more ``--json`` files (a folder: every ``*.json`` in it), in order."""
    rows = []
    for path in map(Path, paths):
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            try:
                loaded = json.loads(file.read_text())
            except (OSError, ValueError) as error:
                raise ValueError(f"{file}: not a benchmark JSON file ({error}).") from error
            if not isinstance(loaded, list) or not all(isinstance(r, dict) and set(ROW_KEYS) <= set(r) for r in loaded):
                raise ValueError(f"{file}: not a list of benchmark rows (keys {', '.join(ROW_KEYS)}).")
            rows += loaded
    return rows


# -------------------------------------------------------------------------------------- output


def _cell(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[dict], info: Optional[dict] = None) -> str:
    """A Markdown table of the rows and one of the AVC ratios, headed by the machine facts."""
    lines = []
    if info:
        lines.append(f"machine: {info['machine']}; torch {info['torch']}, transformers {info['transformers']}, "
                     f"llava-torch {info['llava']}, Python {info['python']}; {info['date']}")
        lines.append("")
    lines.append("| method | dtype | batch | new_tokens | prefill_ms | decode_ms_per_token | tokens_per_s "
                 "| peak_mem_gib | device | note |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        note = r.get("skipped") or r.get("error") or ""
        note = note if len(note) <= 60 else note[:57] + "..."
        lines.append(
            f"| {r['method']} | {r['dtype']} | {r['batch']} | {r['new_tokens']} | {_cell(r['prefill_ms'], 1)} "
            f"| {_cell(r['decode_ms_per_token'], 2)} | {_cell(r['tokens_per_s'], 1)} "
            f"| {_cell(r['peak_mem_gib'], 2)} | {r['device']} | {note} |"
        )
    records = add_ratios(rows)
    if records:
        lines += ["", "| dtype | batch | new_tokens | avc/lean decode | avc/plain end-to-end | avc/plain prefill "
                  "| avc_sequential/lean decode |", "|---|---|---|---|---|---|---|"]
        for r in records:
            lines.append(
                f"| {r['dtype']} | {r['batch']} | {r['new_tokens']} | {_cell(r['avc_over_lean_decode'], 2)} "
                f"| {_cell(r['avc_over_plain_e2e'], 2)} | {_cell(r['avc_over_plain_prefill'], 2)} "
                f"| {_cell(r['avc_sequential_over_lean_decode'], 2)} |"
            )
    return "\n".join(lines)


def write_json(rows: list[dict], path) -> None:
    """Write the rows as a JSON list (written to a temporary file, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, path)
