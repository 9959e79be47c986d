"""Reuse of Hugging Face's generation front end (config, logits processors, warpers, stopping).

The contrastive decode loop owns the forward passes, but everything a user passes to
`model.generate(...)` (max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty,
eos_token_id, stopping_criteria, logits_processor, streamer, ...) is interpreted by transformers'
own code here, so behaviour matches upstream LLaVA generate.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from transformers.generation import LogitsProcessorList, StoppingCriteriaList

from ...errors import UserError
from ...decode.adapter import GenerationSetup
from ...decode.sampling import check_generation_config
from ..base import ContrastiveGenerateOutput, check_one_sequence_per_prompt, contrastive_output
from .. import transformers_compat
from ..transformers_compat import generate_returns_leading_bos

#: model kwargs that upstream LLaVA / HF generate accept and the contrastive loop handles itself.
_ACCEPTED_MODEL_KWARGS = {"attention_mask", "use_cache", "position_ids"}


class LlavaFrontEnd:
    """The original backend's `GenerationFrontEnd`: `generate`'s raw keyword arguments, read by
    transformers' own generation code (the functions below), and LLaVA's output layout."""

    def __init__(self, model):
        self.model = model

    def prepare(self, input_ids: torch.Tensor, generate_kwargs: dict, method: str) -> GenerationSetup:
        return prepare_generation(self.model, input_ids.shape[0], input_ids.device, generate_kwargs, method)

    def bind_prompt_length(self, setup: GenerationSetup, prompt_length: int) -> None:
        bind_prompt_length(self.model, setup, prompt_length)

    def make_output(self, sequences, scores, past_key_values, blind_tokens) -> ContrastiveGenerateOutput:
        """LLaVA's generate returns the original branch's cache as a tuple of (keys, values) per layer."""
        return contrastive_output(sequences, scores, tuple(past_key_values), blind_tokens)


def prepare_generation(model, batch_size: int, device, kwargs: dict, method: str) -> GenerationSetup:
    """Interpret and validate `generate` kwargs the way HF's `generate` does, for a contrastive
    method, before any forward pass; `bind_prompt_length` completes the setup after the prefill.

    Raises:
        ValueError: beam search, contrastive search, assisted generation, several return
            sequences, or kwargs neither HF nor the contrastive loop understands.
    """
    kwargs = dict(kwargs)
    user_processor = kwargs.pop("logits_processor", None) or LogitsProcessorList()
    user_stopping = kwargs.pop("stopping_criteria", None) or StoppingCriteriaList()
    streamer = kwargs.pop("streamer", None)
    base_config = kwargs.pop("generation_config", None) or model.generation_config
    _reject_unsupported(kwargs, method)
    config = copy.deepcopy(base_config)
    model_kwargs = config.update(**kwargs)
    check_generation_config(config)  # before transformers' own checks: the same message on every version
    config.validate()
    _check_mode(config, model_kwargs, method)
    if config.pad_token_id is None and config.eos_token_id is not None:
        eos = config.eos_token_id
        config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    transformers_compat.prepare_special_tokens(model, config, "attention_mask" in model_kwargs, device)
    return GenerationSetup(
        config=config,
        logits_processor=user_processor,
        logits_warper=None,
        stopping_criteria=user_stopping,
        initial_ids=_initial_ids(config, batch_size, device),
        eos_token_ids=_eos_tensor(config.eos_token_id, device),
        attention_mask=model_kwargs.get("attention_mask"),
        streamer=streamer,
        has_default_max_length=kwargs.get("max_length") is None and config.max_length is not None,
        has_default_min_length=kwargs.get("min_length") is None and config.min_length is not None,
    )


def bind_prompt_length(model, setup: GenerationSetup, prompt_length: int) -> None:
    """Settle max/min length as upstream's generate would for this merged prompt, then build the
    logits processors, warpers and stopping criteria (called after the prefill, which knows L).

    transformers 4.37 counts only the output (BOS + new tokens) in `max_length` when generating
    from `inputs_embeds`; from 4.38 the prompt embeddings count too (huggingface/transformers#28994),
    so a `max_length` shorter than the prompt is an error there, as in upstream LLaVA generate.
    """
    config, initial_length = setup.config, setup.initial_ids.shape[1]
    if transformers_compat.settle_generated_length(model, config, setup.has_default_max_length,
                                                   setup.has_default_min_length, initial_length,
                                                   (setup.initial_ids.shape[0], prompt_length)):
        if config.max_length <= initial_length:
            raise UserError(
                f"`max_length` leaves no room for new tokens: with transformers >= 4.38 it counts the "
                f"{prompt_length} prompt positions (text and image embeddings). Set max_new_tokens instead."
            )
    elif config.max_new_tokens is not None:
        config.max_length = config.max_new_tokens + initial_length
    setup.logits_processor = transformers_compat.logits_processors(model, config, setup.initial_ids,
                                                                   setup.logits_processor)
    setup.logits_warper = transformers_compat.logits_warper(model, config)
    setup.stopping_criteria = transformers_compat.stopping_criteria(model, config, setup.stopping_criteria)


def _reject_unsupported(kwargs: dict, method: str) -> None:
    for name in ("assistant_model", "prefix_allowed_tokens_fn", "negative_prompt_ids"):
        if kwargs.get(name) is not None:
            raise UserError(f"`{name}` is not supported together with {method}; drop it or {method}.")
    if "inputs_embeds" in kwargs:
        raise UserError("`inputs_embeds` is not supported (as in upstream LLaVA generate); pass input_ids and images.")


def _check_mode(config, model_kwargs: dict, method: str) -> None:
    check_one_sequence_per_prompt(config, method)
    if config.penalty_alpha is not None and config.penalty_alpha > 0 and (config.top_k or 0) > 1:
        raise UserError(f"contrastive search (`penalty_alpha`) cannot be combined with {method}.")
    unused = sorted(set(model_kwargs) - _ACCEPTED_MODEL_KWARGS)
    if unused:
        raise UserError(f"The following `model_kwargs` are not used by the model: {unused}")


def _initial_ids(config, batch_size: int, device) -> torch.Tensor:
    """The ids upstream LLaVA's generate output starts with (see transformers_compat.generate_returns_leading_bos)."""
    if generate_returns_leading_bos():
        if config.bos_token_id is None:
            raise UserError("`bos_token_id` must be set in the generation config.")
        return torch.full((batch_size, 1), config.bos_token_id, dtype=torch.long, device=device)
    return torch.empty((batch_size, 0), dtype=torch.long, device=device)


def _eos_tensor(eos_token_id, device) -> Optional[torch.Tensor]:
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, dtype=torch.long, device=device)
