"""Thin adapter over LLaVA's model internals used by the decode loop.

Everything the decoder needs from `LlavaLlamaForCausalLM` goes through these functions: the
multimodal merge (`prepare_inputs_labels_for_multimodal`), token embeddings, one forward of the
language model with a KV cache, and KV-cache surgery. The decoder itself (llava_avc.decode) never
touches LLaVA or transformers objects directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from transformers.cache_utils import DynamicCache

from llava.constants import IMAGE_TOKEN_INDEX


@dataclass
class MergedPrompt:
    """A batch of prompts after LLaVA's multimodal merge, LEFT-aligned for generation.

    Attributes:
        embeds: (B, L, D) merged input embeddings (text embeddings with the image features spliced in).
        attention_mask: (B, L) bool, True on real positions; padding is on the left.
        image_spans: per row, (start, end) of the image features in `embeds`, or None (no image).
    """

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    image_spans: list[Optional[tuple[int, int]]]

    @property
    def position_ids(self) -> torch.Tensor:
        """(B, L) positions as HF generation derives them: cumsum(mask) - 1, padding set to 1."""
        return position_ids_from_mask(self.attention_mask)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) mask -> (B, L) long positions, exactly as `LlamaForCausalLM.prepare_inputs_for_generation`."""
    position_ids = attention_mask.long().cumsum(-1) - 1
    return position_ids.masked_fill(attention_mask == 0, 1)


def image_token_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    """Indices of LLaVA's image placeholder (IMAGE_TOKEN_INDEX) among each row's REAL tokens."""
    positions = []
    for row_ids, row_mask in zip(input_ids, attention_mask.bool()):
        real_ids = row_ids[row_mask]  # (T_b,)
        positions.append(torch.nonzero(real_ids == IMAGE_TOKEN_INDEX).flatten().tolist())
    return positions


def embed_tokens(model, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) ids without image placeholders -> (B, T, D) input embeddings."""
    return model.get_model().embed_tokens(input_ids)


def merge_multimodal(model, input_ids, attention_mask, images, image_sizes) -> MergedPrompt:
    """Run LLaVA's own merge once and return the batch left-aligned with each row's image span.

    The span of row b is derived from that row alone: the image placeholder's index among the
    row's real tokens gives the start, and the merged length minus the row's text tokens gives the
    number of image features N_b (576 for LLaVA-1.5 at 336 px, variable for LLaVA-1.6 anyres).
    Whatever `config.tokenizer_padding_side` makes LLaVA's merge produce, the result is left-padded.

    Raises:
        ValueError: a row has no image placeholder or more than one, or LLaVA truncated the merged
            prompt to `tokenizer_model_max_length`.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    attention_mask = attention_mask.to(input_ids.device).bool()
    placeholders = image_token_positions(input_ids, attention_mask)
    for row, found in enumerate(placeholders):
        if len(found) != 1:
            raise ValueError(
                f"row {row} of input_ids holds {len(found)} image placeholders ({IMAGE_TOKEN_INDEX}); "
                "contrastive decoding needs exactly one image per prompt. Build the prompt with one "
                "'<image>' and llava.mm_utils.tokenizer_image_token."
            )
    if input_ids.shape[1] == 1:
        raise ValueError("input_ids holds only the image placeholder; add the question text.")
    _, _, merged_mask, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
        input_ids, None, attention_mask, None, None, images, image_sizes
    )
    merged_mask = merged_mask.bool()  # (B, L)
    _check_not_truncated(model, merged_mask)
    text_lengths = attention_mask.sum(-1) - 1  # real tokens minus the placeholder, (B,)
    merged_lengths = merged_mask.sum(-1)  # (B,)
    embeds, merged_mask = left_align(embeds, merged_mask)
    total = merged_mask.shape[1]
    spans = []
    for row in range(len(placeholders)):
        pad = total - int(merged_lengths[row])
        start = pad + placeholders[row][0]
        num_image = int(merged_lengths[row] - text_lengths[row])
        spans.append((start, start + num_image))
    return MergedPrompt(embeds, merged_mask, spans)


def _check_not_truncated(model, merged_mask: torch.Tensor) -> None:
    limit = getattr(model.config, "tokenizer_model_max_length", None)
    if limit is not None and int(merged_mask.sum(-1).max()) >= limit:
        raise ValueError(
            f"the merged prompt reaches tokenizer_model_max_length (={limit}), so LLaVA truncated it "
            "and the image span cannot be trusted; shorten the question."
        )


def left_align(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real positions (mask True, order kept) to the right end of the row.

    Args:
        embeds: (B, L, D); mask: (B, L) bool.
    Returns:
        (embeds, mask) of the same shapes, padding (zeros, False) on the left.
    """
    if _is_suffix(mask):
        return embeds, mask  # already left-aligned (LLaVA's merge with padding side "left")
    lengths = mask.sum(-1)  # (B,)
    out = embeds.new_zeros(embeds.shape)
    out_mask = torch.zeros_like(mask)
    total = mask.shape[1]
    for row in range(mask.shape[0]):
        n = int(lengths[row])
        out[row, total - n:] = embeds[row][mask[row]]
        out_mask[row, total - n:] = True
    return out, out_mask


def _is_suffix(mask: torch.Tensor) -> bool:
    """True when every row's True entries form one block ending at the last column."""
    lengths = mask.sum(-1, keepdim=True)
    columns = torch.arange(mask.shape[1], device=mask.device)
    return bool((mask == (columns >= mask.shape[1] - lengths)).all())


def left_pad_to(embeds: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad (B, L, D) embeds and (B, L) mask to `length` positions."""
    extra = length - embeds.shape[1]
    if extra <= 0:
        return embeds, mask
    pad_embeds = embeds.new_zeros(embeds.shape[0], extra, embeds.shape[2])
    pad_mask = mask.new_zeros(mask.shape[0], extra)
    return torch.cat([pad_embeds, embeds], 1), torch.cat([pad_mask, mask], 1)


def text_only_prompt(model, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of the prompt with the image placeholder removed (M3ID's unconditioned branch).

    Returns:
        (embeds (B, L', D), mask (B, L') bool), left-aligned.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    keep = attention_mask.bool() & (input_ids != IMAGE_TOKEN_INDEX)  # (B, T)
    safe_ids = input_ids.masked_fill(~keep, 0)
    embeds = embed_tokens(model, safe_ids)  # (B, T, D)
    return left_align(embeds, keep)


def new_cache() -> DynamicCache:
    """An empty KV cache object for one branch (or for stacked branches)."""
    return DynamicCache()


@torch.no_grad()
def forward_last_logits(model, embeds, attention_mask, position_ids, cache):
    """One language-model forward that returns only the last position's logits.

    Args:
        embeds: (B, S, D) new input embeddings (S = prompt length at prefill, 1 when decoding).
        attention_mask: (B, L_total) bool/long over cached + new positions.
        position_ids: (B, S) long.
        cache: a DynamicCache (mutated in place and returned).
    Returns:
        (logits (B, V) float32, cache)
    """
    outputs = model.get_model()(
        inputs_embeds=embeds,
        attention_mask=attention_mask.long(),
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        return_dict=True,
    )
    hidden_last = outputs.last_hidden_state[:, -1, :]  # (B, D)
    logits = model.lm_head(hidden_last).float()  # (B, V); float32 as LlamaForCausalLM returns
    return logits, outputs.past_key_values


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(keys (B, H_kv, L, D), values (B, H_kv, L, D)) per layer] of a DynamicCache.

    transformers <= 4.55 keeps `key_cache` / `value_cache` lists; 4.56+ keeps `layers` objects.
    """
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def layer_keys(cache, layer_idx: int) -> torch.Tensor:
    """(B, H_kv, L, D) RoPE-rotated keys cached for one layer."""
    if hasattr(cache, "layers"):
        return cache.layers[layer_idx].keys
    return cache.key_cache[layer_idx]


def stack_caches(first, second) -> DynamicCache:
    """A NEW cache whose rows are `first`'s rows then `second`'s rows (batch concatenation).

    Both caches must cover the same number of positions. The inputs are CONSUMED: each layer of
    theirs is released as soon as it is copied, so the peak memory of the join stays near one
    stacked cache instead of two (the prompt cache of LLaVA-1.5-7B is ~0.3 GiB per branch in fp16).
    """
    stacked = DynamicCache()
    layers = len(cache_layers(first))
    for layer in range(layers):
        (k1, v1), (k2, v2) = cache_layers(first)[layer], cache_layers(second)[layer]
        stacked.update(torch.cat([k1, k2], 0), torch.cat([v1, v2], 0), layer)
        del k1, v1, k2, v2
        _release_layer(first, layer)
        _release_layer(second, layer)
    return stacked


def _release_layer(cache, layer: int) -> None:
    """Drop one layer's tensors from a cache that is no longer used (see stack_caches)."""
    empty = torch.empty(0)
    if hasattr(cache, "layers"):
        cache.layers[layer].keys = cache.layers[layer].values = empty
    else:
        cache.key_cache[layer] = cache.value_cache[layer] = empty


def cache_rows(cache, rows: Sequence[int] | slice) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The keys/values of some batch rows of a cache (copies), e.g. the original branch's rows."""
    return [(k[rows].clone(), v[rows].clone()) for k, v in cache_layers(cache)]
