"""An independent, slow reference of AVC greedy decoding for ONE prompt of a transformers image-text-to-text
model (LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL, InstructBLIP), written from the equations. It imports nothing from
llava_avc.

The model's own full forward does the image merge and the positions: a forward pre-hook on its language
model captures what the model feeds it (`inputs_embeds` with the image rows in place, `position_ids`, and
Qwen3-VL's DeepStack `visual_pos_masks` / `deepstack_visual_embeds`). Attention comes from the model's
forward with eager attention and `output_attentions=True` (full L x L maps, last row). Every step re-runs
the full forward over the whole growing sequence of both branches, without a KV cache:

    1-4. the blind tokens (tests/reference_equations.py, shared with the original-LLaVA reference).
    5. biased input = the language model's inputs of the same step with the NON-blind image rows of the
       prompt zeroed (embeddings, and DeepStack features where the model has them); positions the same.
    6. z = (1 + alpha) l - alpha l*, z = -inf where l < log(beta) + max(l), argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from reference_equations import contrast, reference_blind_tokens


@dataclass
class FamilyReferenceRun:
    tokens: list
    blind: torch.Tensor  # (N,) bool
    layers: list
    span: tuple


def _language_model(model):
    """The decoder (InstructBLIP: inside its causal language model)."""
    if type(model).__name__.startswith("InstructBlip"):
        return model.language_model.model
    return model.model.language_model


def _lm_head(model):
    if type(model).__name__.startswith("InstructBlip"):
        return model.language_model.lm_head
    return model.lm_head


def _forward_capturing(model, inputs: dict, output_attentions: bool = False) -> tuple:
    """(model output, the kwargs its language model was called with) of one full forward, no cache."""
    captured = {}

    def hook(module, args, kwargs):
        captured.update(kwargs)

    handle = _language_model(model).register_forward_pre_hook(hook, with_kwargs=True)
    saved = model.config._attn_implementation
    if output_attentions:
        model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            output = model(**inputs, use_cache=False, output_attentions=output_attentions, return_dict=True)
    finally:
        handle.remove()
        if output_attentions:
            model.set_attn_implementation(saved)
    return output, captured


def _biased_kwargs(kwargs: dict, span: tuple, blind: torch.Tensor) -> dict:
    """Step 5 on the language model's inputs of one step."""
    start, end = span
    biased = dict(kwargs)
    embeds = kwargs["inputs_embeds"].clone()
    embeds[0, start:end][~blind] = 0
    biased["inputs_embeds"] = embeds
    if kwargs.get("deepstack_visual_embeds") is not None:  # rows in the order of the image positions
        biased["deepstack_visual_embeds"] = [layer.clone() for layer in kwargs["deepstack_visual_embeds"]]
        for layer in biased["deepstack_visual_embeds"]:
            layer[~blind] = 0
    return biased


def _grown(inputs: dict, tokens: list) -> dict:
    """The processor's inputs with the generated tokens appended (ids, mask, and text token types)."""
    if not tokens:
        return dict(inputs)
    grown = dict(inputs)
    new = torch.tensor([tokens], dtype=inputs["input_ids"].dtype)
    grown["input_ids"] = torch.cat([inputs["input_ids"], new], dim=1)
    grown["attention_mask"] = torch.ones_like(grown["input_ids"])
    if "mm_token_type_ids" in inputs:
        grown["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(new).int()], dim=1)
    return grown


def reference_family_avc_greedy(model, inputs: dict, image_token_id: int, new_tokens: int, alpha: float = 2.5,
                                beta: float = 0.1, gamma: float = 0.5, lam: float = 1.0) -> FamilyReferenceRun:
    """Greedy AVC (zeros masking) for one prompt: `inputs` the processor's batch of one, unpadded."""
    ids = inputs["input_ids"][0]
    assert inputs["input_ids"].shape[0] == 1, "the reference handles one prompt"
    positions = (ids == image_token_id).nonzero().flatten()
    span = (int(positions[0]), int(positions[-1]) + 1)
    assert span[1] - span[0] == positions.numel(), "one contiguous image"
    output, _ = _forward_capturing(model, inputs, output_attentions=True)
    attentions = getattr(output, "language_model_outputs", output).attentions  # InstructBLIP: its language model's
    layers, _, blind = reference_blind_tokens(attentions, span, gamma, lam)
    tokens = []
    for _ in range(new_tokens):
        output, kwargs = _forward_capturing(model, _grown(inputs, tokens))
        logits = output.logits[0, -1]
        with torch.no_grad():
            hidden = _language_model(model)(**_biased_kwargs(kwargs, span, blind)).last_hidden_state
            biased_logits = _lm_head(model)(hidden[:, -1])[0]
        tokens.append(int(torch.argmax(contrast(logits, biased_logits, alpha, beta))))
    return FamilyReferenceRun(tokens, blind, layers, span)
