"""Blind-token selection and masking of AVC: which image tokens draw the attention.

Reference: AVC / AvisC, arXiv 2405.17820 (Sec. 3); official code sangminwoo/AvisC
(``avisc_utils/avisc_sample.py`` and ``experiments/llava/model/language_model/llava_llama.py``).

Pipeline for one sample, from the attention of the LAST prompt position (the query that
predicts the first answer token) over the prompt keys, per layer and head:

    1. ``image_attention``: head-mean attention on the image keys, (n_layers, N).
    2. ``layer_shares``: each layer's share of the total image attention, (n_layers,).
    3. ``select_layers_top_p``: the fewest layers whose cumulative share reaches ``gamma``.
    4. ``token_scores``: mean attention per image token over those layers, (N,).
    5. ``blind_token_mask``: blind = score >= mean + lam * std (the over-attended tokens).

The biased branch then keeps only the blind tokens (``mask_non_blind``). This module imports
neither ``llava`` nor ``transformers``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..errors import UserError
from .config import MASKING_SCHEMES

Layers = Union[Sequence[int], torch.Tensor]


def last_query_attention(query: torch.Tensor, keys: torch.Tensor,
                         key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax attention of one query position over the cached keys, per head.

    Args:
        query: (B, H, D) RoPE-rotated query of the last prompt position, any float dtype.
        keys: (B, H_kv, L, D) RoPE-rotated cached keys; H % H_kv == 0. With grouped-query
            attention each kv head serves H / H_kv CONSECUTIVE query heads (as
            ``repeat_interleave`` / transformers' ``repeat_kv``).
        key_mask: Optional (B, L) bool (or 0/1 integer) mask, True = attend, False = padding.

    Returns:
        (B, H, L) float32 probabilities of softmax(q . k / sqrt(D)), computed in float32;
        masked keys get exactly 0 and each row sums to 1.
    """
    _check_query_keys(query, keys)
    batch, heads, dim = query.shape
    kv_heads, length = keys.shape[1], keys.shape[2]
    group = heads // kv_heads
    # Query head h = g * group + r reads kv head g: same order as repeat_interleave.
    q = query.float().reshape(batch, kv_heads, group, dim)  # (B, H_kv, G, D)
    k = keys.float()  # (B, H_kv, L, D)
    logits = torch.einsum("bgrd,bgld->bgrl", q, k) / math.sqrt(dim)  # (B, H_kv, G, L)
    logits = logits.reshape(batch, heads, length)  # (B, H, L)
    if key_mask is not None:
        attend = _as_bool_mask(key_mask, batch, length).to(logits.device)  # (B, L)
        logits = logits.masked_fill(~attend[:, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1)


def _check_query_keys(query: torch.Tensor, keys: torch.Tensor) -> None:
    """Validates the shapes of ``last_query_attention``'s inputs."""
    if query.dim() != 3 or keys.dim() != 4:
        raise UserError(
            f"`query` must be (B, H, D) and `keys` (B, H_kv, L, D); got shapes "
            f"{tuple(query.shape)} and {tuple(keys.shape)}. Pass the last position's query "
            "(e.g. q[:, :, -1]) and the cached keys of the same layer."
        )
    if query.shape[0] != keys.shape[0] or query.shape[2] != keys.shape[3]:
        raise UserError(
            f"`query` {tuple(query.shape)} and `keys` {tuple(keys.shape)} must agree on the "
            "batch size B and the head dimension D. Pass tensors of the same layer and batch."
        )
    if query.shape[1] % keys.shape[1] != 0:
        raise UserError(
            f"the number of query heads H (={query.shape[1]}) must be a multiple of the kv "
            f"heads H_kv (={keys.shape[1]}) for grouped-query attention. Check that the keys "
            "are not already repeated with a different factor."
        )


def _as_bool_mask(key_mask: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """Validates a (B, L) key mask and returns it as bool (True = attend)."""
    if tuple(key_mask.shape) != (batch, length):
        raise UserError(
            f"`key_mask` must be (B, L) = {(batch, length)}, got {tuple(key_mask.shape)}. "
            "Pass the 2-D padding mask (True/1 = real token)."
        )
    if key_mask.is_floating_point() or key_mask.is_complex():
        raise TypeError(
            f"`key_mask` must be bool or 0/1 integer (True = attend), got {key_mask.dtype}; "
            "a float mask is ambiguous (additive 0/-inf masks mean the opposite). "
            "Pass `attention_mask.bool()`."
        )
    attend = key_mask != 0  # (B, L) bool
    if not bool(attend.any(dim=-1).all()):
        empty = torch.nonzero(~attend.any(dim=-1)).flatten().tolist()
        raise UserError(
            f"`key_mask` masks every key in rows {empty}; softmax would be NaN. "
            "Each sample needs at least one key with mask True."
        )
    return attend


def image_attention(attn: torch.Tensor, image_span: Tuple[int, int]) -> torch.Tensor:
    """Head-mean attention of the last query on the image keys, for ONE sample.

    Args:
        attn: (n_layers, H, L) last-query attention probabilities.
        image_span: (start, end) of the image tokens among the L keys; end exclusive.

    Returns:
        (n_layers, N) float32 with N = end - start.
    """
    if attn.dim() != 3:
        raise UserError(
            f"`attn` must be (n_layers, H, L) for one sample, got shape {tuple(attn.shape)}. "
            "Index the batch first, e.g. attn[:, b]."
        )
    start, end = _check_span(image_span, attn.shape[-1])
    return attn[:, :, start:end].float().mean(dim=1)  # (n_layers, N)


def _check_span(image_span: Tuple[int, int], length: int) -> Tuple[int, int]:
    """Validates ``image_span`` = (start, end) against a sequence of ``length`` keys."""
    start, end = (int(i) for i in image_span)
    if not 0 <= start < end <= length:
        raise UserError(
            f"`image_span` (={tuple(image_span)!r}) must satisfy 0 <= start < end <= L "
            f"(={length}). Pass the image tokens' (start, end) in the merged sequence."
        )
    return start, end


def layer_shares(image_attn: torch.Tensor) -> torch.Tensor:
    """Each layer's share of the total attention on the image.

    Args:
        image_attn: (n_layers, N) head-mean image attention.

    Returns:
        (n_layers,) float32, p[l] = sum(a[l]) / sum over all layers (sums to 1).
    """
    per_layer = image_attn.float().sum(dim=-1)  # (n_layers,)
    total = per_layer.sum()
    if not bool(torch.isfinite(total)) or float(total) <= 0.0:
        raise UserError(
            f"total attention on the image (={float(total)}) must be finite and > 0 to split "
            "it into layer shares. Check `image_span` and that `attn` holds probabilities."
        )
    return per_layer / total


def select_layers_top_p(shares: torch.Tensor, gamma: float) -> torch.Tensor:
    """Picks the layers with the largest image-attention share, top-p style.

    Sorts the shares in descending order (ties stable by layer index) and keeps
    k = #(cumsum < gamma) + 1 layers, clamped to n_layers.

    Args:
        shares: (n_layers,) layer shares summing to 1.
        gamma: Cumulative share to reach, in (0, 1].

    Returns:
        (k,) int64 layer indices in descending share order.
    """
    if not 0.0 < gamma <= 1.0:
        raise UserError(f"`gamma` (={gamma!r}) must be in (0, 1]. Use e.g. gamma=0.5.")
    order = torch.sort(shares, descending=True, stable=True).indices  # (n_layers,)
    # float64 cumsum: the comparison with the Python float gamma is not decided by
    # float32 accumulation error.
    cumulative = torch.cumsum(shares[order].double(), dim=0)  # (n_layers,)
    k = min(int((cumulative < gamma).sum()) + 1, shares.numel())
    # NOTE(avc): the official code takes torch.topk(k), whose order among equal shares is
    # unspecified; we break ties by layer index so the selection is deterministic.
    return order[:k].long()


def token_scores(image_attn: torch.Tensor, layers: Layers) -> torch.Tensor:
    """Mean image attention per token over the selected layers.

    Args:
        image_attn: (n_layers, N) head-mean image attention.
        layers: Selected layer indices (list or 1-D LongTensor), non-empty.

    Returns:
        (N,) float32 scores.
    """
    index = torch.as_tensor(layers, dtype=torch.long, device=image_attn.device).flatten()
    if index.numel() == 0:
        raise UserError("`layers` must select at least one layer; got none.")
    return image_attn.float()[index].mean(dim=0)  # (N,)


def blind_token_mask(scores: torch.Tensor, lam: float) -> torch.Tensor:
    """Marks the over-attended ("blind") image tokens.

    blind = scores >= mean(scores) + lam * std(scores), with the UNBIASED std (N - 1).
    Uniform scores (std 0) make every token blind; a single token is blind.

    Args:
        scores: (N,) per-token attention scores.
        lam: Threshold multiplier, >= 0.

    Returns:
        (N,) bool mask, True = blind.
    """
    if scores.dim() != 1 or scores.numel() == 0:
        raise UserError(f"`scores` must be a non-empty (N,) tensor, got {tuple(scores.shape)}.")
    if not bool(torch.isfinite(scores).all()):
        raise UserError("`scores` contain NaN/inf; check the attention of the image tokens.")
    values = scores.double()  # (N,) float64: the boundary case is not decided by rounding
    if bool((values == values[0]).all()):
        # Zero spread (incl. N == 1): threshold == every score. Computed explicitly because
        # the float mean of N equal numbers can differ from them by an ulp.
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = values.mean() + lam * values.std(correction=1)
    # NOTE(avc): the paper writes ">"; the official code zeroes tokens with att < thr, so a
    # score equal to the threshold stays blind (">="). We follow the code.
    return values >= threshold


@dataclass
class BlindTokens:
    """Blind-token analysis of one sample.

    Attributes:
        image_span: (start, end) of the image tokens in the merged sequence, end exclusive.
        layers: Selected layer indices, in descending share order.
        scores: (N,) float32 per-token attention scores over the selected layers.
        blind: (N,) bool, True = blind (kept in the biased branch).
    """

    image_span: Tuple[int, int]
    layers: List[int]
    scores: torch.Tensor
    blind: torch.Tensor

    @property
    def num_blind(self) -> int:
        """Number of blind tokens."""
        return int(self.blind.sum())

    def to_dict(self) -> Dict[str, Any]:
        """Returns a plain JSON-able dict."""
        return {
            "image_span": [int(i) for i in self.image_span],
            "layers": [int(i) for i in self.layers],
            "num_tokens": int(self.blind.numel()),
            "num_blind": self.num_blind,
            "blind_indices": torch.nonzero(self.blind).flatten().tolist(),
            "scores": [float(s) for s in self.scores.tolist()],
            "blind": [bool(b) for b in self.blind.tolist()],
        }


def find_blind_tokens_from_attention(attn: torch.Tensor, image_span: Tuple[int, int],
                                     gamma: float, lam: float) -> BlindTokens:
    """Runs the blind-token selection for ONE sample.

    Args:
        attn: (n_layers, H, L) last-query attention probabilities.
        image_span: (start, end) of the image tokens among the L keys.
        gamma: Layer top-p mass in (0, 1].
        lam: Threshold multiplier, >= 0.

    Returns:
        The ``BlindTokens`` of this sample (tensors on ``attn``'s device).
    """
    image_attn = image_attention(attn, image_span)  # (n_layers, N)
    layers = select_layers_top_p(layer_shares(image_attn), gamma)  # (k,)
    scores = token_scores(image_attn, layers)  # (N,)
    blind = blind_token_mask(scores, lam)  # (N,)
    start, end = _check_span(image_span, attn.shape[-1])
    return BlindTokens(image_span=(start, end), layers=layers.tolist(), scores=scores,
                       blind=blind)


def noise_generator(seed: int) -> torch.Generator:
    """Returns a CPU ``torch.Generator`` seeded with ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"`seed` (={seed!r}) must be an int. Use e.g. seed=0.")
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    return generator


def mask_non_blind(image_embeds: torch.Tensor, blind: torch.Tensor, scheme: str,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Replaces the NON-blind image tokens, keeping the blind ones (AVC's biased input).

    Args:
        image_embeds: (N, D) image-token embeddings, any float dtype/device.
        blind: (N,) bool, True = blind (kept exactly).
        scheme: "zeros" -> 0, "ones" -> 1, "noise" -> standard normal.
        generator: CPU generator for "noise" (None: torch's global CPU generator). A full
            (N, D) float32 tensor is drawn on CPU and then cast/moved, so the same seed gives
            the same noise on any device and for any blind pattern.

    Returns:
        A NEW (N, D) tensor of ``image_embeds``' dtype and device; the input is unchanged.
    """
    if scheme not in MASKING_SCHEMES:
        # NOTE(avc): the official code silently falls back to "zeros"; we refuse.
        raise UserError(
            f"`scheme` (={scheme!r}) must be one of {MASKING_SCHEMES}. "
            "Use e.g. scheme='zeros' (the paper's default)."
        )
    _check_embeds_blind(image_embeds, blind)
    replace = ~blind.to(device=image_embeds.device, dtype=torch.bool)  # (N,)
    if scheme == "noise":
        noise = torch.randn(tuple(image_embeds.shape), generator=generator, dtype=torch.float32)
        fill = noise.to(device=image_embeds.device, dtype=image_embeds.dtype)  # (N, D)
    else:
        value = 0.0 if scheme == "zeros" else 1.0
        fill = torch.full_like(image_embeds, value)  # (N, D)
    return torch.where(replace[:, None], fill, image_embeds)


def _check_embeds_blind(image_embeds: torch.Tensor, blind: torch.Tensor) -> None:
    """Validates the shapes and dtypes of ``mask_non_blind``'s inputs."""
    if image_embeds.dim() != 2 or not image_embeds.is_floating_point():
        raise UserError(
            f"`image_embeds` must be a float (N, D) tensor, got shape "
            f"{tuple(image_embeds.shape)} dtype {image_embeds.dtype}. Pass one sample's "
            "image-token embeddings."
        )
    if blind.dtype != torch.bool or tuple(blind.shape) != (image_embeds.shape[0],):
        raise UserError(
            f"`blind` must be a bool (N,) tensor with N = {image_embeds.shape[0]}, got shape "
            f"{tuple(blind.shape)} dtype {blind.dtype}. Pass BlindTokens.blind."
        )
