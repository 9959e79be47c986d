"""The two-branch decode loop shared by AVC, VCD and M3ID: prefill, step, stop.

Per step both branches (original rows and biased rows, stacked in the batch) run as ONE forward
over 2B rows; each branch's keys/values live in their own rows of the KV cache and never share
storage with the other branch. `sequential=True` keeps two separate caches and runs two forwards
per token (the official AvisC code's structure), for benchmarks only.

The loop is written against `ModelAdapter` (llava_avc.decode.adapter) only: it never imports a
model library. A backend passes its adapter in.

References: arXiv 2405.17820 (AVC/AvisC); official code sangminwoo/AvisC
(`avisc_utils/avisc_sample.py`: one copied `sample()` with three methods interleaved), whose
structure this replaces.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from ..algorithm.blind import BlindTokens, find_blind_tokens_from_attention, mask_non_blind, noise_generator
from ..algorithm.config import AVCConfig, M3IDConfig, VCDConfig
from ..algorithm.contrast import avc_logits, check_branches_finite, m3id_logits, vcd_logits
from ..algorithm.noise import add_diffusion_noise
from ..algorithm.seeds import derived_seed
from .adapter import GenerationSetup, ModelAdapter, left_pad_to, position_ids_from_mask, stopping_rows
from .sampling import check_generation_config

ContrastiveConfig = Union[AVCConfig, VCDConfig, M3IDConfig]


@dataclass
class _Stream:
    """One KV cache and the rows it serves. `copies` = branches stacked in it (2 batched, 1 sequential)."""

    cache: object
    attention_mask: torch.Tensor  # (copies * B, L) bool
    next_position: torch.Tensor  # (copies * B,) long
    copies: int

    def step(self, adapter: ModelAdapter, tokens: torch.Tensor) -> torch.Tensor:
        """Feed (B,) tokens to every branch in the stream; returns (copies * B, V) float32 logits."""
        tokens = tokens.repeat(self.copies).unsqueeze(1)  # (copies * B, 1)
        embeds = adapter.embed_tokens(tokens)  # (copies * B, 1, D)
        ones = self.attention_mask.new_ones(self.attention_mask.shape[0], 1)
        self.attention_mask = torch.cat([self.attention_mask, ones], 1)
        positions = self.next_position.unsqueeze(1)  # (copies * B, 1)
        self.next_position = self.next_position + 1
        logits, self.cache = adapter.forward_last_logits(embeds, self.attention_mask, positions, self.cache)
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
    def from_prefill(cls, adapter: ModelAdapter, embeds, attention_mask, sequential: bool) -> "BranchState":
        """Prefill both branches from (2B, L, D) stacked embeds (original rows first)."""
        batch_size = embeds.shape[0] // 2
        parts = [slice(0, batch_size), slice(batch_size, None)] if sequential else [slice(None)]
        streams, logits = [], []
        for rows in parts:
            mask = attention_mask[rows]
            part_logits, cache = adapter.forward_last_logits(
                embeds[rows], mask, position_ids_from_mask(mask), adapter.new_cache()
            )
            streams.append(_Stream(cache, mask, mask.long().sum(-1), copies=2 // len(parts)))
            logits.append(part_logits)
        return cls(streams, torch.cat(logits), batch_size)

    @classmethod
    def from_branches(cls, adapter: ModelAdapter, original, biased, attention_mask, sequential: bool) -> "BranchState":
        """Join two separately prefilled branches: (logits (B, V), cache) each, same (B, L) mask."""
        next_position = attention_mask.long().sum(-1)  # (B,)
        logits = torch.cat([original[0], biased[0]])
        if sequential:
            streams = [_Stream(cache, attention_mask, next_position, copies=1) for _, cache in (original, biased)]
        else:
            cache = adapter.stack_caches(original[1], biased[1])
            mask2 = torch.cat([attention_mask, attention_mask])
            streams = [_Stream(cache, mask2, next_position.repeat(2), copies=2)]
        return cls(streams, logits, attention_mask.shape[0])

    def step(self, adapter: ModelAdapter, tokens: torch.Tensor) -> None:
        """Feed the chosen (B,) tokens to both branches; refreshes `logits` and `biased_logits`."""
        per_stream = [stream.step(adapter, tokens) for stream in self.streams]
        logits = torch.cat(per_stream) if len(per_stream) > 1 else per_stream[0]
        self.logits, self.biased_logits = logits[: self.batch_size], logits[self.batch_size :]

    @property
    def prompt_length(self) -> int:
        """Positions of the original branch's (left-padded) merged prompt, as upstream's inputs_embeds."""
        return int(self.streams[0].attention_mask.shape[1])

    def original_cache_rows(self, adapter: ModelAdapter) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The original branch's keys/values per layer (copies)."""
        return adapter.cache_rows(self.streams[0].cache, slice(0, self.batch_size))


# ----------------------------------------------------------------------------------------------
# Prefill, one function per method


def avc_original_prefill(adapter: ModelAdapter, input_ids, attention_mask, images, image_sizes, config: AVCConfig):
    """Prefill the original branch with the last-query probe and find each row's blind tokens.

    Returns:
        (merged prompt, (logits (B, V), cache), [BlindTokens per row])
    """
    merged = adapter.merge_image(input_ids, attention_mask, images, image_sizes)
    with adapter.last_query_probe(merged.attention_mask) as probe:
        original = adapter.forward_last_logits(
            merged.embeds, merged.attention_mask, merged.position_ids, adapter.new_cache()
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


def _prefill_avc(adapter, input_ids, attention_mask, images, image_sizes, config, sequential, noise_seeds):
    merged, original, records = avc_original_prefill(adapter, input_ids, attention_mask, images, image_sizes, config)
    mask = merged.attention_mask
    biased = adapter.forward_last_logits(
        biased_embeds(merged.embeds, records, config, noise_seeds), mask, merged.position_ids, adapter.new_cache()
    )
    return BranchState.from_branches(adapter, original, biased, mask, sequential), records


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


def _prefill_vcd(adapter, input_ids, attention_mask, images, image_sizes, config: VCDConfig, sequential, noise_seeds):
    """The biased branch sees a diffusion-noised copy of the image; one merge for both branches."""
    noised = noised_images(images, config, noise_seeds)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    sizes = None if image_sizes is None else list(image_sizes) * 2
    merged = adapter.merge_image(
        input_ids.repeat(2, 1), attention_mask.repeat(2, 1), _stack_images(images, noised), sizes
    )
    return BranchState.from_prefill(adapter, merged.embeds, merged.attention_mask, sequential), None


def _prefill_m3id(adapter, input_ids, attention_mask, images, image_sizes, config: M3IDConfig, sequential,
                  noise_seeds):
    """The biased (unconditioned) branch sees the prompt without the image."""
    merged = adapter.merge_image(input_ids, attention_mask, images, image_sizes)
    text_embeds, text_mask = adapter.text_only_prompt(input_ids, attention_mask)
    length = max(merged.embeds.shape[1], text_embeds.shape[1])
    embeds, mask = left_pad_to(merged.embeds, merged.attention_mask, length)
    text_embeds, text_mask = left_pad_to(text_embeds, text_mask, length)
    stacked = torch.cat([embeds, text_embeds.to(embeds.dtype)]), torch.cat([mask, text_mask])
    return BranchState.from_prefill(adapter, *stacked, sequential), None


def _prefill_lean(adapter, input_ids, attention_mask, images, image_sizes, config, sequential, noise_seeds):
    """One branch, no contrast: the apples-to-apples baseline of the benchmarks."""
    merged = adapter.merge_image(input_ids, attention_mask, images, image_sizes)
    mask = merged.attention_mask
    logits, cache = adapter.forward_last_logits(merged.embeds, mask, merged.position_ids, adapter.new_cache())
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
    if setup.sampling_seeds is None:
        return torch.multinomial(probs, num_samples=1).squeeze(1), scores
    if setup.row_generators is None:
        setup.row_generators = [_generator(seed, probs.device) for seed in setup.sampling_seeds]
    # One generator per row: a row's draw does not depend on the other rows of the batch.
    tokens = [torch.multinomial(row, num_samples=1, generator=generator)
              for row, generator in zip(probs, setup.row_generators)]
    return torch.cat(tokens), scores


def _decode(adapter: ModelAdapter, state: BranchState, config: Optional[ContrastiveConfig], setup: GenerationSetup):
    """Generate until every row stopped. Returns (sequences (B, T), per-step scores)."""
    combine = _combiner(config)
    sequences = setup.initial_ids
    unfinished = torch.ones(state.batch_size, dtype=torch.bool, device=sequences.device)
    all_scores = []
    if setup.streamer is not None and not setup.prompt_streamed:
        setup.streamer.put(sequences.cpu())
    step = 0
    while True:
        biased_name = f"{config.method} biased" if config is not None else "biased"
        check_branches_finite([("original", state.logits), (biased_name, state.biased_logits)], step=step)
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
        state.step(adapter, tokens)
        step += 1
    if setup.streamer is not None:
        setup.streamer.end()
    return sequences, tuple(all_scores)


@torch.no_grad()
def contrastive_generate(
    adapter: ModelAdapter,
    input_ids: torch.Tensor,
    *,
    images=None,
    image_sizes=None,
    config: ContrastiveConfig,
    sequential: bool = False,
    **generate_kwargs,
):
    """Generate with AVC, VCD or M3ID; the same output layout as the model's own `generate`.

    Args:
        adapter: the model, seen through its backend's ModelAdapter.
        input_ids: (B, T) prompt ids with one image placeholder per row; left or right padded
            together with `attention_mask` (passed in `generate_kwargs`).
        images, image_sizes: the backend's image inputs (tensor, or list for anyres).
        config: AVCConfig, VCDConfig or M3IDConfig.
        sequential: two forwards per token with two caches (comparison mode for benchmarks).
        generate_kwargs: generation kwargs as the model's `generate` takes them (max_new_tokens,
            do_sample, temperature, top_k, top_p, repetition_penalty, eos_token_id,
            stopping_criteria, streamer, return_dict_in_generate, output_scores, attention_mask, ...),
            and `row_seeds`: one int per row (e.g. `llava_avc.algorithm.seeds.question_seed`); each
            row then draws its VCD / AVC noise and its sampled tokens from generators of its own, so
            a row's answer does not depend on the batch it is in. Without it: `config.noise_seed`
            and torch's global RNG.
    Returns:
        (B, T') LongTensor as the model's `generate` returns, or the backend's dict-style output
        (with `blind_tokens`) when `return_dict_in_generate=True`.
    Raises:
        ValueError: no image, several images per prompt, beams, unknown kwargs.
        NonFiniteLogitsError: NaN/inf in either branch's logits (never silently ignored).
    """
    return _generate(adapter, input_ids, images, image_sizes, config, sequential, generate_kwargs)


@torch.no_grad()
def lean_generate(adapter: ModelAdapter, input_ids: torch.Tensor, *, images=None, image_sizes=None,
                  **generate_kwargs):
    """The package's own decode loop with one branch and no contrast (benchmark baseline).

    Same arguments and output as `contrastive_generate`, without a config.
    """
    return _generate(adapter, input_ids, images, image_sizes, None, False, generate_kwargs)


def _generate(adapter: ModelAdapter, input_ids, images, image_sizes, config, sequential, generate_kwargs):
    name = f"{config.method}=" if config is not None else "lean decoding"
    if images is None:
        raise ValueError(f"{name} needs an image: pass it to generate (images= for original LLaVA, the processor's "
                         "pixel_values= for llava-hf).")
    row_seeds = _row_seeds(generate_kwargs.pop("row_seeds", None), input_ids.shape[0])
    setup = adapter.prepare_generation(input_ids, generate_kwargs, name)
    check_generation_config(setup.config)  # the same rules as the command line's, on every backend
    noise_seeds = None
    if row_seeds is not None:
        setup.sampling_seeds = [derived_seed(seed, "sample") for seed in row_seeds]
        noise_seed = getattr(config, "noise_seed", 0)
        noise_seeds = [derived_seed(seed, f"noise:{noise_seed}") for seed in row_seeds]
    method = config.method if config is not None else None
    state, records = _PREFILL[method](adapter, input_ids, setup.attention_mask, images, image_sizes, config, sequential,
                                      noise_seeds)
    adapter.bind_prompt_length(setup, state.prompt_length)
    sequences, scores = _decode(adapter, state, config, setup)
    if not setup.return_dict:
        return sequences
    return adapter.make_output(sequences, scores if setup.output_scores else None,
                               state.original_cache_rows(adapter), records)


def _row_seeds(row_seeds, batch_size: int) -> Optional[list]:
    """Validated per-row seeds (ints, one per row) or None."""
    if row_seeds is None:
        return None
    seeds = list(row_seeds)
    if len(seeds) != batch_size or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0
                                       for s in seeds):
        raise ValueError(f"`row_seeds` (={seeds!r}) must be {batch_size} non-negative ints, one per prompt row; "
                         "e.g. llava_avc.algorithm.seeds.question_seed(run_seed, question_id) for each row.")
    return [int(s) for s in seeds]


def _generator(seed: int, device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


@torch.no_grad()
def find_blind_tokens(adapter: ModelAdapter, input_ids, images, image_sizes=None,
                      config: Optional[AVCConfig] = None, attention_mask=None) -> list[BlindTokens]:
    """The blind tokens AVC would use for each row: the decoder's own code path (prefill + probe).

    Returns:
        One BlindTokens per row: `image_span` (start, end) in the merged, left-aligned sequence,
        `layers` (selected layer indices), `scores` (N floats) and `blind` (N booleans).
    """
    config = config or AVCConfig()
    _, _, records = avc_original_prefill(adapter, input_ids, attention_mask, images, image_sizes, config)
    return records
