"""Run the methods on a tiny random model built in memory: what `llava-avc doctor` reports per backend.

A version table cannot tell whether this environment's transformers still keeps the contracts the
backends rely on (transformers 5.25 renamed generate's cache argument; every method failed while a
table said "5.x: fine"). So each backend builds a tiny random model in memory (no files, no network;
`self_check_cases()` in its package), and this module runs AVC, VCD and M3ID on it for a few tokens
through the public entry point, and checks that each method at zero strength equals the model's own
greedy `generate` token for token.
"""

from __future__ import annotations

import importlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ..algorithm.config import AVCConfig, M3IDConfig, VCDConfig
from ..decode.methods import BUILT_IN, get_method
from . import BACKENDS

#: New tokens per run: enough for the decode steps to run after the prefill, few enough to stay fast.
NEW_TOKENS = 4
#: The built-in methods at their defaults (each at zero strength must equal plain greedy decoding).
METHODS = tuple(get_method(name).config_class() for name in BUILT_IN)


def _zero_strength() -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a zero strength is a no-op on purpose here
        return AVCConfig(alpha=0.0), VCDConfig(alpha=0.0), M3IDConfig(lam=0.0)


@dataclass
class SelfCheckCase:
    """A backend's tiny in-memory model and one prompt with an image.

    Attributes:
        model: the model (fp32, eval, on the CPU), random weights, no EOS (every run makes NEW_TOKENS).
        inputs: the keyword arguments of `generate` for the prompt (ids, pixels / images, sizes).
        what: a few words on the model, for the report.
    """

    model: Any
    inputs: dict
    what: str


@dataclass
class SelfCheckResult:
    backend: str
    ok: bool
    detail: str  # what ran, or the one-line cause of the first failure
    seconds: float
    ran: list = field(default_factory=list)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _run_case(backend, case: SelfCheckCase) -> list:
    """Run the checks on a case through the backend's own `generate(model, input_ids, config, **kwargs)`
    (config None: the model's own generate); returns the names of what ran. Raises the first failure."""
    inputs = dict(case.inputs)
    input_ids = inputs.pop("input_ids")

    def generate(config):
        return backend.generate(case.model, input_ids, config, **inputs, do_sample=False, max_new_tokens=NEW_TOKENS)

    ran = []
    reference = generate(None)
    for config in METHODS:
        output = generate(config)
        if output.shape != reference.shape:
            raise AssertionError(f"{config.method} returned {tuple(output.shape)} ids; plain greedy generate "
                                 f"returned {tuple(reference.shape)} for the same {NEW_TOKENS} new tokens")
        ran.append(config.method)
    for config in _zero_strength():
        output = generate(config)
        if not torch.equal(output, reference):
            raise AssertionError(f"{config.method} at zero strength gave {output.tolist()}, the model's own greedy "
                                 f"generate {reference.tolist()}")
    ran.append("zero strength == greedy generate")
    return ran


def run_self_check(backend: str) -> SelfCheckResult:
    """Build the backend's in-memory case and run the checks; never raises (a failure is reported)."""
    start = time.perf_counter()
    ran: list = []
    models: list = []
    try:
        package = importlib.import_module(BACKENDS[backend][1])
        for case in package.self_check_cases():
            with torch.no_grad():
                ran += [f"{case.what}: {name}" for name in _run_case(package, case)]
            models.append(case.what)
    except Exception as exc:  # noqa: BLE001 - the doctor reports every failure, it never crashes
        return SelfCheckResult(backend, False, _one_line(exc), time.perf_counter() - start, ran)
    seconds = time.perf_counter() - start
    detail = (f"{', '.join(m.method for m in METHODS)} x {NEW_TOKENS} greedy tokens on in-memory random "
              f"{'; '.join(models)}; each at zero strength equals the model's own greedy generate")
    return SelfCheckResult(backend, True, detail, seconds, ran)
