"""Contrastive next-token logits of AVC, VCD and M3ID with the adaptive plausibility cutoff.

Reference: AVC / AvisC, arXiv 2405.17820 (Eq. for the calibrated logits); official code
sangminwoo/AvisC (``avisc_utils/avisc_sample.py``). VCD: Leng et al., CVPR 2024. M3ID:
Favero et al., CVPR 2024.

All functions take (B, V) logits and compute in float32: the inputs are upcast first because
fp16/bf16 logits lose the small differences that the contrast (1 + alpha) * l - alpha * l'
amplifies. This module imports neither ``llava`` nor ``transformers``.
"""

from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple

import torch

from ..errors import UserError

_NEG_INF = float("-inf")


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Returns ``logits`` as float32 (no copy when it already is)."""
    return logits.to(dtype=torch.float32)


def _check_pair(logits: torch.Tensor, other: torch.Tensor, other_name: str) -> None:
    """Raises ValueError unless the two branches' logits have the same shape."""
    if logits.shape != other.shape:
        raise UserError(
            f"`logits` {tuple(logits.shape)} and `{other_name}` {tuple(other.shape)} must have "
            "the same (B, V) shape. Pass the last position's logits of both branches, e.g. "
            "outputs.logits[:, -1, :]."
        )


def plausibility_cutoff_mask(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """Marks the implausible tokens of the ORIGINAL branch (adaptive plausibility).

    True where logits < log(beta) + max(logits) per row, i.e. where p < beta * p_max.

    Args:
        logits: (B, V) logits of the original (unmodified image) branch.
        beta: Cutoff in (0, 1].

    Returns:
        (B, V) bool, True = cut off (set to -inf by the contrastive functions).
    """
    if not 0.0 < beta <= 1.0:
        raise UserError(f"`beta` (={beta!r}) must be in (0, 1]. Use e.g. beta=0.1.")
    l = _upcast(logits)  # (B, V)
    cutoff = math.log(beta) + l.max(dim=-1, keepdim=True).values  # (B, 1)
    return l < cutoff


def _contrast(logits: torch.Tensor, other: torch.Tensor, alpha: float, beta: float,
              other_name: str) -> torch.Tensor:
    """(1 + alpha) * l - alpha * l_other, with the cutoff of l set to -inf (float32)."""
    _check_pair(logits, other, other_name)
    l = _upcast(logits)  # (B, V)
    z = l - _upcast(other)  # (B, V), a new tensor: the in-place ops below never touch the inputs
    z.mul_(alpha).add_(l)  # (1 + alpha) * l - alpha * l_other, without temporaries (hot path)
    return z.masked_fill_(plausibility_cutoff_mask(l, beta), _NEG_INF)


def avc_logits(logits: torch.Tensor, biased_logits: torch.Tensor, alpha: float,
               beta: float) -> torch.Tensor:
    """AVC's calibrated logits.

    z = (1 + alpha) * l - alpha * l_biased, then z = -inf where l < log(beta) + max(l).

    Args:
        logits: (B, V) logits with the original image.
        biased_logits: (B, V) logits with only the blind image tokens kept.
        alpha: Contrast strength, >= 0.
        beta: Plausibility cutoff in (0, 1].

    Returns:
        (B, V) float32 logits.
    """
    return _contrast(logits, biased_logits, alpha, beta, "biased_logits")


def vcd_logits(logits: torch.Tensor, noised_logits: torch.Tensor, alpha: float,
               beta: float) -> torch.Tensor:
    """VCD's contrastive logits (Leng et al. 2024); the same formula as ``avc_logits``.

    Args:
        logits: (B, V) logits with the original image.
        noised_logits: (B, V) logits with the diffusion-noised image.
        alpha: Contrast strength, >= 0.
        beta: Plausibility cutoff in (0, 1].

    Returns:
        (B, V) float32 logits.
    """
    # NOTE(avc): the official AvisC code overrides cd_alpha with 1.0 in its VCD branch; we use
    # the alpha we are given.
    return _contrast(logits, noised_logits, alpha, beta, "noised_logits")


def m3id_weight(t: int, lam: float) -> float:
    """M3ID's contrast weight (1 - g_t) / g_t with g_t = exp(-lam * t).

    Args:
        t: Decoding step, 1 for the first generated token.
        lam: Decay rate, >= 0.

    Returns:
        The weight, exp(lam * t) - 1 (computed with ``expm1`` for accuracy).
    """
    if isinstance(t, bool) or not isinstance(t, numbers.Integral):
        raise TypeError(f"`t` (={t!r}) must be an int decoding step. Use t=1 for the first token.")
    if t < 1:
        raise UserError(
            f"`t` (={t}) must be >= 1; M3ID counts decoding steps from 1. "
            "Use t=1 for the first generated token."
        )
    # (1 - g) / g = 1 / g - 1 = exp(lam * t) - 1.
    return math.expm1(lam * t)


def m3id_logits(logits: torch.Tensor, uncond_logits: torch.Tensor, t: int, lam: float,
                beta: float) -> torch.Tensor:
    """M3ID's logits: lc + w_t * (lc - lu) on log-probabilities, with the cutoff.

    Args:
        logits: (B, V) logits conditioned on the image.
        uncond_logits: (B, V) logits without the image.
        t: Decoding step, >= 1.
        lam: Decay rate, >= 0.
        beta: Plausibility cutoff in (0, 1], from the conditioned logits.

    Returns:
        (B, V) float32 logits.
    """
    _check_pair(logits, uncond_logits, "uncond_logits")
    weight = m3id_weight(t, lam)
    l = _upcast(logits)  # (B, V)
    lc = torch.log_softmax(l, dim=-1)  # (B, V)
    lu = torch.log_softmax(_upcast(uncond_logits), dim=-1)  # (B, V)
    z = lc + weight * (lc - lu)
    return z.masked_fill(plausibility_cutoff_mask(l, beta), _NEG_INF)


class NonFiniteLogitsError(UserError, RuntimeError):
    """A decoding branch produced NaN/inf logits.

    Attributes:
        step: Decoding step at which it happened.
        branch: Name of the branch ("original", "biased", "noised", "uncond", ...).
        rows: Batch rows containing NaN/inf.
    """

    def __init__(self, message: str, *, step: int, branch: str, rows: List[int]) -> None:
        super().__init__(message)
        self.step = step
        self.branch = branch
        self.rows = rows


def check_finite(logits: torch.Tensor, *, step: int, branch: str) -> None:
    """Raises ``NonFiniteLogitsError`` if ``logits`` contain NaN/inf; never silent.

    Args:
        logits: (B, V) logits of one branch.
        step: Decoding step (for the message).
        branch: Branch name (for the message).

    Raises:
        NonFiniteLogitsError: Naming the step, the branch and the offending rows.
    """
    if bool(torch.isfinite(logits.float().sum())):  # fast path: one reduction per decoding step
        return
    bad = ~torch.isfinite(logits)  # (B, V)
    if not bool(bad.any()):
        return
    rows = torch.nonzero(bad.reshape(bad.shape[0], -1).any(dim=-1)).flatten().tolist()
    # NOTE(avc): the official code silently replaces NaN biased logits by the original ones
    # (turning AVC off for that step); we stop instead.
    raise NonFiniteLogitsError(
        f"non-finite {branch} logits at step {step} in rows {rows}: NaN/inf from the {branch} "
        "branch (possible under 4-bit quantization or float16 overflow); contrastive decoding "
        "needs finite logits from every branch. Load the model in bfloat16/float32 or without "
        "4-bit quantization.",
        step=step, branch=branch, rows=rows,
    )


def check_branches_finite(branches: Sequence[Tuple[str, Optional[torch.Tensor]]], *, step: int) -> None:
    """`check_finite` for every branch of a decoding step, with one reduction for all of them on the
    fast path (one device sync per step, as for a single branch).

    Args:
        branches: (name, (B, V) logits or None) per branch, e.g. [("original", l), ("avc biased", lb)].
        step: Decoding step (for the message).

    Raises:
        NonFiniteLogitsError: naming the first branch with NaN/inf, the step and the rows.
    """
    present = [(name, logits) for name, logits in branches if logits is not None]
    total = sum(logits.float().sum() for _, logits in present)
    if not present or bool(torch.isfinite(total)):
        return
    for name, logits in present:
        check_finite(logits, step=step, branch=name)

