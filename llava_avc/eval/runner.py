"""Run a benchmark: questions -> LLaVA (with AVC / VCD / M3ID or plain) -> a resumable answers file.

The model is a backend's pipeline (`llava_avc.backends.llava.pipeline.LlavaPipeline`: the real
LLaVA loader, LLaVA's prompts and image processing, `model.generate` under llava-avc's patch with
``**{config.method: config}``), loaded here or passed in.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from ..errors import UserError
from ..algorithm.seeds import question_seed
from . import answers as ans
from . import provenance
from .distributed import (LaunchContext, clear_done, launch_context, mark_done, rank_device, shard_key,
                          wait_for_shards)
from .benchmarks import get_benchmark, recorded_question_file, registered
from .protocols import generation_kwargs, get_protocol
from .inputs import read_json_file
from .questions import fingerprint


@dataclass(frozen=True)
class EvalOptions:
    """What `llava-avc eval` was asked to do (see `llava_avc.interfaces.eval_commands` for the flags).

    Validated on creation: a bad value raises ValueError naming the flag, the value and the fix.
    """

    benchmark: str
    model_path: str
    out: str
    image_folder: Optional[str] = None
    question_file: Optional[str] = None
    config: Any = None  # AVCConfig / VCDConfig / M3IDConfig, or None for plain decoding
    protocol: str = "paper"
    batch_size: int = 1
    seed: int = 42
    num_chunks: int = 1
    chunk_idx: int = 0
    limit: Optional[int] = None
    device: Optional[str] = None
    max_new_tokens: Optional[int] = None
    conv_mode: Optional[str] = None
    model_base: Optional[str] = None
    load_4bit: bool = False
    load_8bit: bool = False
    progress: Optional[bool] = None  # None: a progress bar when stderr is a terminal

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch-size (={self.batch_size}) must be at least 1.")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit (={self.limit}) must be at least 1; drop --limit to answer every question.")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens (={self.max_new_tokens}) must be at least 1.")
        ans.get_chunk([], self.num_chunks, self.chunk_idx)  # validates the chunk flags
        get_benchmark(self.benchmark)  # unknown names raise with the nearest one
        get_protocol(self.protocol)


@dataclass
class EvalSummary:
    """What a run did."""

    answers_file: Path
    new: int
    skipped: int
    total: int
    config_hash: str
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    question_file: str = ""  # the file the questions came from (a packaged copy or the user's)
    pipeline: Any = field(default=None, repr=False)  # the model this run used (loaded here or passed in), for reuse
    shard_keys: list = field(default_factory=list)  # per chunk of this run: its `distributed.shard_key`


def _canonical_model_path(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path


def first_line_benchmarks(protocol) -> list:
    """The registered benchmarks whose questions `protocol` cuts to their first line (their `first_line_under`)."""
    return [benchmark.name for benchmark in registered() if protocol.name in benchmark.first_line_under]


def run_settings(options: EvalOptions, protocol, question_set: str) -> dict:
    """The hashed configuration: method + config + protocol + model (path and a fingerprint of its
    weights: a checkpoint rebuilt at the same path is another configuration) + seed + generation +
    questions. The batch size and the number of processes are not in it: they do not change answers."""
    config = options.config
    return {
        "benchmark": options.benchmark,
        "method": "none" if config is None else config.method,
        "config": {} if config is None else config.to_dict(),
        "protocol": protocol.name,
        "generation": protocol.settings(options.max_new_tokens, options.conv_mode, first_line_benchmarks(protocol)),
        "model_path": _canonical_model_path(options.model_path),
        "model_base": options.model_base,
        "quantization": "4bit" if options.load_4bit else "8bit" if options.load_8bit else None,
        "weights": provenance.weights_fingerprint(options.model_path),
        "seed": options.seed,
        "questions": question_set,
    }


def _check_images(pending: list, image_root: str) -> None:
    """Fail before any model work when an image file is missing (names the question and path)."""
    missing = [q for q in pending if not (Path(image_root) / q.image).is_file()]
    if missing:
        first = missing[0]
        more = f" ({len(missing)} questions have no image file)" if len(missing) > 1 else ""
        raise UserError(f"question {first.qid!r}: image {str(Path(image_root) / first.image)!r} does "
                        f"not exist{more}; check --image-folder.")


def _open_image(question, image_root: str):
    from .inputs import open_rgb

    path = Path(image_root) / question.image
    return open_rgb(path, f"question {question.qid!r}: image {str(path)!r}")


def _run_record(options: EvalOptions, settings: dict, digest: str, question_file: str, pipeline) -> dict:
    """run.json: what was asked (`settings`, hashed) and what the model's backend made of it (`preprocessing`:
    the prompt template and the image processing actually used), with versions and the command."""
    generation = settings["generation"]
    device = str(pipeline.device) if pipeline is not None else (options.device or "unknown")
    return {
        "benchmark": options.benchmark, "method": settings["method"], "config": settings["config"],
        "protocol": settings["protocol"], "seed": options.seed, "model_path": options.model_path,
        "model_base": options.model_base, "question_file": str(Path(question_file).resolve()),
        "image_folder": options.image_folder, "limit": options.limit, "num_chunks": options.num_chunks,
        "batch_size": options.batch_size, "device": device,
        "preprocessing": None if pipeline is None else pipeline.preprocessing(generation["conv_mode"],
                                                                                 generation["center_crop"]),
        "versions": provenance.versions(),
        "git_sha": provenance.git_sha(),
        "config_hash": digest, "settings": settings,
        "command": " ".join(sys.argv),
    }


def generate_answers(pipeline, texts: list, pil_images: list, settings: dict, config, row_seeds=None) -> list:
    """Answer a batch of questions (one image each) with one left-padded `generate` call; `row_seeds`
    (one per question) make each answer independent of the batch it is in.

    Raises:
        ValueError: CUDA out of memory (with the advice to halve the batch size).
    """
    import torch

    generation = settings["generation"]
    inputs = pipeline.inputs(texts, pil_images, generation["conv_mode"], generation["center_crop"])
    batch = len(texts)
    try:
        output = pipeline.generate(inputs, config, row_seeds=row_seeds, **generation_kwargs(generation))
    except torch.cuda.OutOfMemoryError as error:
        torch.cuda.empty_cache()
        hint = f"try --batch-size {batch // 2}" if batch > 1 else "try a 4-bit model (--load-4bit) or a larger GPU"
        raise UserError(f"out of GPU memory at batch size {batch}; {hint}.") from error
    return pipeline.decode(output, inputs)


def _record(question, prompt_text: str, answer: str, model_id: str, settings: dict, digest: str) -> dict:
    import shortuuid

    metadata = {"config_hash": digest, "benchmark": settings["benchmark"], "method": settings["method"],
                "protocol": settings["protocol"], "image": question.image}
    for key in ("label", "category"):
        if getattr(question, key) is not None:
            metadata[key] = getattr(question, key)
    return {"question_id": question.qid, "prompt": prompt_text, "text": answer, "answer_id": shortuuid.uuid(),
            "model_id": model_id, "metadata": metadata}


def _progress(total: int, options: EvalOptions, label: str):
    from tqdm import tqdm

    enabled = sys.stderr.isatty() if options.progress is None else options.progress
    return tqdm(total=total, unit="ans", desc=label, disable=not enabled, file=sys.stderr)


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _answer_all(pending, pipeline, options, settings, digest, image_root, writer) -> int:
    protocol = get_protocol(settings["protocol"])
    benchmark = get_benchmark(options.benchmark)
    model_id = pipeline.model_id(options.model_path)
    written = 0
    with _progress(len(pending), options, f"{options.benchmark} {settings['method']}") as bar:
        for batch in _batches(pending, options.batch_size):
            images = [_open_image(question, image_root) for question in batch]
            texts = [benchmark.question_text(q, protocol) for q in batch]
            seeds = [question_seed(options.seed, question.qid) for question in batch]
            outputs = generate_answers(pipeline, texts, images, settings, options.config, seeds)
            for question, text, answer in zip(batch, texts, outputs):
                with _naming(writer.path):
                    writer.write(_record(question, text, answer, model_id, settings, digest))
                written += 1
            bar.update(len(batch))
    return written


@contextmanager
def _naming(path):
    """An OSError while writing `path` (a full disk) names the file."""
    try:
        yield
    except OSError as error:
        if error.filename is not None or error.strerror is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from None


@contextmanager
def _answer_writer(path: Path):
    """`AnswerWriter(path)`; when this run created the file and fails (or is interrupted) before its
    first answer, the empty file is removed again, while the lock is still held."""
    created = not path.exists()
    with ans.AnswerWriter(path) as writer:
        try:
            yield writer
        except BaseException:
            if created and path.is_file() and path.stat().st_size == 0:
                path.unlink()
            raise


def _checked_questions(benchmark, question_file: str, image_root: str) -> list:
    """The benchmark's questions, each field's type checked, and the image folder present."""
    from .inputs import check_questions

    if Path(question_file).is_dir() and not benchmark.images_in_question_folder:
        raise UserError(f"--question-file (={question_file!r}) is a directory; pass the question file itself "
                        f"({benchmark.question_hint}).")
    if not Path(image_root).is_dir():
        raise UserError(f"--image-folder (={image_root!r}) is not a folder; pass the folder holding the "
                        f"{benchmark.title} images.")
    try:
        questions = benchmark.load(question_file)
    except TypeError as error:  # a reader met a field of the wrong type (e.g. an AMBER id that is a list)
        raise UserError(f"{question_file}: a question has a field of the wrong type ({error}); fix that record "
                        "(nothing was answered).") from None
    check_questions(questions, question_file)
    benchmark.check_shape(questions, question_file)
    return questions


def _check_model(options: EvalOptions, conv_mode: Optional[str]) -> str:
    """Everything about the model that can be checked before it loads (the conversation template its
    backend must render included); returns its backend's name."""
    from ..backends import check_before_loading

    return check_before_loading(options.model_path, options.model_base, options.device, options.load_4bit,
                                options.load_8bit, conv_mode)


def _load(options: EvalOptions, backend: str):
    """The checked model's pipeline (`_check_model` ran: not again here); says on stderr that it loaded."""
    from ..backends import pipeline_class

    start = time.time()
    pipeline = pipeline_class(backend).load(options.model_path, options.model_base, device=options.device,
                                            load_4bit=options.load_4bit, load_8bit=options.load_8bit)
    print(f"loaded {options.model_path} ({backend} backend, {pipeline.device}) in {time.time() - start:.1f} s",
          file=sys.stderr, flush=True)
    return pipeline


def _settle_weights(options: EvalOptions, settings: dict, out: Path) -> tuple:
    """(settings, digest) with the fingerprint of the weights as they are on disk NOW, after the load: a hub
    id that was not in the cache before the load (fingerprint None) or that the load updated to a newer
    snapshot gets the snapshot it loaded. A change against an earlier run of this folder is refused."""
    now = provenance.weights_fingerprint(options.model_path)
    if now == settings["weights"]:
        return settings, ans.config_hash(settings)
    settings = {**settings, "weights": now}
    digest = ans.config_hash(settings)
    ans.check_run_file(out, digest, settings)
    return settings, digest


def run_eval(options: EvalOptions, pipeline=None) -> EvalSummary:
    """Answer the benchmark's questions (this chunk), resuming an earlier run of the same configuration.

    Args:
        options: the run's settings.
        pipeline: an already loaded backend pipeline (e.g. `LlavaPipeline`); loaded from
            ``options.model_path`` when None (only if some question is still unanswered).
    Returns:
        An `EvalSummary` (answers file, new / skipped / total answers, configuration hash).
    Raises:
        UserError: bad options, question file, image, configuration mismatch.
    """
    start = time.time()
    benchmark = get_benchmark(options.benchmark)
    protocol = get_protocol(options.protocol)
    question_file = benchmark.question_source(options.question_file, options.image_folder)
    image_root = benchmark.image_root(question_file, options.image_folder)
    questions = _checked_questions(benchmark, question_file, image_root)
    settings = run_settings(options, protocol, fingerprint(questions))
    digest = ans.config_hash(settings)
    questions = questions[:options.limit] if options.limit is not None else questions
    chunk = ans.get_chunk(questions, options.num_chunks, options.chunk_idx)
    conv_mode = settings["generation"]["conv_mode"]
    if pipeline is not None:
        pipeline.check_conv_mode(conv_mode)
    backend = _check_model(options, conv_mode) if pipeline is None else None  # before any file is written
    out = Path(options.out)
    _check_shard_count(out, options.num_chunks)
    if pipeline is None and settings["weights"] is None:  # a hub id not in the cache yet: known once downloaded
        pipeline = _load(options, backend)
        settings, digest = _settle_weights(options, settings, out)
    out.mkdir(parents=True, exist_ok=True)
    ans.check_run_file(out, digest, settings)
    path = ans.answers_path(out, options.num_chunks, options.chunk_idx)
    with _answer_writer(path) as writer:  # locked: a second run on the same file is refused
        done = ans.done_answers(path, digest, settings)
        pending = [question for question in chunk if question.qid not in done]
        _check_images(pending, image_root)
        if pipeline is None and pending:
            pipeline = _load(options, backend)
            loaded_digest = digest
            settings, digest = _settle_weights(options, settings, out)  # the load may fetch a newer snapshot
            if digest != loaded_digest:  # other weights: the answers so far must be of this configuration
                done = ans.done_answers(path, digest, settings)
        if pending or not (out / ans.RUN_FILE).is_file():  # the record describes the file: a no-op keeps it
            with _naming(out / ans.RUN_FILE):
                ans.write_json_atomic(out / ans.RUN_FILE, _run_record(options, settings, digest, question_file,
                                                                      pipeline))
        written = _answer_all(pending, pipeline, options, settings, digest, image_root, writer) if pending else 0
    keys = [shard_key(digest, [q.qid for q in ans.get_chunk(questions, options.num_chunks, index)])
            for index in range(options.num_chunks)]
    return EvalSummary(path, written, len(chunk) - len(pending), len(chunk), digest, time.time() - start,
                       question_file=str(question_file), pipeline=pipeline, shard_keys=keys)


def _check_shard_count(out: Path, num_chunks: int) -> None:
    """Refuse to answer into a folder whose shards were split differently: their answers would be asked
    again and the merge would then refuse two sets of shards. A single process may rerun a merged run."""
    if not out.is_dir():
        return
    if not ans.has_chunk_files(out):
        return
    found = ans.chunk_files(out)["num_chunks"]
    if found == num_chunks or (num_chunks == 1 and (out / ans.ANSWERS_FILE).is_file()):
        return
    raise UserError(f"--out {str(out)!r} holds the shards of a run split {found} ways (answers.chunk<I>of{found}.jsonl) "
                    f"and this run is split {num_chunks} way(s); resume with {found} processes (or --num-chunks "
                    f"{found}), or use another --out.")


@dataclass
class ShardedSummary:
    """What this process did in a (possibly multi-process) run, and, on rank 0, the merged file."""

    shard: EvalSummary
    context: LaunchContext
    merged: Optional[Path] = None  # rank 0 of a launcher run: answers.jsonl of all shards


def run_sharded(options: EvalOptions, context: Optional[LaunchContext] = None, pipeline=None,
                shard_timeout_s: float = 7 * 24 * 3600.0, log=lambda message: None) -> ShardedSummary:
    """`run_eval` for one process of a launcher (torchrun, accelerate launch, srun) or a single one.

    Under a launcher, rank r of W answers chunk r of W into its own resumable file on its own device
    (`cuda:LOCAL_RANK` or the CPU), marks it done, and rank 0 waits for every shard (up to
    `shard_timeout_s`), then merges them into answers.jsonl in question order.

    Raises:
        ValueError: --num-chunks / --chunk-idx given under a launcher (the launcher decides them).
        TimeoutError: rank 0 waited `shard_timeout_s` for a shard that did not finish.
    """
    context = context or launch_context()
    if context.is_distributed:
        if options.num_chunks != 1 or options.chunk_idx != 0:
            raise UserError(f"--num-chunks/--chunk-idx (={options.num_chunks}/{options.chunk_idx}) under "
                            f"{context.launcher} (world size {context.world_size}): the launcher shards the "
                            "questions itself; drop those flags.")
        options = replace(options, num_chunks=context.world_size, chunk_idx=context.rank,
                          device=rank_device(context, options.device), progress=False if context.rank else options.progress)
        clear_done(ans.answers_path(Path(options.out), context.world_size, context.rank))  # not complete until marked
    summary = run_eval(options, pipeline)
    result = ShardedSummary(summary, context)
    if not context.is_distributed:
        return result
    mark_done(summary.answers_file, summary.total, summary.shard_keys[context.rank])
    if context.rank == 0:
        shards = [ans.answers_path(Path(options.out), context.world_size, rank) for rank in range(context.world_size)]
        wait_for_shards(shards, summary.shard_keys, shard_timeout_s, log=log)
        result.merged = merge_chunks(options.out, force=True)
    return result


def seed_runs(options: EvalOptions, seeds: Optional[list]) -> list:
    """One EvalOptions per seed: `--seeds 42,43,44` answers each seed into `<out>/seed<S>/` (its own
    resumable run folder, which `llava-avc score` reads as one run with mean +- std); a single seed
    (`--seed`) keeps `<out>` itself."""
    if not seeds:
        return [options]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds (={','.join(map(str, seeds))}) repeats a seed; give each seed once.")
    return [replace(options, seed=seed, out=str(Path(options.out) / f"seed{seed}")) for seed in seeds]


def merge_chunks(out, force: bool = False) -> Path:
    """Concatenate `<out>/answers.chunk{I}of{K}.jsonl` into `<out>/answers.jsonl` in question order.

    Raises:
        UserError: a chunk file is missing or incomplete, chunks of different
            configurations, no run.json, or answers.jsonl already exists (without `force`).
    """
    import json

    out = Path(out)
    target = out / ans.ANSWERS_FILE
    if target.exists() and not force:
        raise UserError(f"{target} already exists; delete it or pass --force to overwrite it.")
    found = ans.chunk_files(out)
    count, files = found["num_chunks"], found["files"]
    missing = [index for index in range(count) if index not in files]
    if missing:
        raise UserError(f"chunk(s) {missing} of {count} missing in {out} "
                        f"(answers.chunk<I>of{count}.jsonl); run them with --chunk-idx first.")
    run = (read_json_file(out / ans.RUN_FILE, "restore it from the run (or rerun the chunks into a clean --out)")
           if (out / ans.RUN_FILE).is_file() else None)
    if run is None:
        raise UserError(f"{out / ans.RUN_FILE} is missing; it names the question file the chunks split.")
    records = _merged_records(run, files, count, out)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text("".join(json.dumps(record) + "\n" for record in records))
    os.replace(temporary, target)
    return target


def _merged_records(run: dict, files: dict, count: int, out: Path) -> list:
    benchmark = get_benchmark(run["benchmark"])
    source = recorded_question_file(benchmark, run["question_file"])
    if source is None:
        raise UserError(f"{run['question_file']} (the question file {out / ans.RUN_FILE} names) is gone; "
                        "restore it to merge the chunks.")
    questions = benchmark.load(str(source))
    questions = questions[:run["limit"]] if run.get("limit") is not None else questions
    records = []
    for index in range(count):
        by_id = {r["question_id"]: r for r in ans.read_answers(files[index])}
        hashes = {ans.answer_hash(r) for r in by_id.values()}
        if hashes - {run["config_hash"]}:
            raise UserError(f"{files[index]} holds answers of another configuration ({sorted(map(str, hashes))} "
                            f"!= {run['config_hash']}); rerun that chunk into a clean --out.")
        wanted = [q.qid for q in ans.get_chunk(questions, count, index)]
        absent = [qid for qid in wanted if qid not in by_id]
        if absent:
            raise UserError(f"chunk {index} of {count} is incomplete: {len(absent)} of {len(wanted)} answers "
                            f"missing (first: question {absent[0]!r}); rerun it with --chunk-idx {index}.")
        records.extend(by_id[qid] for qid in wanted)
    return records
