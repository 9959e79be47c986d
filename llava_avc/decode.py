"""The two-branch decode loop shared by AVC, VCD and M3ID: prefill, step, stop.

Per step both branches (original rows and biased rows, stacked in the batch) run as ONE forward
over 2B rows; each branch's keys/values live in their own rows of the KV cache and never share
storage with the other branch. `sequential=True` keeps two separate caches and runs two forwards
per token (the official AvisC code's structure), for benchmarks only.

References: arXiv 2405.17820 (AVC/AvisC); official code sangminwoo/AvisC
(`avisc_utils/avisc_sample.py`), whose structure this replaces (see STYLE.md section 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .blind import BlindTokens, find_blind_tokens_from_attention, mask_non_blind, noise_generator
from .config import AVCConfig, M3IDConfig, VCDConfig
from .contrast import avc_logits, check_finite, m3id_logits, vcd_logits
from .noise import add_diffusion_noise
from .patches import lm
from .patches.generation import GenerationSetup, bind_prompt_length, prepare_generation, stopping_rows
from .patches.probe import last_query_probe

ContrastiveConfig = Union[AVCConfig, VCDConfig, M3IDConfig]


@dataclass
class ContrastiveGenerateOutput(GenerateDecoderOnlyOutput):
    """`GenerateDecoderOnlyOutput` plus what the contrastive method used.

    `scores` are the final per-step scores that were sampled from (after the contrast, the
    plausibility cutoff, the logits processors and, when sampling, the warpers);
    `past_key_values` holds the ORIGINAL branch's cache only; `blind_tokens` (AVC only) has one
    record per row.
    """

    blind_tokens: Optional[list] = None


@dataclass
class _Stream:
    """One KV cache and the rows it serves. `copies` = branches stacked in it (2 batched, 1 sequential)."""

    cache: object
    attention_mask: torch.Tensor  # (copies * B, L) bool
    next_position: torch.Tensor  # (copies * B,) long
    copies: int

    def step(self, model, tokens: torch.Tensor) -> torch.Tensor:
        """Feed (B,) tokens to every branch in the stream; returns (copies * B, V) float32 logits."""
        tokens = tokens.repeat(self.copies).unsqueeze(1)  # (copies * B, 1)
        embeds = lm.embed_tokens(model, tokens)  # (copies * B, 1, D)
        ones = self.attention_mask.new_ones(self.attention_mask.shape[0], 1)
        self.attention_mask = torch.cat([self.attention_mask, ones], 1)
        positions = self.next_position.unsqueeze(1)  # (copies * B, 1)
        self.next_position = self.next_position + 1
        logits, self.cache = lm.forward_last_logits(model, embeds, self.attention_mask, positions, self.cache)
        return logits


class BranchState:
    """The decoding state of the original branch and (if any) the biased branch.

    Rows: the original branch's B rows first, then the biased branch's B rows (none in lean mode).
    """

    def __init__(self, streams: list[_Stream], logits: torch.Tensor, batch_size: int):
        self.streams = streams
        self.batch_size = batch_size
        self.logits, self.biased_logits = logits[:batch_size], logits[batch_size:]  # (B, V) each

    @classmethod
    def from_prefill(cls, model, embeds, attention_mask, sequential: bool) -> "BranchState":
        """Prefill both branches from (2B, L, D) stacked embeds (original rows first)."""
        batch_size = embeds.shape[0] // 2
        parts = [slice(0, batch_size), slice(batch_size, None)] if sequential else [slice(None)]
        streams, logits = [], []
        for rows in parts:
            mask = attention_mask[rows]
            part_logits, cache = lm.forward_last_logits(
                model, embeds[rows], mask, lm.position_ids_from_mask(mask), lm.new_cache()
            )
            streams.append(_Stream(cache, mask, mask.long().sum(-1), copies=2 // len(parts)))
            logits.append(part_logits)
        return cls(streams, torch.cat(logits), batch_size)

    @classmethod
    def from_branches(cls, original, biased, attention_mask, sequential: bool) -> "BranchState":
        """Join two separately prefilled branches: (logits (B, V), cache) each, same (B, L) mask."""
        next_position = attention_mask.long().sum(-1)  # (B,)
        logits = torch.cat([original[0], biased[0]])
        if sequential:
            streams = [_Stream(cache, attention_mask, next_position, copies=1) for _, cache in (original, biased)]
        else:
            cache = lm.stack_caches(original[1], biased[1])
            mask2 = torch.cat([attention_mask, attention_mask])
            streams = [_Stream(cache, mask2, next_position.repeat(2), copies=2)]
        return cls(streams, logits, attention_mask.shape[0])

    def step(self, model, tokens: torch.Tensor) -> None:
        """Feed the chosen (B,) tokens to both branches; refreshes `logits` and `biased_logits`."""
        per_stream = [stream.step(model, tokens) for stream in self.streams]
        logits = torch.cat(per_stream) if len(per_stream) > 1 else per_stream[0]
        self.logits, self.biased_logits = logits[: self.batch_size], logits[self.batch_size :]

    @property
    def prompt_length(self) -> int:
        """Positions of the original branch's (left-padded) merged prompt, as upstream's inputs_embeds."""
        return int(self.streams[0].attention_mask.shape[1])

    def original_cache_rows(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The original branch's keys/values per layer (copies)."""
        return lm.cache_rows(self.streams[0].cache, slice(0, self.batch_size))


# ----------------------------------------------------------------------------------------------
# Prefill, one function per method


def avc_original_prefill(model, input_ids, attention_mask, images, image_sizes, config: AVCConfig):
    """Prefill the original branch with the last-query probe and find each row's blind tokens.

    Returns:
        (merged prompt, (logits (B, V), cache), [BlindTokens per row])
    """
    merged = lm.merge_multimodal(model, input_ids, attention_mask, images, image_sizes)
    with last_query_probe(model, merged.attention_mask) as probe:
        original = lm.forward_last_logits(
            model, merged.embeds, merged.attention_mask, merged.position_ids, lm.new_cache()
        )
    attentions = torch.stack(probe.attentions, dim=1)  # (B, n_layers, H, L)
    records = [
        find_blind_tokens_from_attention(attentions[row], merged.image_spans[row], config.gamma, config.lam)
        for row in range(attentions.shape[0])
    ]
    return merged, original, records


def biased_embeds(embeds: torch.Tensor, records: list[BlindTokens], config: AVCConfig) -> torch.Tensor:
    """(B, L, D) merged embeds -> a copy whose NON-blind image rows are replaced per `config.masking`.

    Blind tokens keep their embeddings; nothing is removed and the attention mask is unchanged.
    """
    out = embeds.clone()
    for row, record in enumerate(records):
        start, end = record.image_span
        # A fresh generator per row: a row's noise does not depend on its position in the batch.
        generator = noise_generator(config.noise_seed)
        out[row, start:end] = mask_non_blind(embeds[row, start:end], record.blind, config.masking, generator)
    return out


def _prefill_avc(model, input_ids, attention_mask, images, image_sizes, config, sequential):
    merged, original, records = avc_original_prefill(model, input_ids, attention_mask, images, image_sizes, config)
    mask = merged.attention_mask
    biased = lm.forward_last_logits(
        model, biased_embeds(merged.embeds, records, config), mask, merged.position_ids, lm.new_cache()
    )
    return BranchState.from_branches(original, biased, mask, sequential), records


def noised_images(images, config: VCDConfig):
    """VCD's diffusion-noised copy of each image, each drawn from a fresh generator seeded with
    `config.noise_seed`, so a row's noise does not depend on its position in the batch."""
    noised = [add_diffusion_noise(image, config.noise_step, noise_generator(config.noise_seed)) for image in images]
    return noised if isinstance(images, list) else torch.stack(noised)


def _stack_images(images, noised):
    if isinstance(images, list):
        return list(images) + list(noised)
    return torch.cat([images, noised], 0)


def _prefill_vcd(model, input_ids, attention_mask, images, image_sizes, config: VCDConfig, sequential):
    """The biased branch sees a diffusion-noised copy of the image; one merge for both branches."""
    noised = noised_images(images, config)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    sizes = None if image_sizes is None else list(image_sizes) * 2
    merged = lm.merge_multimodal(
        model, input_ids.repeat(2, 1), attention_mask.repeat(2, 1), _stack_images(images, noised), sizes
    )
    return BranchState.from_prefill(model, merged.embeds, merged.attention_mask, sequential), None


def _prefill_m3id(model, input_ids, attention_mask, images, image_sizes, config: M3IDConfig, sequential):
    """The biased (unconditioned) branch sees the prompt without the image."""
    merged = lm.merge_multimodal(model, input_ids, attention_mask, images, image_sizes)
    text_embeds, text_mask = lm.text_only_prompt(model, input_ids, attention_mask)
    length = max(merged.embeds.shape[1], text_embeds.shape[1])
    embeds, mask = lm.left_pad_to(merged.embeds, merged.attention_mask, length)
    text_embeds, text_mask = lm.left_pad_to(text_embeds, text_mask, length)
    stacked = torch.cat([embeds, text_embeds.to(embeds.dtype)]), torch.cat([mask, text_mask])
    return BranchState.from_prefill(model, *stacked, sequential), None


def _prefill_lean(model, input_ids, attention_mask, images, image_sizes, config, sequential):
    """One branch, no contrast: the apples-to-apples baseline of the benchmarks."""
    merged = lm.merge_multimodal(model, input_ids, attention_mask, images, image_sizes)
    mask = merged.attention_mask
    logits, cache = lm.forward_last_logits(model, merged.embeds, mask, merged.position_ids, lm.new_cache())
    stream = _Stream(cache, mask, mask.long().sum(-1), copies=1)
    return BranchState([stream], logits, mask.shape[0]), None


_PREFILL = {"avc": _prefill_avc, "vcd": _prefill_vcd, "m3id": _prefill_m3id, None: _prefill_lean}


def _combiner(config: Optional[ContrastiveConfig]) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
    """(logits, biased_logits, step) -> contrasted float32 logits, for the configured method."""
    if config is None:
        return lambda l, lb, step: l
    if config.method == "avc":
        return lambda l, lb, step: avc_logits(l, lb, config.alpha, config.beta)
    if config.method == "vcd":
        return lambda l, lb, step: vcd_logits(l, lb, config.alpha, config.beta)
    # M3ID's schedule counts generated tokens from t = 1 (official code).
    return lambda l, lb, step: m3id_logits(l, lb, step + 1, config.lam, config.beta)


# ----------------------------------------------------------------------------------------------
# The loop


def _choose(scores: torch.Tensor, sequences: torch.Tensor, setup: GenerationSetup) -> tuple[torch.Tensor, torch.Tensor]:
    """Processors, then (sampling) warpers and a multinomial draw, else argmax. Returns (tokens (B,), scores)."""
    scores = setup.logits_processor(sequences, scores)
    if not setup.do_sample:
        return scores.argmax(-1), scores
    if setup.logits_warper is not None:
        scores = setup.logits_warper(sequences, scores)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1).squeeze(1), scores


def _decode(model, state: BranchState, config: Optional[ContrastiveConfig], setup: GenerationSetup):
    """Generate until every row stopped. Returns (sequences (B, T), per-step scores)."""
    combine = _combiner(config)
    sequences = setup.initial_ids
    unfinished = torch.ones(state.batch_size, dtype=torch.bool, device=sequences.device)
    all_scores = []
    if setup.streamer is not None:
        setup.streamer.put(sequences.cpu())
    step = 0
    while True:
        if config is not None:
            check_finite(state.biased_logits, step=step, branch=f"{config.method} biased")
        scores = combine(state.logits, state.biased_logits, step)  # (B, V) float32
        tokens, scores = _choose(scores, sequences, setup)
        if setup.output_scores:
            all_scores.append(scores)
        if setup.eos_token_ids is not None:
            tokens = torch.where(unfinished, tokens, torch.full_like(tokens, setup.pad_token_id))
        sequences = torch.cat([sequences, tokens[:, None]], dim=-1)
        if setup.streamer is not None:
            setup.streamer.put(tokens.cpu())
        if setup.eos_token_ids is not None:
            unfinished &= ~torch.isin(tokens, setup.eos_token_ids)
        unfinished &= ~stopping_rows(setup.stopping_criteria, sequences, scores)
        if not bool(unfinished.any()):
            break
        state.step(model, tokens)
        step += 1
    if setup.streamer is not None:
        setup.streamer.end()
    return sequences, tuple(all_scores)


@torch.no_grad()
def contrastive_generate(
    model,
    input_ids: torch.Tensor,
    *,
    images=None,
    image_sizes=None,
    config: ContrastiveConfig,
    sequential: bool = False,
    **generate_kwargs,
):
    """Generate with AVC, VCD or M3ID; the same output layout as upstream LLaVA `generate`.

    Args:
        model: a LlavaLlamaForCausalLM (fp32/fp16/bf16 or bitsandbytes-quantized).
        input_ids: (B, T) prompt ids with one IMAGE_TOKEN_INDEX placeholder per row; left or
            right padded together with `attention_mask` (passed in `generate_kwargs`).
        images, image_sizes: as for upstream LLaVA generate (tensor or list for anyres).
        config: AVCConfig, VCDConfig or M3IDConfig.
        sequential: two forwards per token with two caches (comparison mode for benchmarks).
        generate_kwargs: Hugging Face generation kwargs (max_new_tokens, do_sample, temperature,
            top_k, top_p, repetition_penalty, eos_token_id, stopping_criteria, streamer,
            return_dict_in_generate, output_scores, attention_mask, ...).
    Returns:
        (B, T') LongTensor like upstream (transformers 4.37: a leading BOS column, then the new
        tokens), or a ContrastiveGenerateOutput when `return_dict_in_generate=True`.
    Raises:
        ValueError: no image, several images per prompt, beams, unknown kwargs.
        NonFiniteLogitsError: NaN/inf in the biased branch's logits (never silently ignored).
    """
    return _generate(model, input_ids, images, image_sizes, config, sequential, generate_kwargs)


@torch.no_grad()
def lean_generate(model, input_ids: torch.Tensor, *, images=None, image_sizes=None, **generate_kwargs):
    """The package's own decode loop with one branch and no contrast (benchmark baseline).

    Same arguments and output as `contrastive_generate`, without a config.
    """
    return _generate(model, input_ids, images, image_sizes, None, False, generate_kwargs)


def _generate(model, input_ids, images, image_sizes, config, sequential, generate_kwargs):
    name = f"{config.method}=" if config is not None else "lean decoding"
    if images is None:
        raise ValueError(f"{name} needs an image: pass images= (and image_sizes=) to generate.")
    setup = prepare_generation(model, input_ids.shape[0], input_ids.device, generate_kwargs, name)
    method = config.method if config is not None else None
    state, records = _PREFILL[method](model, input_ids, setup.attention_mask, images, image_sizes, config, sequential)
    bind_prompt_length(model, setup, state.prompt_length)
    sequences, scores = _decode(model, state, config, setup)
    if not setup.return_dict:
        return sequences
    return ContrastiveGenerateOutput(
        sequences=sequences,
        scores=scores if setup.output_scores else None,
        past_key_values=tuple(state.original_cache_rows()),
        blind_tokens=records,
    )


@torch.no_grad()
def find_blind_tokens(model, input_ids, images, image_sizes=None, config: Optional[AVCConfig] = None,
                      attention_mask=None) -> list[BlindTokens]:
    """The blind tokens AVC would use for each row: the decoder's own code path (prefill + probe).

    Returns:
        One BlindTokens per row: `image_span` (start, end) in the merged, left-aligned sequence,
        `layers` (selected layer indices), `scores` (N floats) and `blind` (N booleans).
    """
    config = config or AVCConfig()
    _, _, records = avc_original_prefill(model, input_ids, attention_mask, images, image_sizes, config)
    return records
