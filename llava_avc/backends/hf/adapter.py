"""Hugging Face-native LLaVA and LLaVA-NeXT behind the decode loop's ModelAdapter.

`HFLlavaAdapter` serves `LlavaForConditionalGeneration` (LLaVA-1.5 as llava-hf publishes it) and
`LlavaNextForConditionalGeneration` (LLaVA-1.6: anyres tiles, unpadding, newline rows). The
processor has already expanded each `<image>` into one image token per image feature, so a row's
image span is the run of `config.image_token_id` in its ids. The image merge reuses the model's
own `get_image_features` (the vision tower runs once) and scatters the features into the token
embeddings exactly as the model's forward does; the language model then runs from embeddings
(`model.model.language_model`), so one merged prompt serves both branches.
"""

from __future__ import annotations

import torch

from ...errors import UserError
from ...decode.adapter import MergedPrompt, left_align
from ..base import LanguageModelAdapter

def image_token_id(model) -> int:
    """The id the processor expands `<image>` into (`image_token_id`; `image_token_index` before 4.48)."""
    config = model.config
    value = getattr(config, "image_token_id", None)
    return int(value if value is not None else config.image_token_index)


def is_llava_next(model) -> bool:
    """A LlavaNextForConditionalGeneration (anyres tiles, `image_sizes`), not LLaVA-1.5's class."""
    return type(model).__name__ == "LlavaNextForConditionalGeneration"


def image_span(row_ids: torch.Tensor, token_id: int, row: int) -> tuple[int, int]:
    """(start, end) of the one contiguous run of image tokens in a row of ids.

    Raises:
        ValueError: the row has no image token, or several separate runs (several images).
    """
    positions = torch.nonzero(row_ids == token_id).flatten()  # (N,)
    if positions.numel() == 0:
        raise UserError(
            f"row {row} of input_ids holds no image token (id {token_id}); contrastive decoding needs one image "
            "per prompt. Build the inputs with the model's processor: processor(images=image, text=prompt) with "
            "one '<image>' in the prompt."
        )
    start, end = int(positions[0]), int(positions[-1]) + 1
    if end - start != positions.numel():
        raise UserError(
            f"row {row} of input_ids holds more than one image (separate runs of image tokens between "
            f"positions {start} and {end - 1}); contrastive decoding needs exactly one image per prompt. "
            "Put one '<image>' in each prompt."
        )
    return start, end


class HFLlavaAdapter(LanguageModelAdapter):
    """`LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration` as a ModelAdapter."""

    @property
    def language_model(self):
        return self.model.model.language_model

    @property
    def _is_next(self) -> bool:
        return is_llava_next(self.model)

    def _check_pairing(self, pixel_values, image_sizes) -> None:
        """Refuse pixels made by the processor of the other LLaVA class (one line naming both classes):
        LlavaNext takes a LlavaNextProcessor's (B, P, 3, H, W) tiles with `image_sizes`, Llava a
        LlavaProcessor's (B, 3, H, W) images."""
        shape = tuple(pixel_values.shape) if hasattr(pixel_values, "shape") else None
        if self._is_next and (image_sizes is None or shape is None or len(shape) != 5):
            made_by = "a LLaVA-1.5 processor (LlavaProcessor)"
        elif not self._is_next and shape is not None and len(shape) != 4:
            made_by = "a LLaVA-NeXT processor (LlavaNextProcessor)"
        else:
            return
        sizes = "with" if image_sizes is not None else "without"
        wanted = ("a LlavaNextProcessor's (B, P, 3, H, W) tiles and image_sizes" if self._is_next
                  else "a LlavaProcessor's (B, 3, H, W) images")
        raise UserError(
            f"pixel_values {shape} {sizes} image_sizes come from {made_by}, and the model is a "
            f"{type(self.model).__name__}, which takes {wanted}: load the checkpoint with the class its config.json "
            "names (model_type llava: LlavaForConditionalGeneration; llava_next: LlavaNextForConditionalGeneration) "
            "and its own AutoProcessor.")

    def _image_features(self, pixel_values, image_sizes) -> torch.Tensor:
        """(sum of N_b, D) features of the batch's images, in order, as the model's forward merges them."""
        kwargs = {"image_sizes": image_sizes} if self._is_next else {}
        output = self.model.model.get_image_features(pixel_values=pixel_values, **kwargs)
        features = getattr(output, "pooler_output", output)  # transformers 5: an output object; 4.57: a list
        return torch.cat(list(features), dim=0)

    def merge_image(self, input_ids, attention_mask, images, image_sizes) -> MergedPrompt:
        """Scatter the image features into the token embeddings (the model's own merge), left-aligned.

        Args:
            input_ids: (B, T) processor ids; each row holds one contiguous run of image tokens.
            attention_mask: (B, T) or None.
            images: `pixel_values` as the processor gives them: (B, 3, H, W) for LLaVA, (B, P, 3, H, W)
                for LLaVA-NeXT.
            image_sizes: the processor's (B, 2) `image_sizes` (LLaVA-NeXT), else None.
        """
        self._check_pairing(images, image_sizes)
        token_id = image_token_id(self.model)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        attention_mask = attention_mask.to(input_ids.device).bool()
        for row in range(input_ids.shape[0]):
            image_span(input_ids[row], token_id, row)  # one image per row, or a clear error
        embeds = self.embed_tokens(input_ids)  # (B, T, D)
        features = self._image_features(images, image_sizes).to(embeds.device, embeds.dtype)  # (sum N_b, D)
        is_image = (input_ids == token_id).unsqueeze(-1)  # (B, T, 1)
        if int(is_image.sum()) != features.shape[0]:
            raise UserError(
                f"input_ids hold {int(is_image.sum())} image tokens but the images give {features.shape[0]} "
                "features; build input_ids and pixel_values with the same processor call."
            )
        embeds = embeds.masked_scatter(is_image, features)
        embeds, mask = left_align(embeds, attention_mask)
        aligned_ids, _ = left_align(input_ids.unsqueeze(-1), attention_mask)
        spans = [image_span(aligned_ids[row, :, 0], token_id, row) for row in range(input_ids.shape[0])]
        return MergedPrompt(embeds, mask, spans)

    def text_only_prompt(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt without its image tokens (M3ID's unconditioned branch), left-aligned."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        keep = attention_mask.bool() & (input_ids != image_token_id(self.model))  # (B, T)
        embeds = self.embed_tokens(input_ids.masked_fill(~keep, 0))  # (B, T, D)
        return left_align(embeds, keep)
