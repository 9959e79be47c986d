"""The prefill of each decoding method: the original branch and the method's biased branch, from the
prompt and its images, as a `BranchState` the loop decodes from.

A prefill is `prefill(adapter, request, config) -> (BranchState, records or None)`: `request` is a
`PrefillRequest` (prompt ids and mask, images, how the branches are laid out, per-row noise seeds),
`records` what the method wants reported (AVC: the blind tokens of each row). The helpers here
(`BranchState.from_prefill` for stacked embeds, `text_only_branch`, `noised_images`, `biased_embeds`)
are what a new method's prefill is made of (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from ..algorithm.blind import BlindTokens, find_blind_tokens_from_attention, mask_non_blind, noise_generator
from ..algorithm.config import AVCConfig, M3IDConfig, VCDConfig
from ..algorithm.noise import add_diffusion_noise
from .adapter import ModelAdapter, left_pad_to, position_ids_from_mask, positions_like
from .state import BranchState


@dataclass(frozen=True)
class PrefillRequest:
    """What a method's prefill starts from.

    Attributes:
        input_ids: (B, T) prompt ids with one image placeholder per row.
        attention_mask: (B, T) or None (all real).
        images, image_sizes: the backend's image inputs.
        sequential: two caches and two forwards per token instead of one stacked forward.
        noise_seeds: one seed per row for the method's random draws, or None (the config's own seed).
    """

    input_ids: torch.Tensor
    attention_mask: Optional[torch.Tensor]
    images: Any
    image_sizes: Any
    sequential: bool = False
    noise_seeds: Optional[Sequence[int]] = None




def avc_original_prefill(adapter: ModelAdapter, input_ids, attention_mask, images, image_sizes, config: AVCConfig):
    """Prefill the original branch with the last-query probe and find each row's blind tokens.

    Returns:
        (merged prompt, (logits (B, V), cache), [BlindTokens per row])
    """
    merged = adapter.merge_image(input_ids, attention_mask, images, image_sizes)
    with adapter.last_query_probe(merged.attention_mask) as probe:
        original = adapter.forward_last_logits(
            merged.embeds, merged.attention_mask, merged.position_ids, adapter.new_cache(), merged.deepstack
        )
    attentions = torch.stack(probe.attentions, dim=1)  # (B, n_layers, H, L)
    records = [
        find_blind_tokens_from_attention(attentions[row], merged.image_spans[row], config.gamma, config.lam)
        for row in range(attentions.shape[0])
    ]
    return merged, original, records


def biased_embeds(embeds: torch.Tensor, records: list[BlindTokens], config: AVCConfig,
                  noise_seeds: Optional[Sequence[int]] = None) -> torch.Tensor:
    """(B, L, D) merged embeds -> a copy whose NON-blind image rows are replaced per `config.masking`.

    Blind tokens keep their embeddings; nothing is removed and the attention mask is unchanged.
    `noise_seeds` (one per row; default `config.noise_seed` for every row) seed the `noise` masking.
    """
    seeds = noise_seeds if noise_seeds is not None else [config.noise_seed] * len(records)
    out = embeds.clone()
    for row, record in enumerate(records):
        start, end = record.image_span
        # A fresh generator per row: a row's noise does not depend on its position in the batch.
        generator = noise_generator(seeds[row])
        out[row, start:end] = mask_non_blind(embeds[row, start:end], record.blind, config.masking, generator)
    return out


def blind_deepstack(deepstack: Optional[torch.Tensor], records: list[BlindTokens]) -> Optional[torch.Tensor]:
    """(B, L, K, D) DeepStack features -> a copy keeping only the blind image rows' (the others zero: the
    biased branch adds nothing of a non-blind token in any layer, whatever the embeddings' masking)."""
    if deepstack is None:
        return None
    out = deepstack.clone()
    for row, record in enumerate(records):
        start, end = record.image_span
        out[row, start:end][~record.blind.to(out.device)] = 0
    return out


def prefill_avc(adapter: ModelAdapter, request: PrefillRequest, config: AVCConfig):
    """The original branch with the probe (blind tokens), then the biased branch on its masked copy."""
    merged, original, records = avc_original_prefill(adapter, request.input_ids, request.attention_mask,
                                                     request.images, request.image_sizes, config)
    mask = merged.attention_mask
    biased = adapter.forward_last_logits(
        biased_embeds(merged.embeds, records, config, request.noise_seeds), mask, merged.position_ids, adapter.new_cache(),
        blind_deepstack(merged.deepstack, records),
    )
    state = BranchState.from_branches(adapter, original, biased, mask, request.sequential, merged.next_position)
    return state, records


def noised_images(images, config: VCDConfig, noise_seeds: Optional[Sequence[int]] = None):
    """VCD's diffusion-noised copy of each image, each drawn from a fresh generator seeded with its
    row's seed (default `config.noise_seed`), so a row's noise does not depend on its batch position."""
    seeds = noise_seeds if noise_seeds is not None else [config.noise_seed] * len(images)
    noised = [add_diffusion_noise(image, config.noise_step, noise_generator(seed)) for image, seed in zip(images, seeds)]
    return noised if isinstance(images, list) else torch.stack(noised)


def _stack_images(images, noised):
    if isinstance(images, list):
        return list(images) + list(noised)
    return torch.cat([images, noised], 0)


def prefill_vcd(adapter: ModelAdapter, request: PrefillRequest, config: VCDConfig):
    """The biased branch sees a diffusion-noised copy of the image; one merge for both branches."""
    noised = noised_images(request.images, config, request.noise_seeds)
    attention_mask = request.attention_mask
    if attention_mask is None:
        attention_mask = torch.ones_like(request.input_ids, dtype=torch.bool)
    sizes = None if request.image_sizes is None else list(request.image_sizes) * 2
    merged = adapter.merge_image(request.input_ids.repeat(2, 1), attention_mask.repeat(2, 1),
                                 _stack_images(request.images, noised), sizes)
    state = BranchState.from_prefill(adapter, merged.embeds, merged.attention_mask, request.sequential,
                                     merged.position_ids, merged.next_position, merged.deepstack)
    return state, None


def text_only_branch(adapter: ModelAdapter, request: PrefillRequest) -> BranchState:
    """The original branch and, as the biased one, the prompt WITHOUT its image (left-padded to one length).
    Each branch keeps its own positions: the model's for the merged prompt, the usual ones without image."""
    merged = adapter.merge_image(request.input_ids, request.attention_mask, request.images, request.image_sizes)
    text_embeds, text_mask = adapter.text_only_prompt(request.input_ids, request.attention_mask)
    length = max(merged.embeds.shape[1], text_embeds.shape[1])
    embeds, mask = left_pad_to(merged.embeds, merged.attention_mask, length)
    positions, _ = left_pad_to(merged.position_ids, merged.attention_mask, length)
    text_embeds, text_mask = left_pad_to(text_embeds, text_mask, length)
    text_positions = positions_like(position_ids_from_mask(text_mask), positions)
    deepstack = None
    if merged.deepstack is not None:  # the image-free rows add nothing
        deepstack, _ = left_pad_to(merged.deepstack, merged.attention_mask, length)
        deepstack = torch.cat([deepstack, torch.zeros_like(deepstack)])
    return BranchState.from_prefill(adapter, torch.cat([embeds, text_embeds.to(embeds.dtype)]),
                                    torch.cat([mask, text_mask]), request.sequential,
                                    torch.cat([positions, text_positions]),
                                    torch.cat([merged.next_position, text_mask.long().sum(-1)]), deepstack)


def prefill_m3id(adapter: ModelAdapter, request: PrefillRequest, config: M3IDConfig):
    """The biased (unconditioned) branch sees the prompt without the image."""
    return text_only_branch(adapter, request), None


def prefill_lean(adapter: ModelAdapter, request: PrefillRequest, config=None):
    """One branch, no contrast: the apples-to-apples baseline of the benchmarks."""
    merged = adapter.merge_image(request.input_ids, request.attention_mask, request.images, request.image_sizes)
    mask = merged.attention_mask
    logits, cache = adapter.forward_last_logits(merged.embeds, mask, merged.position_ids, adapter.new_cache(),
                                                merged.deepstack)
    return BranchState.single(logits, cache, mask, merged.next_position), None
