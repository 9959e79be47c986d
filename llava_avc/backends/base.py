"""What the backends share: a ModelAdapter for a Hugging Face language model inside a LLaVA model
(forward from embeddings with a DynamicCache, the attention probe, cache surgery), the output type
of `generate(return_dict_in_generate=True)` with a method, the checks of a generation config that
every backend makes, and what a pipeline (`ask`, `eval`) is."""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

from ..errors import UserError
from ..decode.adapter import ModelAdapter
from . import transformers_compat as compat
from .attention_probe import last_query_probe


@dataclass
class ContrastiveGenerateOutput(GenerateDecoderOnlyOutput):
    """transformers' `GenerateDecoderOnlyOutput` plus what the contrastive method used (both backends).

    `scores` are the final per-step scores that were sampled from (after the contrast, the
    plausibility cutoff, the logits processors and, when sampling, the warpers); the cache
    (`past_key_values`; `cache` from transformers 5.25) holds the ORIGINAL branch's rows only;
    `blind_tokens` (AVC only) has one record per row.
    """

    blind_tokens: Optional[list] = None


def contrastive_output(sequences, scores, cache, blind_tokens) -> ContrastiveGenerateOutput:
    """A `ContrastiveGenerateOutput` with `cache` in the field this transformers names it by."""
    return ContrastiveGenerateOutput(sequences=sequences, scores=scores, blind_tokens=blind_tokens,
                                     **{compat.cache_field(ContrastiveGenerateOutput): cache})


class Pipeline(Protocol):
    """A loaded checkpoint with what `llava-avc ask` and `llava-avc eval` need; each backend has one
    (`LlavaPipeline`, `HFPipeline`), found by `llava_avc.backends.pipeline_class`."""

    model: Any

    @classmethod
    def load(cls, model_path: str, model_base: Optional[str] = None, *, device: Optional[str] = None,
             load_4bit: bool = False, load_8bit: bool = False) -> "Pipeline":
        """Load a checkpoint (fp16 on CUDA, fp32 on the CPU, or 4/8-bit)."""

    @property
    def device(self) -> torch.device:
        """Where the model's inputs go."""

    @staticmethod
    def check_conv_mode(conv_mode: Optional[str]) -> None:
        """Refuse a conversation template this backend cannot render (a UserError)."""

    def preprocessing(self, conv_mode: Optional[str] = None, center_crop: bool = False) -> dict:
        """What `inputs` makes of the prompt and the image for these settings (for run records)."""

    def inputs(self, texts: list, pil_images: list, conv_mode: Optional[str] = None,
               center_crop: bool = False) -> dict:
        """One question per image -> the left-padded batch `generate` takes, on the model's device."""

    def generate(self, inputs: dict, config=None, row_seeds=None, **generate_kwargs):
        """`config`'s method (None: the model's own decoding) on `inputs`; `row_seeds` one int per row."""

    def decode(self, sequences: torch.Tensor, inputs: dict) -> list:
        """`generate`'s output -> the stripped answer strings, one per row."""

    def find_blind_tokens(self, inputs: dict, config) -> list:
        """The blind tokens AVC would use for each row of `inputs`."""

    def token_grid(self, pil_image=None):
        """The base image's grid of image tokens for `pil_image`: tokens per side (24 for LLaVA-1.5 at
        336 px), or (rows, columns) where the grid follows the image (Qwen2.5-VL, Qwen3-VL)."""

    @property
    def image_aspect_ratio(self) -> Optional[str]:
        """The checkpoint's image preprocessing mode (pad, anyres, ...)."""

    def model_id(self, model_path: str) -> str:
        """The `model_id` answer files carry for this checkpoint path."""


class LanguageModelAdapter(ModelAdapter):
    """A ModelAdapter whose language model is a transformers Llama-family model (`.layers`, a
    DynamicCache, `last_hidden_state`) with the LLaVA model's `lm_head` on top. A backend gives
    `language_model` and the image-specific methods."""

    @property
    @abc.abstractmethod
    def language_model(self):
        """The decoder (embeddings in, hidden states out; `.layers` with `.self_attn`)."""

    @property
    def lm_head(self):
        """The output projection over the vocabulary."""
        return self.model.lm_head

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, S) ids -> (B, S, D) input embeddings."""
        return self.model.get_input_embeddings()(input_ids)

    def new_cache(self):
        return compat.new_cache()

    @torch.no_grad()
    def forward_last_logits(self, embeds, attention_mask, position_ids, cache, deepstack=None):
        """One language-model forward over (B, S, D) embeds with the cache; returns the last position's
        (B, V) float32 logits (as the models' own heads return them) and the updated cache.

        `position_ids` (B, S), or (B, S, K) for rotary positions of K sections, which the decoder takes
        section-first (K, B, S) (Qwen2.5-VL); `deepstack` (B, S, K, D) goes to the decoder as Qwen3-VL's
        `visual_pos_masks` (every position: the features are zero outside the image rows, and adding zero
        changes nothing) and one (B * S, D) tensor per layer.
        """
        language_model = self.language_model
        if position_ids.dim() == 3:
            position_ids = position_ids.permute(2, 0, 1)  # (B, S, K) -> (K, B, S)
        extra = {}
        if deepstack is not None:
            batch, length, layers, width = deepstack.shape
            extra = {"visual_pos_masks": torch.ones(batch, length, dtype=torch.bool, device=embeds.device),
                     "deepstack_visual_embeds": [deepstack[:, :, k].reshape(batch * length, width)
                                                 for k in range(layers)]}
        outputs = language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask.long(),
            position_ids=position_ids,
            use_cache=True,
            return_dict=True,
            **{compat.cache_argument(language_model): cache},
            **extra,
        )
        hidden_last = outputs.last_hidden_state[:, -1, :]  # (B, D)
        logits = self.lm_head(hidden_last).float()  # (B, V)
        return logits, compat.output_cache(outputs)

    def stack_caches(self, first, second):
        return compat.stack_caches(first, second)

    def cache_rows(self, cache, rows: Sequence[int] | slice):
        return compat.cache_rows(cache, rows)

    def last_query_probe(self, key_mask: torch.Tensor) -> AbstractContextManager:
        return last_query_probe(self.language_model.layers, key_mask)


def check_one_sequence_per_prompt(config, method: str) -> None:
    """Beam search and several return sequences are not contrastive decoding: one clear error each.

    Args:
        config: the call's generation config.
        method: how the caller is named in the message, e.g. "avc=".
    """
    if config.num_beams != 1:
        raise UserError(
            f"`num_beams` (={config.num_beams}) must be 1 with {method}: contrastive decoding is defined for greedy "
            f"and sampling only. Set num_beams=1, or drop {method} for beam search."
        )
    if config.num_return_sequences != 1:
        raise UserError(
            f"`num_return_sequences` (={config.num_return_sequences}) must be 1 with {method}; repeat the prompt "
            "in the batch instead."
        )


def quiet_length_warning(tokenizer) -> None:
    """Silence the tokenizer's "Token indices sequence length is longer than the specified maximum"
    warning: the pipelines check the prompt's length against the model's context themselves and
    refuse a prompt that does not fit with one clear error."""
    warnings = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(warnings, dict):
        warnings["sequence-length-is-longer-than-the-specified-maximum"] = True


def prompt_too_long(positions: int, limit: int, what: str, upstream: str) -> UserError:
    """The one refusal of a prompt that does not fit the model's context, for every method."""
    return UserError(f"the prompt takes {positions} positions with the image's tokens, but {what} is {limit}; "
                     f"{upstream} Shorten the question.")
