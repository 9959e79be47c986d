"""`llava-avc run MODULE [plugin flags] -- [module args]`: run an UNMODIFIED LLaVA script with AVC.

    llava-avc run llava.eval.model_vqa_loader --method avc --device cpu -- \\
        --model-path P --question-file Q --image-folder D --answers-file A --temperature 0

The module runs with ``runpy.run_module(MODULE, run_name="__main__", alter_sys=True)`` and
``sys.argv = [MODULE] + module_args`` (runpy puts the script's file name in ``argv[0]`` while it
runs, exactly as ``python -m MODULE`` does), inside ``llava_avc.patched()`` and
``default_method(config)``: every ``model.generate(..., images=...)`` call the script makes that
names no method itself decodes with the chosen method (``--method avc`` by default; ``none`` =
upstream decoding, still counted).

Plugin flags (before or after MODULE, always before ``--``):
    --method / the method's hyperparameters   the shared flags of ``llava_avc.interfaces.flags``
    --device cuda|cpu     ``cpu`` runs scripts that hard-code ``.cuda()`` / ``device="cuda"`` /
                          ``.half()`` on the CPU in float32 (``llava_avc.patches.script_overrides``)
    --load-4bit | --load-8bit   passed to scripts that have the flag (``llava.serve.cli``), and for
                          every script applied to LLaVA's ``load_pretrained_model``
    --max-new-tokens-cap N   clamp every generate call's explicit max_new_tokens to N (scripts
                          such as model_vqa hard-code 1024)
    --seed S              ``random``, ``numpy`` and ``torch`` seeded with S before the script runs
    --run-json PATH       where to write the run record (default: see below)
    --record-every S      rewrite the run record every S seconds while the script runs (default 10)

Run record: when the module arguments contain ``--answers-file A``, the launcher writes
``<A's stem>.run.json`` beside A (``answers/pope.jsonl`` -> ``answers/pope.run.json``; named after
the answers file so that several runs, e.g. the chunks of one benchmark, can share a folder). It
holds the method and its config, the seed, the module and its arguments, the versions, the
llava-avc git SHA, the device, the loads, and ``generate_calls``: how many generate calls ran each
method during the run (``{"avc": N}`` proves AVC was active). It is written also when the module
fails (``"status": "failed"`` with the error); the answers file itself is never touched. While the
script runs (a server such as ``llava.serve.model_worker`` runs until stopped) the record is rewritten
every ``--record-every`` seconds with ``"status": "running"`` and the calls so far, so a running worker
can be checked for "avc" calls; ``plain_calls_with_images`` counts calls with images that ran plain
decoding, and any such call under a method is also a warning on stderr.

The method applies to every generate call in the PROCESS, whatever thread makes it (LLaVA's web-demo
worker generates in a new ``threading.Thread`` per request): ``default_method`` sets a process-wide
default, see ``llava_avc.patches.llava_patch``.

Exit status: the module's (0 when it returns); stopped by SIGTERM (record status "stopped"), the
process ends by SIGTERM once the record is written; 130 on Ctrl-C; 1 when it raises (traceback printed), 2 for a
usage error (one line: conflicting flags, 4-bit on the CPU, an unknown module ...).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import math
import signal
import os
import random
import sys
import threading
import time
import traceback
from collections import Counter
from contextlib import ExitStack, contextmanager
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence

from ..errors import UserError
from ..decode.methods import method_name
from ..eval import provenance
from .flags import add_method_arguments

#: LLaVA scripts tested with the launcher (tests/test_launcher.py), and the launcher flags that
#: each of them also takes itself (passed on in its argv unless already given there).
KNOWN_MODULES = {
    "llava.eval.model_vqa_loader": (),
    "llava.eval.model_vqa": (),
    "llava.eval.model_vqa_science": (),
    "llava.eval.run_llava": (),
    "llava.serve.cli": ("--device", "--load-4bit", "--load-8bit"),
    "llava.serve.model_worker": ("--device", "--load-4bit", "--load-8bit"),
}

PROG = "llava-avc run"
USAGE = "llava-avc run MODULE [plugin flags] -- [module args]"
RUN_RECORD_SUFFIX = ".run.json"


# --------------------------------------------------------------------------------------------
# Parsing


def _add_plugin_arguments(parser: argparse.ArgumentParser) -> None:
    add_method_arguments(parser, default_method="avc")
    launcher = parser.add_argument_group("launcher")
    launcher.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                          help="cuda (default) or cpu: cpu maps the script's .cuda()/device='cuda'/.half() "
                          "to the CPU in float32")
    launcher.add_argument("--load-4bit", action="store_true", help="load the model in 4-bit (CUDA)")
    launcher.add_argument("--load-8bit", action="store_true", help="load the model in 8-bit (CUDA)")
    launcher.add_argument("--max-new-tokens-cap", type=int, default=None, metavar="N",
                          help="clamp every generate call's explicit max_new_tokens to N (quick runs of scripts "
                          "that hard-code 1024: model_vqa, model_vqa_science)")
    launcher.add_argument("--seed", type=int, default=None,
                          help="seed random, numpy and torch before the script runs (default: not seeded)")
    launcher.add_argument("--record-every", type=float, default=10.0, metavar="SECONDS",
                          help="while the script runs, rewrite the run record with the generate calls so far "
                          "every SECONDS (long-running servers such as llava.serve.model_worker; default 10)")
    launcher.add_argument("--run-json", default=None, metavar="PATH",
                          help="write the run record here (default: <answers-file stem>.run.json beside "
                          "the script's --answers-file; none when it has no answers file)")


_EPILOG = f"""\
examples:
  llava-avc run llava.eval.model_vqa_loader --method avc -- --model-path liuhaotian/llava-v1.5-7b \\
      --question-file q.jsonl --image-folder images --answers-file answers/avc.jsonl --temperature 0
  llava-avc run llava.eval.run_llava --device cpu -- --model-path P --image-file photo.jpg --query "What is it?"

tested modules: {", ".join(KNOWN_MODULES)} (others run with a warning).
With --answers-file A among the module args, the run record is written to <A's stem>.run.json beside A.
"""


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `run` subcommand to an argparse subparsers object (handler: `args.handler(args, argv)`)."""
    parser = subparsers.add_parser(
        "run", usage=USAGE, help="run an unmodified LLaVA script (llava.eval.*, llava.serve.cli) with AVC",
        description="Run an unmodified LLaVA script with AVC (or VCD / M3ID / none) applied to every "
        "generate call that has images.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("rest", nargs=argparse.REMAINDER, metavar="MODULE [plugin flags] -- [module args]",
                        help="the script (e.g. llava.eval.model_vqa_loader) and, after --, its own arguments")
    _add_plugin_arguments(parser)
    parser.set_defaults(handler=run_command)
    return parser


def _split_rest(args: argparse.Namespace) -> None:
    """Fill args.module / args.module_args from args.rest and parse plugin flags given after MODULE."""
    rest = list(args.rest)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if not rest or rest[0].startswith("-"):
        raise UserError(f"MODULE is missing (usage: {USAGE}).")
    module, tail = rest[0], rest[1:]
    if "--" in tail:
        cut = tail.index("--")
        plugin_flags, module_args = tail[:cut], tail[cut + 1:]
    else:
        plugin_flags, module_args = tail, []
    if plugin_flags:
        late = argparse.ArgumentParser(prog=PROG, usage=USAGE, add_help=True)
        _add_plugin_arguments(late)
        _, unknown = late.parse_known_args(plugin_flags, namespace=args)
        if unknown:
            raise UserError(
                f"unrecognized arguments: {' '.join(unknown)} (the module's own arguments go after `--`: {USAGE})."
            )
    args.module, args.module_args = module, module_args


def _option_value(argv: Sequence[str], flag: str) -> Optional[str]:
    """The value of `flag` in an argv (`--flag V` or `--flag=V`; the last one wins), else None."""
    value = None
    for index, item in enumerate(argv):
        if item == flag and index + 1 < len(argv):
            value = argv[index + 1]
        elif item.startswith(flag + "="):
            value = item[len(flag) + 1:]
    return value


def run_record_path(module_args: Sequence[str], explicit: Optional[str] = None) -> Optional[Path]:
    """Where the run record goes: --run-json, else `<stem>.run.json` beside --answers-file, else None."""
    if explicit:
        return Path(explicit).expanduser()
    answers = _option_value(module_args, "--answers-file")
    if not answers:
        return None
    answers_path = Path(answers).expanduser()
    return answers_path.with_name(answers_path.stem + RUN_RECORD_SUFFIX)


@dataclass
class ScriptPlan:
    """A validated `llava-avc run` command line: what to run, with which method and overrides."""

    module: str
    module_args: List[str]
    config: Optional[object]  # AVCConfig / VCDConfig / M3IDConfig; None = upstream decoding
    device: str  # "cuda" or "cpu"
    load_4bit: bool
    load_8bit: bool
    seed: Optional[int]
    max_new_tokens_cap: Optional[int]
    record_every: float  # seconds between rewrites of the run record while the script runs
    quantized: bool  # the launcher's or the module's own --load-4bit/--load-8bit
    record_path: Optional[Path]  # where the run record goes; None = nowhere
    answers_file: Optional[Path]
    warnings: List[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return method_name(self.config)


#: The --model-path every tested LLaVA script uses when none is given (their argparse default).
SCRIPT_DEFAULT_MODEL = "facebook/opt-350m"


def _check_model_path(model_path: Optional[str], module: str) -> None:
    """A --model-path that cannot load is a usage error, before anything runs: a local directory that
    is not a LLaVA checkpoint or has damaged files, or a hub id (the script's own default included)
    that is not cached while the hub is out of reach."""
    from ..backends.checkpoints import preflight
    from ..backends.llava.loading import check_local_checkpoint

    what = "--model-path"
    if model_path is None:
        if module not in KNOWN_MODULES:
            return
        model_path, what = SCRIPT_DEFAULT_MODEL, f"--model-path (not given after `--`, so {module}'s default)"
    preflight(model_path, what=what)
    check_local_checkpoint(model_path)


def plan_run(args: argparse.Namespace) -> ScriptPlan:
    """Validate the command line; raise a UserError (one line) before anything runs."""
    from ..patches.script_overrides import check_quantization
    from .flags import config_from_args

    _split_rest(args)
    if importlib.util.find_spec("llava") is None:
        raise UserError("llava-avc run runs the original LLaVA's scripts, and this environment has no original LLaVA "
                        "(llava-torch): install it (pip install '.[llava]' and pip install --no-deps "
                        "llava-torch==1.2.2.post1); llava-hf checkpoints run with llava-avc ask / eval.")
    if not (math.isfinite(args.record_every) and args.record_every > 0):
        raise UserError(f"--record-every (={args.record_every}) must be > 0 seconds; e.g. --record-every 10.")
    if args.max_new_tokens_cap is not None and args.max_new_tokens_cap < 1:
        raise UserError(f"--max-new-tokens-cap must be >= 1, got {args.max_new_tokens_cap}.")
    config = config_from_args(args)  # ValueError on conflicting method flags
    import torch

    check_quantization(args.load_4bit, args.load_8bit, args.device)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch finds no CUDA GPU; pass --device cpu to run on the CPU (fp32).")

    warnings = []
    try:
        spec = importlib.util.find_spec(args.module)
    except (ImportError, ValueError) as error:
        raise UserError(f"cannot find module {args.module!r} ({type(error).__name__}: {error}).") from None
    if spec is None:
        raise UserError(
            f"no module named {args.module!r}; give a LLaVA script such as {', '.join(KNOWN_MODULES)}."
        )
    if args.module not in KNOWN_MODULES:
        warnings.append(f"{args.module} is not one of the LLaVA scripts llava-avc is tested with "
                        f"({', '.join(KNOWN_MODULES)}); running it anyway, untested.")

    module_args = list(args.module_args)
    own_flags = KNOWN_MODULES.get(args.module, ())
    if "--device" in own_flags:
        given = _option_value(module_args, "--device")
        if given is None:
            module_args += ["--device", args.device]
        elif given.split(":")[0] != args.device:
            raise UserError(f"the launcher's --device {args.device} contradicts the module's --device {given}; "
                            "give it once, before `--`.")
    for flag, wanted in (("--load-4bit", args.load_4bit), ("--load-8bit", args.load_8bit)):
        if wanted and flag in own_flags and flag not in module_args:
            module_args.append(flag)
    if args.device == "cpu":
        for flag in ("--load-4bit", "--load-8bit"):
            if flag in module_args and flag in own_flags:
                check_quantization(flag == "--load-4bit", flag == "--load-8bit", "cpu")

    _check_model_path(_option_value(module_args, "--model-path"), args.module)
    record_path = run_record_path(module_args, args.run_json)
    answers = _option_value(module_args, "--answers-file")
    answers_path = Path(answers).expanduser().resolve() if answers else None
    if record_path is not None and answers_path is not None and record_path.resolve() == answers_path:
        raise UserError(f"--run-json {args.run_json} is the answers file; give another path.")

    return ScriptPlan(module=args.module, module_args=module_args, config=config, device=args.device,
                      load_4bit=args.load_4bit, load_8bit=args.load_8bit, seed=args.seed,
                      max_new_tokens_cap=args.max_new_tokens_cap, record_every=args.record_every,
                      quantized=args.load_4bit or args.load_8bit
                      or bool({"--load-4bit", "--load-8bit"} & set(module_args)),
                      record_path=record_path, answers_file=answers_path, warnings=warnings)


# --------------------------------------------------------------------------------------------
# Running


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    torch.manual_seed(seed)


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(temporary, path)


def _initial_record(plan: ScriptPlan, launcher_argv: Optional[Sequence[str]]) -> dict:
    """The run record before the module runs (status "running")."""
    return {
        "status": "running",
        "error": None,
        "exit_code": None,
        "method": plan.method,
        "config": plan.config.to_dict() if plan.config is not None else None,
        "seed": plan.seed,
        "module": plan.module,
        "module_args": list(plan.module_args),
        "answers_file": str(plan.answers_file) if plan.answers_file is not None else None,
        "launcher_argv": list(launcher_argv) if launcher_argv is not None else None,
        "device": plan.device,
        "load_4bit": plan.load_4bit,
        "load_8bit": plan.load_8bit,
        "max_new_tokens_cap": plan.max_new_tokens_cap,
        "cwd": os.getcwd(),
        "versions": provenance.versions(),
        "git_sha": provenance.git_sha(),
        "loads": [],
        "generate_calls": {},
        "plain_calls_with_images": 0,
        "started_at": _now(),
    }


def _run_module_wrapped(plan: ScriptPlan, record: dict) -> None:
    """Run the module under the patch, the default method and the launcher's reversible wrappers."""
    import runpy

    from ..patches import script_overrides as overrides
    from ..patches.llava_patch import default_method, patched

    saved_argv = sys.argv
    with ExitStack() as stack:
        stack.enter_context(overrides.preserved_attributes(overrides.upstream_side_effect_targets()))
        stack.enter_context(patched())
        stack.enter_context(default_method(plan.config))
        stack.enter_context(overrides.loader_override(plan.device, plan.load_4bit, plan.load_8bit,
                                                      records=record["loads"]))
        if plan.max_new_tokens_cap is not None:
            stack.enter_context(overrides.max_new_tokens_cap(plan.max_new_tokens_cap))
        if plan.device == "cpu":
            stack.enter_context(overrides.cpu_device_mapping(map_half=not plan.quantized))
        stack.enter_context(_sigterm_ends_the_run())
        sys.argv = [plan.module] + list(plan.module_args)
        try:
            runpy.run_module(plan.module, run_name="__main__", alter_sys=True)
        finally:
            sys.argv = saved_argv


class _Terminated(Exception):
    """SIGTERM reached the launcher (how a server such as model_worker is normally stopped)."""


@contextmanager
def _sigterm_ends_the_run() -> Iterator[None]:
    """While the module runs, SIGTERM raises `_Terminated` in the main thread, so the run record is
    completed before the process ends (uvicorn, for one, re-raises SIGTERM after its shutdown)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_code_of(stop: SystemExit, record: dict) -> int:
    """The exit status of a script's own sys.exit / argparse error."""
    code = stop.code
    exit_code = code if isinstance(code, int) else (0 if code is None else 1)
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
    if exit_code != 0:
        record["error"] = f"SystemExit({code!r})"
    return exit_code


class _CallTally:
    """The patched generate calls made since the run started, per method."""

    def __init__(self):
        from ..patches.llava_patch import GENERATE_CALLS, PLAIN_IMAGE_CALLS

        self._calls, self._plain = GENERATE_CALLS, PLAIN_IMAGE_CALLS
        self._calls_before, self._plain_before = Counter(GENERATE_CALLS), PLAIN_IMAGE_CALLS["none"]

    def calls(self) -> dict:
        """{method: calls} ("none" = upstream decoding), zero counts left out."""
        calls = Counter(self._calls)
        calls.subtract(self._calls_before)
        return {method: count for method, count in sorted(calls.items()) if count > 0}

    def plain_image_calls(self) -> int:
        """Calls WITH images that ran upstream decoding (no method named and no default)."""
        return self._plain["none"] - self._plain_before


class _RecordRefresher:
    """Keeps the run record of a long-running script current: every `interval` seconds it writes the
    calls so far (status "running"), and warns once on stderr when images were served without the
    run's method. Runs in a daemon thread; `stop()` ends it."""

    def __init__(self, plan: ScriptPlan, record: dict, tally: _CallTally, interval: float):
        self.plan, self.record, self.tally, self.interval = plan, record, tally, interval
        self.warned = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="llava-avc-run-record", daemon=True)

    def start(self) -> "_RecordRefresher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh(final=False)

    def refresh(self, final: bool) -> None:
        """Update the counts in the record, warn if needed, and (while running) write it."""
        with self._lock:
            self.record["generate_calls"] = self.tally.calls()
            self.record["plain_calls_with_images"] = self.tally.plain_image_calls()
            self.record["updated_at"] = _now()
            self._warn_if_plain()
            if not final and self.plan.record_path is not None:
                _write_record(self.plan, self.record)

    def _warn_if_plain(self) -> None:
        plain = self.record["plain_calls_with_images"]
        if self.warned or self.plan.config is None or plain == 0:
            return
        self.warned = True
        print(f"{PROG}: warning: {plain} generate call(s) with images ran plain LLaVA decoding although the run's "
              f"method is {self.plan.method}; report this (the method should apply to every call).",
              file=sys.stderr, flush=True)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_record(plan: ScriptPlan, record: dict) -> None:
    """Write the run record (a failure to write only warns, once, and stops further writes)."""
    try:
        _write_json(plan.record_path, record)
    except OSError as error:
        print(f"{PROG}: warning: could not write the run record {plan.record_path}: {error}", file=sys.stderr)
        plan.record_path = None


def _finish_record(plan: ScriptPlan, record: dict, exit_code: int, refresher: _RecordRefresher,
                   started: float) -> None:
    """Complete the run record and write it."""
    refresher.stop()
    refresher.refresh(final=True)
    record["exit_code"] = exit_code
    record["status"] = "ok" if exit_code == 0 else "stopped" if exit_code == 128 + signal.SIGTERM else "failed"
    record["duration_s"] = round(time.perf_counter() - started, 3)
    record["finished_at"] = _now()
    if plan.record_path is not None:
        _write_record(plan, record)


def execute(plan: ScriptPlan, launcher_argv: Optional[Sequence[str]] = None) -> int:
    """Run the planned module; keep the run record current while it runs; return the exit status."""
    for warning in plan.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if plan.seed is not None:
        seed_everything(plan.seed)
    record = _initial_record(plan, launcher_argv)
    refresher = _RecordRefresher(plan, record, _CallTally(), plan.record_every).start()
    started = time.perf_counter()
    exit_code = 0
    try:
        _run_module_wrapped(plan, record)
    except SystemExit as stop:
        exit_code = _exit_code_of(stop, record)
    except UserError as error:
        exit_code = 2
        record["error"] = f"{type(error).__name__}: {error}"
        print(f"{PROG}: error: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        exit_code = 130
        record["error"] = "KeyboardInterrupt"
        print(f"{PROG}: interrupted", file=sys.stderr)
    except _Terminated:
        exit_code = 128 + signal.SIGTERM
        record["error"] = "terminated (SIGTERM)"
        print(f"{PROG}: terminated (SIGTERM)", file=sys.stderr)
    except BaseException as error:  # noqa: BLE001 - recorded, printed, exit status 1
        exit_code = 1
        record["error"] = f"{type(error).__name__}: {error}"
        traceback.print_exc()
        print(f"{PROG}: error: {plan.module} failed: {type(error).__name__}: {error}", file=sys.stderr)
    finally:
        if exit_code != 0:
            gc.collect()  # close (flush) the failed script's open answers file, held by the traceback
        _finish_record(plan, record, exit_code, refresher, started)
    summary = ", ".join(f"{method}: {count}" for method, count in record["generate_calls"].items()) or "none"
    where = f"; run record: {plan.record_path}" if plan.record_path is not None else ""
    print(f"{PROG}: method {plan.method}, generate calls ({summary}), status {record['status']}{where}",
          file=sys.stderr)
    if record["status"] == "stopped":
        _end_by_sigterm()
    return exit_code


def _end_by_sigterm() -> None:
    """End the process by SIGTERM, as the script itself would have ended, now that the record is
    complete (a script's non-daemon threads, such as model_worker's heart beat, would otherwise
    keep it alive forever)."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def run_command(args: argparse.Namespace, argv: Optional[Sequence[str]] = None) -> int:
    """The `run` subcommand's handler."""
    try:
        plan = plan_run(args)
    except UserError as error:  # the command line, conflicting method flags, bad config values
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return execute(plan, launcher_argv=argv)
