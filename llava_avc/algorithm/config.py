"""Validated, frozen hyper-parameter configs for AVC, VCD and M3ID decoding.

Reference: Woo et al., "Don't Miss the Forest for the Trees: Attentional Vision Calibration
for Large Vision Language Models" (AVC / AvisC), arXiv 2405.17820; official code
sangminwoo/AvisC.

Defaults:
    * ``AVCConfig.alpha = 2.5`` is what the paper's LLaVA figure implies (overview:
      28.01 + 2.5 * 6.58 = 44.46); the authors' POPE/MME scripts used ``alpha = 1.0``
      (``cd_alpha=1.0`` in ``eval_bench/scripts/pope_eval_batch.sh`` and
      ``experiments/cd_scripts/mme_eval.sh``).
    * ``beta = 0.1``, ``gamma = 0.5``, ``lam = 1.0``, ``masking = "zeros"`` follow the paper
      and the official scripts.
    * VCD (Leng et al. 2024): ``alpha = 1.0``, ``beta = 0.1``, ``noise_step = 500``.
    * M3ID (Favero et al. 2024): ``lam = 0.02`` (hard-coded in the official AvisC code).

Every config is a frozen dataclass validated on creation; each field carries metadata from which
the command line builds its flags (``llava_avc.interfaces.flags``): ``help``, ``constraint`` (the
valid range, shown in ``--help``) and, where the flag's name differs from the field's, ``flag``
(``lam`` -> ``--avc-lambda``). This module imports neither
``llava`` nor ``transformers``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Tuple

from ..errors import UserError


NUM_DIFFUSION_STEPS = 1000
"""Length of VCD's diffusion schedule; valid noise steps are 0 .. NUM_DIFFUSION_STEPS - 1."""

MASKING_SCHEMES: Tuple[str, ...] = ("zeros", "ones", "noise")
"""How AVC replaces the non-blind image tokens in the biased branch."""

_MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts unsigned 64-bit seeds
_PAPER_BETA = 0.1
# Stack depth from ``warnings.warn`` in ``_warn`` to the user's ``XConfig(...)`` call:
# _warn -> _warn_no_ops -> __post_init__ -> __init__ -> caller.
_WARN_STACKLEVEL = 5

def _message(owner: str, name: str, value: Any, constraint: str, fix: str) -> str:
    """Formats an error as "what, the value, the constraint, the fix"."""
    return f"{owner}: `{name}` (={value!r}) must {constraint}. {fix}"


def _check_real(owner: str, name: str, value: Any, example: str) -> None:
    """Raises unless ``value`` is a finite real number (bool is not a number)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            _message(owner, name, value, f"be a real number, not {type(value).__name__}",
                     f"Use e.g. {example}.")
        )
    if not math.isfinite(value):
        raise UserError(
            _message(owner, name, value, "be a finite real number (not NaN/inf)",
                     f"Use e.g. {example}.")
        )


def _check_int(owner: str, name: str, value: Any, example: str) -> None:
    """Raises TypeError unless ``value`` is an integer (bool is not an integer)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            _message(owner, name, value, f"be an int, not {type(value).__name__}",
                     f"Use e.g. {example}.")
        )


def _check_beta(owner: str, beta: Any) -> None:
    """Validates the adaptive-plausibility ``beta`` shared by all three methods."""
    example = f"beta={_PAPER_BETA} (the paper's value)"
    _check_real(owner, "beta", beta, example)
    if not 0.0 < beta <= 1.0:
        raise UserError(
            _message(owner, "beta", beta,
                     "be in (0, 1]; it scales the plausibility cutoff log(beta) + max(logits)",
                     f"Use e.g. {example}.")
        )


def _check_non_negative(owner: str, name: str, value: Any, meaning: str, example: str) -> None:
    """Validates a finite real number >= 0."""
    _check_real(owner, name, value, example)
    if value < 0:
        raise UserError(
            _message(owner, name, value, f"be >= 0; {meaning}", f"Use e.g. {example}.")
        )


def _check_seed(owner: str, seed: Any) -> None:
    """Validates a seed for a CPU ``torch.Generator``."""
    _check_int(owner, "noise_seed", seed, "noise_seed=0")
    if not 0 <= seed <= _MAX_SEED:
        raise UserError(
            _message(owner, "noise_seed", seed, f"be in [0, 2**64 - 1] (={_MAX_SEED})",
                     "Use e.g. noise_seed=0.")
        )


def _warn(message: str) -> None:
    """Emits a UserWarning pointing at the caller that built the config."""
    warnings.warn(message, UserWarning, stacklevel=_WARN_STACKLEVEL)


class MethodConfig:
    """The base of every method's config (not a dataclass itself): a subclass is a frozen dataclass with
    `method: ClassVar[str]` (its registry name), fields carrying `help` / `constraint` metadata (the command
    line's flags), and `validate()` raising ValueError / TypeError on a bad value (one line: what, the value,
    the constraint, the fix). Register the method with `llava_avc.register_method`."""

    method: ClassVar[str] = ""
    _FLOAT_FIELDS: ClassVar[Tuple[str, ...]] = ()
    _INT_FIELDS: ClassVar[Tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.validate()
        # Store plain Python floats/ints (ints and numpy scalars are accepted) for JSON.
        for name in self._FLOAT_FIELDS:
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in self._INT_FIELDS:
            object.__setattr__(self, name, int(getattr(self, name)))
        self._warn_no_ops()

    def validate(self) -> None:
        """Raises ValueError / TypeError if a field is out of range / of the wrong type (default: no checks)."""

    def _warn_no_ops(self) -> None:
        """Warns (UserWarning) about legal settings that make the method a no-op."""

    def to_dict(self) -> Dict[str, Any]:
        """Returns a plain JSON-able dict of the fields plus ``"method"``."""
        return {"method": self.method, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class AVCConfig(MethodConfig):
    """Attentional Vision Calibration (AVC / AvisC) hyper-parameters.

    Attributes:
        alpha: Contrast strength; logits = (1 + alpha) * l - alpha * l_biased.
        beta: Adaptive plausibility cutoff in (0, 1].
        gamma: Top-p mass over layers used to pick the attention layers, in (0, 1].
        lam: Blind-token threshold mean + lam * std over image-token attention, >= 0.
        masking: Replacement of the non-blind image tokens, one of ``MASKING_SCHEMES``.
        noise_seed: Seed of the CPU generator used by ``masking="noise"``.
    """

    method: ClassVar[str] = "avc"
    _FLOAT_FIELDS: ClassVar[Tuple[str, ...]] = ("alpha", "beta", "gamma", "lam")
    _INT_FIELDS: ClassVar[Tuple[str, ...]] = ("noise_seed",)

    alpha: float = field(default=2.5, metadata={"constraint": ">= 0", "help": (
        "Contrast strength: logits = (1 + alpha) * l - alpha * l_biased; >= 0, 0 = plain "
        "decoding. Default 2.5 is implied by the paper's LLaVA figure; the authors' POPE/MME "
        "scripts used 1.0.")})
    beta: float = field(default=_PAPER_BETA, metadata={"constraint": "in (0, 1]", "help": (
        "Adaptive plausibility cutoff in (0, 1]: tokens with p < beta * p_max (under the "
        "original image) are never chosen.")})
    gamma: float = field(default=0.5, metadata={"constraint": "in (0, 1]", "help": (
        "Layer selection in (0, 1]: keep the fewest layers (by share of last-query attention "
        "on the image) whose cumulative share reaches gamma.")})
    lam: float = field(default=1.0, metadata={"constraint": ">= 0", "flag": "lambda", "help": (
        "Blind-token threshold, >= 0: an image token is blind when its attention is "
        ">= mean + lam * std over the image tokens.")})
    masking: str = field(default="zeros", metadata={"constraint": "one of " + ", ".join(MASKING_SCHEMES), "help": (
        "How the NON-blind image tokens are replaced in the biased branch: "
        + " | ".join(MASKING_SCHEMES) + ".")})
    noise_seed: int = field(default=0, metadata={"constraint": "in [0, 2**64 - 1]", "help": (
        "Seed of the CPU torch.Generator used by masking='noise' (same noise on any device).")})

    def validate(self) -> None:
        """Raises ValueError / TypeError on an invalid field (see the field help)."""
        owner = type(self).__name__
        _check_non_negative(owner, "alpha", self.alpha,
                        "it is the contrast strength (1 + alpha) * l - alpha * l_biased",
                        "alpha=2.5 (paper figure) or alpha=1.0 (authors' scripts)")
        _check_beta(owner, self.beta)
        _check_real(owner, "gamma", self.gamma, "gamma=0.5 (the paper's value)")
        if not 0.0 < self.gamma <= 1.0:
            raise UserError(_message(
                owner, "gamma", self.gamma,
                "be in (0, 1]; it is the cumulative share of image attention the selected "
                "layers must reach", "Use e.g. gamma=0.5 (the paper's value)."))
        _check_non_negative(owner, "lam", self.lam,
                        "blind tokens are those >= mean + lam * std of the attention",
                        "lam=1.0 (the paper's value)")
        self._validate_masking(owner)
        _check_seed(owner, self.noise_seed)

    def _validate_masking(self, owner: str) -> None:
        """Validates ``masking`` (exact, lower-case names)."""
        fix = f"Use one of {', '.join(repr(s) for s in MASKING_SCHEMES)}, e.g. masking='zeros'."
        if not isinstance(self.masking, str):
            raise TypeError(_message(owner, "masking", self.masking,
                                     f"be a str, not {type(self.masking).__name__}", fix))
        if self.masking not in MASKING_SCHEMES:
            raise UserError(_message(owner, "masking", self.masking,
                                      f"be one of {MASKING_SCHEMES}", fix))

    def _warn_no_ops(self) -> None:
        if self.alpha == 0:
            _warn("AVCConfig: `alpha` (=0.0) is a no-op; output equals plain decoding "
                  "(under sampling, restricted to the beta-plausible tokens). Use alpha > 0, "
                  "e.g. alpha=2.5, to apply AVC.")


@dataclass(frozen=True)
class VCDConfig(MethodConfig):
    """Visual Contrastive Decoding (VCD, Leng et al. 2024) hyper-parameters.

    Attributes:
        alpha: Contrast strength; logits = (1 + alpha) * l - alpha * l_noised.
        beta: Adaptive plausibility cutoff in (0, 1].
        noise_step: Diffusion step t of the image noise, an int in [0, 999].
        noise_seed: Seed of the CPU generator drawing the diffusion noise.
    """

    method: ClassVar[str] = "vcd"
    _FLOAT_FIELDS: ClassVar[Tuple[str, ...]] = ("alpha", "beta")
    _INT_FIELDS: ClassVar[Tuple[str, ...]] = ("noise_step", "noise_seed")

    alpha: float = field(default=1.0, metadata={"constraint": ">= 0", "help": (
        "Contrast strength: logits = (1 + alpha) * l - alpha * l_noised; >= 0, 0 = plain "
        "decoding.")})
    beta: float = field(default=_PAPER_BETA, metadata={"constraint": "in (0, 1]", "help": (
        "Adaptive plausibility cutoff in (0, 1]: tokens with p < beta * p_max (under the "
        "original image) are never chosen.")})
    noise_step: int = field(default=500, metadata={"constraint": f"in [0, {NUM_DIFFUSION_STEPS - 1}]", "help": (
        f"Diffusion step t in [0, {NUM_DIFFUSION_STEPS - 1}] of the noise added to the image; "
        "larger = noisier (alpha_bar(500) ~ 0.745).")})
    noise_seed: int = field(default=0, metadata={"constraint": "in [0, 2**64 - 1]", "help": (
        "Seed of the CPU torch.Generator drawing the diffusion noise (same noise on any "
        "device).")})

    def validate(self) -> None:
        """Raises ValueError / TypeError on an invalid field (see the field help)."""
        owner = type(self).__name__
        _check_non_negative(owner, "alpha", self.alpha,
                        "it is the contrast strength (1 + alpha) * l - alpha * l_noised",
                        "alpha=1.0 (VCD's value)")
        _check_beta(owner, self.beta)
        _check_int(owner, "noise_step", self.noise_step, "noise_step=500")
        if not 0 <= self.noise_step < NUM_DIFFUSION_STEPS:
            raise UserError(_message(
                owner, "noise_step", self.noise_step,
                f"be in [0, {NUM_DIFFUSION_STEPS - 1}]; VCD's diffusion schedule has "
                f"{NUM_DIFFUSION_STEPS} steps", "Use e.g. noise_step=500 (VCD's value)."))
        _check_seed(owner, self.noise_seed)

    def _warn_no_ops(self) -> None:
        if self.alpha == 0:
            _warn("VCDConfig: `alpha` (=0.0) is a no-op; output equals plain decoding "
                  "(under sampling, restricted to the beta-plausible tokens). Use alpha > 0, "
                  "e.g. alpha=1.0, to apply VCD.")


@dataclass(frozen=True)
class M3IDConfig(MethodConfig):
    """M3ID (Favero et al. 2024) hyper-parameters.

    Attributes:
        lam: Decay of g_t = exp(-lam * t); the contrast weight is (1 - g_t) / g_t, >= 0.
        beta: Adaptive plausibility cutoff in (0, 1].
    """

    method: ClassVar[str] = "m3id"
    _FLOAT_FIELDS: ClassVar[Tuple[str, ...]] = ("lam", "beta")

    lam: float = field(default=0.02, metadata={"constraint": ">= 0", "flag": "lambda", "help": (
        "Decay rate, >= 0: g_t = exp(-lam * t) and the contrast weight (1 - g_t) / g_t grows "
        "with the decoding step t; 0 = plain decoding.")})
    beta: float = field(default=_PAPER_BETA, metadata={"constraint": "in (0, 1]", "help": (
        "Adaptive plausibility cutoff in (0, 1]: tokens with p < beta * p_max (with the "
        "image) are never chosen.")})

    def validate(self) -> None:
        """Raises ValueError / TypeError on an invalid field (see the field help)."""
        owner = type(self).__name__
        _check_non_negative(owner, "lam", self.lam,
                        "it is the decay rate of g_t = exp(-lam * t)",
                        "lam=0.02 (M3ID's value)")
        _check_beta(owner, self.beta)

    def _warn_no_ops(self) -> None:
        if self.lam == 0:
            _warn("M3IDConfig: `lam` (=0.0) is a no-op; output equals plain decoding "
                  "(under sampling, restricted to the beta-plausible tokens). Use lam > 0, "
                  "e.g. lam=0.02, to apply M3ID.")
