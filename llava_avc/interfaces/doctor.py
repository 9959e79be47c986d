"""``llava-avc doctor``: report whether this environment can run LLaVA + llava-avc.

Usage::

    llava-avc doctor [--json]

Every check is a :class:`Check`; a failed check with ``fatal=True`` makes the environment
unhealthy (exit status 1, last line ``doctor: unhealthy: <reason>``). A failed non-fatal
check is a warning (exit status 0). No check ever raises: each catches ``Exception`` and
reports it as ``Type: message``.

Versions alone do not say whether the methods work (transformers 5.25 renamed an argument of
generate and every method failed), so for each backend this environment imports, the doctor builds
a tiny random model in memory and RUNS AVC, VCD and M3ID on it (`llava_avc.backends.self_check`):
``methods-<backend>`` is OK, or FAIL with the exception's one-line cause.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import importlib.util
import json
import os
import platform
import re
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from ..backends.llava import health

# (import name, distribution name, fatal when it does not import)
LIBRARIES: Tuple[Tuple[str, str, bool], ...] = (
    ("transformers", "transformers", True),
    ("tokenizers", "tokenizers", True),
    ("accelerate", "accelerate", True),
    ("peft", "peft", False),  # only needed for LoRA checkpoints
    ("bitsandbytes", "bitsandbytes", False),  # only needed for 4/8-bit loading
    ("sentencepiece", "sentencepiece", True),
    ("huggingface_hub", "huggingface_hub", True),
)

SUPPORTED_TRANSFORMERS = "supported: 4.37.2 (recommended, LLaVA's pin) or 4.38-4.57.x with llava-avc's patch"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fatal: bool = False

    @property
    def status(self) -> str:
        if self.ok:
            return "OK"
        return "FAIL" if self.fatal else "WARN"


class Verdict(NamedTuple):
    level: str  # "ok" | "warn" | "fatal"
    message: str


# --------------------------------------------------------------------------- helpers


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _dist_version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> Tuple[int, ...]:
    """Numeric release tuple of a version string (``packaging`` if available)."""
    try:
        from packaging.version import Version

        return tuple(Version(version).release)
    except ImportError:
        pass
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if not match:
        raise ValueError(f"cannot parse version {version!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def _guard(name: str, fatal: bool, fn: Callable[[], Check]) -> Check:
    """Run one check; any exception becomes a failed check."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a doctor must never crash
        return Check(name, False, f"check crashed: {health.error_at(exc)}", fatal)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence file descriptors 1 and 2 and Python warnings for the block: what the checked libraries
    print when imported or tried (bitsandbytes' kernel notes, deprecation warnings) is not the report."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


# --------------------------------------------------------------------------- pure logic


def classify_transformers(version: str) -> Verdict:
    """Compatibility of a transformers version with LLaVA 1.2.2 + llava-avc."""
    try:
        release = _release(version)
    except Exception as exc:  # noqa: BLE001
        return Verdict("fatal", f"{version}: unparseable version ({health.one_line_error(exc)}); {SUPPORTED_TRANSFORMERS}")
    from ..backends.llava.versions import FIRST_NEEDING_PATCH, MAX_TRANSFORMERS_EXCLUSIVE, MIN_TRANSFORMERS

    release = (tuple(release) + (0, 0, 0))[:3]
    if not MIN_TRANSFORMERS <= release < MAX_TRANSFORMERS_EXCLUSIVE:  # the range patch_llava() accepts
        return Verdict("fatal", f"{version} is untested/unsupported; {SUPPORTED_TRANSFORMERS}")
    if release < FIRST_NEEDING_PATCH:
        note = "" if release == (4, 37, 2) else " (4.37.2 recommended)"
        return Verdict("ok", f"{version}: LLaVA 1.2.2 runs unpatched{note}")
    return Verdict(
        "warn",
        f"{version}: supported through llava-avc's compatibility patch; "
        "upstream LLaVA alone fails with cache_position",
    )


def is_healthy(checks: Sequence[Check]) -> bool:
    return all(c.ok or not c.fatal for c in checks)


def unhealthy_reason(checks: Sequence[Check]) -> str:
    bad = [c for c in checks if not c.ok and c.fatal]
    return "doctor: unhealthy: " + "; ".join(_one_line(f"{c.name} {c.detail}") for c in bad)


# --------------------------------------------------------------------------- checks


def check_python() -> Check:
    return Check("python", True, f"{platform.python_version()} ({sys.executable})", False)


def check_torch() -> Check:
    dist = _dist_version("torch") or "not installed"
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return Check("torch", False, f"{dist}; import failed: {health.error_at(exc)}", True)
    return Check("torch", True, f"{torch.__version__} ({torch.__file__})", True)


def check_cuda() -> Check:
    import torch

    if not torch.cuda.is_available():
        build = f"torch built with CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only torch build"
        return Check("cuda", False, f"not available ({build}); running on CPU", False)
    name = torch.cuda.get_device_name(0)
    return Check("cuda", True, f"available, CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s), {name}", False)


def check_library(module: str, dist: str, fatal: bool) -> Check:
    version = _dist_version(dist)
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001
        return Check(module, False, f"{version or 'not installed'}; import failed: {health.error_at(exc)}", fatal)
    if version is None:
        return Check(module, True, "imports, but no distribution metadata", fatal)
    return Check(module, True, version, fatal)


def check_transformers_compat() -> Check:
    version = _dist_version("transformers")
    if version is None:
        return Check("transformers-compat", False, f"transformers is not installed; {SUPPORTED_TRANSFORMERS}", True)
    verdict = classify_transformers(version)
    return Check("transformers-compat", verdict.level == "ok", verdict.message, verdict.level == "fatal")


def check_bnb_4bit() -> Check:
    """Exactly what `--load-4bit` will do here: the loaders' own rule first
    (`llava_avc.backends.devices.check_quantization_supported`, which both backends apply), then, when it
    allows 4-bit, an nf4 layer quantized and run on the device the loaders would use."""
    from ..backends.devices import check_quantization_supported, default_device

    device = default_device()
    try:
        check_quantization_supported(True, False, device)
    except ValueError as exc:
        return Check("bnb-4bit", False, f"--load-4bit is refused on this machine ({device}): {_one_line(exc)}", False)
    return _bnb_kernels(device)


def _bnb_kernels(device: str) -> Check:
    import torch
    import bitsandbytes as bnb

    dtype = torch.float16 if device == "cuda" else torch.float32
    try:
        layer = bnb.nn.Linear4bit(64, 64, quant_type="nf4", compute_dtype=dtype).to(device)
        if getattr(layer.weight, "quant_state", None) is None:
            return Check("bnb-4bit", False, f"weights were not quantized on {device}", False)
        out = layer(torch.randn(2, 64, device=device, dtype=dtype))
        if tuple(out.shape) != (2, 64) or not torch.isfinite(out).all():
            return Check("bnb-4bit", False, f"forward on {device} gave a bad result {tuple(out.shape)}", False)
    except Exception as exc:  # noqa: BLE001
        return Check("bnb-4bit", False, f"nf4 Linear4bit on {device} failed: {health.error_at(exc)}", False)
    return Check("bnb-4bit", True, f"--load-4bit works on {device} (nf4 Linear4bit quantize + forward)", False)


def check_llava_package() -> Check:
    ok, detail = health.llava_package_status()
    return Check("llava", ok, detail, True)


def check_llava_llama() -> Check:
    ok, detail = health.llava_llama_status()
    return Check(health.LLAVA_LLAMA, ok, detail, True)


def check_hf_backend() -> Check:
    """Whether this transformers serves the llava-hf backend (LlavaForConditionalGeneration /
    LlavaNextForConditionalGeneration with custom_generate callables: transformers >= 4.57)."""
    from ..backends.versions import HF_OLDEST, dotted, version_tuple

    version = _dist_version("transformers")
    if version is None or version_tuple(version) < HF_OLDEST:
        minimum = dotted(HF_OLDEST[:2])
        return Check("backend-hf", False, f"not available: transformers {version} < {minimum} "
                     f"(pip install 'transformers>={minimum}' in an environment for llava-hf models)", False)
    import transformers

    missing = [name for name in ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration")
               if not hasattr(transformers, name)]
    if missing:
        return Check("backend-hf", False, f"not available: transformers {version} lacks {', '.join(missing)}", False)
    return Check("backend-hf", True, f"available: llava-hf LLaVA / LLaVA-NeXT on transformers {version}", False)


def check_transformers_tested() -> Check:
    """Whether the installed transformers is one the test suite ran on; a newer one is a warning (the
    methods checks say whether it works)."""
    from ..backends.versions import NEWEST_TESTED, TESTED_TRANSFORMERS, is_newer_than_tested

    version = _dist_version("transformers")
    tested = ", ".join(TESTED_TRANSFORMERS)
    if version is not None and is_newer_than_tested(version):
        return Check("transformers-tested", False,
                     f"{version} is newer than the newest tested release ({NEWEST_TESTED}); the methods checks below "
                     f"say whether it works here; if they fail: pip install 'transformers<={NEWEST_TESTED}'", False)
    note = "tested" if version in TESTED_TRANSFORMERS else "within the supported range, not itself tested"
    return Check("transformers-tested", True, f"{version}: {note} (tested: {tested})", False)


def check_methods(backend: str) -> Check:
    """AVC, VCD and M3ID run on a tiny random model of the backend built in memory, and each at zero
    strength equals the model's own greedy generate (`llava_avc.backends.self_check`)."""
    from ..backends.self_check import run_self_check

    result = run_self_check(backend)
    versions = "; ".join(f"{dist} {_dist_version(dist)}" for dist in ("transformers", "torch")
                         + (("llava-torch",) if backend == "llava" else ()))
    if result.ok:
        return Check(f"methods-{backend}", True, f"{result.detail} ({result.seconds:.1f} s; {versions})", True)
    done = f"after {len(result.ran)} passing checks: " if result.ran else ""
    return Check(f"methods-{backend}", False, f"{done}{result.detail} ({versions})", True)


def check_llava_absent() -> Check:
    return Check("llava", False, "not installed: the original-LLaVA backend is unavailable "
                 "(pip install 'llava-avc[llava]' and pip install --no-deps llava-torch==1.2.2.post1)", False)


def _backends_summary(checks: Sequence[Check], llava_present: bool) -> Check:
    """One line naming the backends this environment serves; fatal when it serves none."""
    by_name = {c.name: c for c in checks}
    llava_ok = llava_present and all(by_name[name].ok or not by_name[name].fatal  # a warning still serves
                                     for name in ("transformers-compat", "llava", health.LLAVA_LLAMA, "methods-llava"))
    hf_ok = by_name["backend-hf"].ok and by_name["methods-hf"].ok
    detail = (f"original LLaVA (llava-torch): {'yes' if llava_ok else 'no'}; "
              f"llava-hf (transformers-native): {'yes' if hf_ok else 'no'}")
    return Check("backends", llava_ok or hf_ok, detail if llava_ok or hf_ok else detail + " - nothing to run", True)


def _methods_check(backend: str, importable: bool) -> Check:
    if not importable:
        return Check(f"methods-{backend}", False, "not run: the backend is unavailable here (see above)", False)
    return _guard(f"methods-{backend}", True, lambda: check_methods(backend))


def collect() -> List[Check]:
    checks = [_guard("python", False, check_python), _guard("torch", True, check_torch)]
    torch_ok = checks[-1].ok
    if torch_ok:
        checks.append(_guard("cuda", False, check_cuda))
    for module, dist, fatal in LIBRARIES:
        checks.append(_guard(module, fatal, lambda m=module, d=dist, f=fatal: check_library(m, d, f)))
    if torch_ok:
        checks.append(_guard("bnb-4bit", False, check_bnb_4bit))
    else:
        checks.append(Check("bnb-4bit", False, "skipped: torch does not import", False))
    # An installed but broken original LLaVA is an unhealthy environment; an absent one only means
    # that backend is unavailable.
    llava_present = importlib.util.find_spec("llava") is not None
    checks.append(_guard("transformers-tested", False, check_transformers_tested))
    if llava_present:
        checks.append(_guard("transformers-compat", True, check_transformers_compat))
        checks.append(_guard("llava", True, check_llava_package))
        checks.append(_guard(health.LLAVA_LLAMA, True, check_llava_llama))
        checks.append(_methods_check("llava", torch_ok and all(c.ok or not c.fatal for c in checks[-3:])))
    else:
        checks.append(check_llava_absent())
    checks.append(_guard("backend-hf", False, check_hf_backend))
    checks.append(_methods_check("hf", torch_ok and checks[-1].ok))
    checks.append(_backends_summary(checks, llava_present))
    return checks


# --------------------------------------------------------------------------- report


def format_report(checks: Sequence[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = ["llava-avc doctor"]
    lines += [f"  [{c.status:>4}] {c.name:<{width}}  {_one_line(c.detail)}" for c in checks]
    if is_healthy(checks):
        warnings = sum(1 for c in checks if not c.ok)
        lines.append(f"doctor: healthy ({warnings} warning(s))" if warnings else "doctor: healthy")
    else:
        lines.append(unhealthy_reason(checks))
    return "\n".join(lines)


def doctor_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="llava-avc doctor", description="Check the LLaVA / llava-avc environment.")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    args = parser.parse_args(argv)
    try:
        with _quiet():  # libraries' own prints and warnings while imported and tried are not the report
            checks = collect()
    except Exception as exc:  # noqa: BLE001 - last line of defence
        checks = [Check("doctor", False, f"crashed: {health.error_at(exc)}", True)]
    healthy = is_healthy(checks)
    sys.stderr.flush()
    if args.json:
        payload = {"healthy": healthy, "checks": [asdict(c) for c in checks]}
        if not healthy:
            payload["reason"] = unhealthy_reason(checks)
        print(json.dumps(payload, indent=2))
    else:
        print(format_report(checks))
    sys.stdout.flush()
    return 0 if healthy else 1

