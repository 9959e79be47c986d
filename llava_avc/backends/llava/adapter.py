"""The original LLaVA codebase's model (`LlavaLlamaForCausalLM`) behind the decode loop's ModelAdapter.

Everything the decoder needs from the model goes through `LlavaAdapter`: LLaVA's own multimodal
merge (`prepare_inputs_labels_for_multimodal`), token embeddings, one forward of the language
model with a KV cache, KV-cache surgery and the last-query attention probe (`attention_probe.py`).
What `generate`'s arguments mean is the front end's (`generation.LlavaFrontEnd`).
"""

from __future__ import annotations


import torch

from llava.constants import IMAGE_TOKEN_INDEX

from ...errors import UserError
from ...decode.adapter import MergedPrompt, left_align
from ..base import LanguageModelAdapter


def image_token_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    """Indices of LLaVA's image placeholder (IMAGE_TOKEN_INDEX) among each row's REAL tokens."""
    positions = []
    for row_ids, row_mask in zip(input_ids, attention_mask.bool()):
        real_ids = row_ids[row_mask]  # (T_b,)
        positions.append(torch.nonzero(real_ids == IMAGE_TOKEN_INDEX).flatten().tolist())
    return positions


class LlavaAdapter(LanguageModelAdapter):
    """`LlavaLlamaForCausalLM` (llava-torch 1.2.2; LLaVA-1.5 and LLaVA-1.6 anyres) as a ModelAdapter."""

    @property
    def language_model(self):
        return self.model.get_model()  # LlavaLlamaModel: a LlamaModel with the vision modules beside

    def merge_image(self, input_ids, attention_mask, images, image_sizes) -> MergedPrompt:
        """Run LLaVA's own merge once and return the batch left-aligned with each row's image span.

        The span of row b is derived from that row alone: the image placeholder's index among the
        row's real tokens gives the start, and the merged length minus the row's text tokens gives
        the number of image features N_b (576 for LLaVA-1.5 at 336 px, variable for LLaVA-1.6
        anyres). Whatever `config.tokenizer_padding_side` makes LLaVA's merge produce, the result
        is left-padded.

        Raises:
            ValueError: a row has no image placeholder or more than one, or LLaVA truncated the
                merged prompt to `tokenizer_model_max_length`.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        attention_mask = attention_mask.to(input_ids.device).bool()
        placeholders = image_token_positions(input_ids, attention_mask)
        for row, found in enumerate(placeholders):
            if len(found) != 1:
                raise UserError(
                    f"row {row} of input_ids holds {len(found)} image placeholders ({IMAGE_TOKEN_INDEX}); "
                    "contrastive decoding needs exactly one image per prompt. Build the prompt with one "
                    "'<image>' and llava.mm_utils.tokenizer_image_token."
                )
        if input_ids.shape[1] == 1:
            raise UserError("input_ids holds only the image placeholder; add the question text.")
        _, _, merged_mask, _, embeds, _ = self.model.prepare_inputs_labels_for_multimodal(
            input_ids, None, attention_mask, None, None, images, image_sizes
        )
        merged_mask = merged_mask.bool()  # (B, L)
        self._check_not_truncated(merged_mask)
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

    def _check_not_truncated(self, merged_mask: torch.Tensor) -> None:
        limit = getattr(self.model.config, "tokenizer_model_max_length", None)
        if limit is not None and int(merged_mask.sum(-1).max()) >= limit:
            raise UserError(
                f"the merged prompt reaches tokenizer_model_max_length (={limit}), so LLaVA truncated it "
                "and the image span cannot be trusted; shorten the question."
            )

    def text_only_prompt(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of the prompt with the image placeholder removed (M3ID's unconditioned branch).

        Returns:
            (embeds (B, L', D), mask (B, L') bool), left-aligned.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        keep = attention_mask.bool() & (input_ids != IMAGE_TOKEN_INDEX)  # (B, T)
        safe_ids = input_ids.masked_fill(~keep, 0)
        embeds = self.embed_tokens(safe_ids)  # (B, T, D)
        return left_align(embeds, keep)
