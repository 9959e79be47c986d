"""An independent, slow reference of AVC greedy decoding for ONE prompt, written from the equations.

It imports nothing from llava_avc: the image span comes from the IMAGE_TOKEN_INDEX placeholder and
the merged length, the attention from LLaVA's full forward with ``output_attentions=True`` (eager,
full L x L maps, last row), and every step re-runs the full forward over the whole growing sequence
of both branches without a KV cache.

    1. a[l] = head-mean attention of the last prompt position on the N image keys, per layer l.
    2. p[l] = sum(a[l]) / sum_l' sum(a[l']); sorted descending, keep k = #(cumsum < gamma) + 1 layers.
    3. s = mean of a[l] over the kept layers.
    4. blind = s >= mean(s) + lam * std(s) (unbiased); all-equal scores: all blind.
    5. biased input = merged embeddings with the NON-blind image rows replaced (zeros / ones / noise).
    6. z = (1 + alpha) l - alpha l*, z = -inf where l < log(beta) + max(l), EOS = -inf, argmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
import transformers
from llava.constants import IMAGE_TOKEN_INDEX
from reference_equations import contrast, reference_blind_tokens


@dataclass
class ReferencePrefill:
    """The inputs of both branches before the first step."""

    embeds: torch.Tensor  # (1, L, D) merged input embeddings
    biased: torch.Tensor  # (1, L, D) with the non-blind image rows replaced
    span: tuple  # (start, end) of the image rows
    layers: List[int]  # kept layers, descending share
    scores: torch.Tensor  # (N,) float64 token scores
    blind: torch.Tensor  # (N,) bool


@dataclass
class ReferenceRun:
    tokens: List[int]
    blind: torch.Tensor  # (N,) bool
    layers: List[int]
    span: tuple
    logits: List[torch.Tensor] = field(default_factory=list)  # (V,) float32 original branch, per step
    biased_logits: List[torch.Tensor] = field(default_factory=list)  # (V,) float32 biased branch, per step
    scores: List[torch.Tensor] = field(default_factory=list)  # (V,) z after cutoff and EOS, per step


def _transformers_at_least(major: int, minor: int) -> bool:
    parts = transformers.__version__.split(".")
    return (int(parts[0]), int(parts[1])) >= (major, minor)


def full_forward(model, embeds: torch.Tensor, output_attentions: bool = False):
    """LLaVA's forward on merged embeddings, no cache; eager attention when attentions are wanted."""
    saved = model.config._attn_implementation
    if output_attentions and _transformers_at_least(4, 48):
        model.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            return model(inputs_embeds=embeds, use_cache=False, output_attentions=output_attentions,
                         return_dict=True)
    finally:
        model.config._attn_implementation = saved


def reference_prefill(model, input_ids, images, image_sizes, gamma: float = 0.5, lam: float = 1.0,
                      masking: str = "zeros", noise_seed: int = 0) -> ReferencePrefill:
    """Steps 1-5: merged embeddings, blind tokens and the biased embeddings of one prompt (batch 1)."""
    assert input_ids.shape[0] == 1, "the reference handles one prompt"
    with torch.no_grad():
        merged = model.prepare_inputs_labels_for_multimodal(input_ids, None, None, None, None, images, image_sizes)
    embeds = merged[4]  # (1, L, D)
    placeholders = (input_ids[0] == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    assert len(placeholders) == 1, placeholders
    start = placeholders[0]
    n = embeds.shape[1] - (input_ids.shape[1] - 1)
    end = start + n

    # 1-4. the blind tokens from the attention of the last prompt position (eager, full maps)
    attentions = full_forward(model, embeds, output_attentions=True).attentions  # L x (1, H, L, L)
    layers, scores, blind = reference_blind_tokens(attentions, (start, end), gamma, lam)
    # 5. biased input: non-blind image rows replaced
    if masking == "zeros":
        fill = torch.zeros(n, embeds.shape[2])
    elif masking == "ones":
        fill = torch.ones(n, embeds.shape[2])
    elif masking == "noise":
        generator = torch.Generator(device="cpu")
        generator.manual_seed(noise_seed)
        fill = torch.randn((n, embeds.shape[2]), generator=generator, dtype=torch.float32)
    else:
        raise ValueError(masking)
    biased = embeds.clone()
    for i in range(n):
        if not bool(blind[i]):
            biased[0, start + i] = fill[i].to(device=embeds.device, dtype=embeds.dtype)
    return ReferencePrefill(embeds, biased, (start, end), layers, scores, blind.cpu())


def reference_avc_greedy(model, input_ids, images, image_sizes, new_tokens: int, alpha: float = 2.5,
                         beta: float = 0.1, gamma: float = 0.5, lam: float = 1.0, masking: str = "zeros",
                         noise_seed: int = 0, eos_token_id: Optional[int] = None) -> ReferenceRun:
    """Greedy AVC for one prompt; `eos_token_id` is forbidden (-inf after the cutoff) when given."""
    prefill = reference_prefill(model, input_ids, images, image_sizes, gamma, lam, masking, noise_seed)
    original, biased = prefill.embeds, prefill.biased
    run = ReferenceRun([], prefill.blind, prefill.layers, prefill.span)
    embed_tokens = model.get_model().embed_tokens
    for _ in range(new_tokens):
        l = full_forward(model, original).logits[0, -1].float()
        lb = full_forward(model, biased).logits[0, -1].float()
        z = contrast(l, lb, alpha, beta)
        if eos_token_id is not None:
            z[eos_token_id] = -float("inf")
        token = int(torch.argmax(z))
        run.tokens.append(token)
        run.logits.append(l)
        run.biased_logits.append(lb)
        run.scores.append(z)
        with torch.no_grad():
            row = embed_tokens(torch.tensor([[token]], device=original.device)).to(original.dtype)  # (1, 1, D)
        original = torch.cat([original, row], dim=1)
        biased = torch.cat([biased, row], dim=1)
    return run
