"""The two-branch decode loop shared by every method: prefill, step, stop.

Per step both branches (original rows and biased rows, stacked in the batch) run as ONE forward
over 2B rows (`llava_avc.decode.state`); each method is one registry entry (`llava_avc.decode.methods`)
that says how its biased branch is prefilled and how the two branches' logits become one step's scores.
`sequential=True` keeps two separate caches and runs two forwards per token (the official AvisC code's
structure), for benchmarks only.

The loop is written against `ModelAdapter` and `GenerationFrontEnd` (llava_avc.decode.adapter) only: it
never imports a model library. A backend passes its adapter (model operations) and its front end (what
`generate`'s arguments mean, and the output they ask for) in.

References: arXiv 2405.17820 (AVC/AvisC); official code sangminwoo/AvisC
(`avisc_utils/avisc_sample.py`: one copied `sample()` with three methods interleaved), whose
structure this replaces.
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch

from ..errors import UserError
from ..algorithm.blind import BlindTokens
from ..algorithm.config import AVCConfig, MethodConfig
from ..algorithm.contrast import check_branches_finite
from ..algorithm.seeds import derived_seed
from .adapter import GenerationFrontEnd, GenerationSetup, ModelAdapter, stopping_rows
from .methods import get_method
from .prefill import PrefillRequest, avc_original_prefill, prefill_lean
from .state import BranchState


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


def _combiner(config: Optional[MethodConfig]):
    """(logits, biased_logits, step) -> the step's float32 scores: the method's combiner, or the logits."""
    if config is None:
        return lambda logits, biased_logits, step: logits
    combine = get_method(config.method).combine
    return lambda logits, biased_logits, step: combine(config, logits, biased_logits, step)


def _decode(adapter: ModelAdapter, state: BranchState, config: Optional[MethodConfig], setup: GenerationSetup):
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
    front_end: GenerationFrontEnd,
    input_ids: torch.Tensor,
    *,
    images=None,
    image_sizes=None,
    config: MethodConfig,
    sequential: bool = False,
    **generate_kwargs,
):
    """Generate with AVC, VCD or M3ID; the same output layout as the model's own `generate`.

    Args:
        adapter: the model, seen through its backend's ModelAdapter.
        front_end: the backend's reading of `generate_kwargs` and its output type.
        input_ids: (B, T) prompt ids with one image placeholder per row; left or right padded
            together with `attention_mask` (passed in `generate_kwargs`).
        images, image_sizes: the backend's image inputs (tensor, or list for anyres).
        config: the config of a registered method (AVCConfig, VCDConfig, M3IDConfig, ...).
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
        UserError: no image, several images per prompt, beams, unknown kwargs.
        NonFiniteLogitsError: NaN/inf in either branch's logits (never silently ignored).
    """
    return _generate(adapter, front_end, input_ids, images, image_sizes, config, sequential, generate_kwargs)


@torch.no_grad()
def lean_generate(adapter: ModelAdapter, front_end: GenerationFrontEnd, input_ids: torch.Tensor, *, images=None,
                  image_sizes=None, **generate_kwargs):
    """The package's own decode loop with one branch and no contrast (benchmark baseline).

    Same arguments and output as `contrastive_generate`, without a config.
    """
    return _generate(adapter, front_end, input_ids, images, image_sizes, None, False, generate_kwargs)


def _generate(adapter: ModelAdapter, front_end: GenerationFrontEnd, input_ids, images, image_sizes, config, sequential,
              generate_kwargs):
    name = f"{config.method}=" if config is not None else "lean decoding"
    if images is None and not adapter.image_in_prompt:
        raise UserError(f"{name} needs an image: pass it to generate (images= for original LLaVA, the processor's "
                        "pixel_values= for llava-hf).")
    row_seeds = _row_seeds(generate_kwargs.pop("row_seeds", None), input_ids.shape[0])
    setup = front_end.prepare(input_ids, generate_kwargs, name)  # checked there, once (check_generation_config)
    noise_seeds = None
    if row_seeds is not None:
        setup.sampling_seeds = [derived_seed(seed, "sample") for seed in row_seeds]
        noise_seed = getattr(config, "noise_seed", 0)
        noise_seeds = [derived_seed(seed, f"noise:{noise_seed}") for seed in row_seeds]
    request = PrefillRequest(input_ids, setup.attention_mask, images, image_sizes, sequential, noise_seeds)
    prefill = prefill_lean if config is None else get_method(config.method).prefill
    state, records = prefill(adapter, request, config)
    front_end.bind_prompt_length(setup, state.prompt_length)
    sequences, scores = _decode(adapter, state, config, setup)
    if not setup.return_dict:
        return sequences
    return front_end.make_output(sequences, scores if setup.output_scores else None,
                                 state.original_cache_rows(adapter), records)


def _row_seeds(row_seeds, batch_size: int) -> Optional[list]:
    """Validated per-row seeds (ints, one per row) or None."""
    if row_seeds is None:
        return None
    seeds = list(row_seeds)
    if len(seeds) != batch_size or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0
                                       for s in seeds):
        raise UserError(f"`row_seeds` (={seeds!r}) must be {batch_size} non-negative ints, one per prompt row; "
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
