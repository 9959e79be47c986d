"""transformers' image-text-to-text models behind the decode loop's ModelAdapter, one adapter for every
family the backend serves (`families.FAMILIES`: LLaVA-1.5 and LLaVA-NeXT in llava-hf form, LLaVA-OneVision,
Qwen2.5-VL).

The processor has already expanded each image into one placeholder token per image feature, so a row's
image span is the run of `config.image_token_id` in its ids. The image merge reuses the model's own
`get_image_features` (the vision tower runs once) and scatters the features into the token embeddings
exactly as the model's forward does; the language model then runs from embeddings, with the positions the
model itself computes for the prompt (its family says which), so one merged prompt serves both branches.
"""

from __future__ import annotations

import torch

from ...errors import UserError
from ...decode.adapter import MergedPrompt, left_align
from ..base import LanguageModelAdapter
from ..families import family_of

def image_token_id(model) -> int:
    """The id the processor expands `<image>` into (`image_token_id`; `image_token_index` before 4.48)."""
    config = model.config
    value = getattr(config, "image_token_id", None)
    return int(value if value is not None else config.image_token_index)


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


class HFAdapter(LanguageModelAdapter):
    """A model of one of the backend's families as a ModelAdapter."""

    def __init__(self, model):
        import transformers

        super().__init__(model)
        self.family = family_of(model)
        self.family.check_transformers(transformers.__version__)

    @property
    def language_model(self):
        return self.family.language_model(self.model)

    @property
    def lm_head(self):
        return self.family.lm_head(self.model)

    def image_rows(self, pixel_values, image_info) -> tuple:
        """The processor's image inputs as (images, image_sizes) with one entry per prompt row (what
        `merge_image` and the decode loop take)."""
        return self.family.rows(pixel_values, image_info)

    def merge_image(self, input_ids, attention_mask, images, image_sizes) -> MergedPrompt:
        """Scatter the image features into the token embeddings (the model's own merge), left-aligned, with
        the positions the model computes for the prompt.

        Args:
            input_ids: (B, T) processor ids; each row holds one contiguous run of image tokens.
            attention_mask: (B, T) or None.
            images, image_sizes: `image_rows` of the processor's image inputs: `pixel_values` (B, 3, H, W) for
                LLaVA, (B, P, 3, H, W) tiles with (B, 2) `image_sizes` for LLaVA-NeXT and OneVision; for
                Qwen2.5-VL B tensors of patches with B `image_grid_thw` rows.
        """
        family = self.family
        family.check_pixels(self.model, images, image_sizes)
        rows, image_count = input_ids.shape[0], len(images)
        if image_count != rows:
            raise UserError(f"{image_count} images for {rows} prompts: a prompt holds more than one image, or an image "
                            "has no prompt; contrastive decoding needs exactly one image per prompt. Put one image in "
                            "each prompt.")
        token_id = image_token_id(self.model)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        attention_mask = attention_mask.to(input_ids.device).bool()
        for row in range(input_ids.shape[0]):
            image_span(input_ids[row], token_id, row)  # one image per row, or a clear error
        embeds = self.embed_tokens(input_ids)  # (B, T, D)
        features, deepstack = family.image_features(self.model, images, image_sizes)  # (sum N_b, D), (K, sum N_b, D)
        features = features.to(embeds.device, embeds.dtype)
        is_image = input_ids == token_id  # (B, T)
        if int(is_image.sum()) != features.shape[0]:
            raise UserError(
                f"input_ids hold {int(is_image.sum())} image tokens but the images give {features.shape[0]} "
                "features; build input_ids and pixel_values with the same processor call."
            )
        embeds = embeds.masked_scatter(is_image.unsqueeze(-1), features)
        if deepstack is not None:  # (B, T, K, D): each image row's K features, zeros elsewhere
            dense = embeds.new_zeros(*input_ids.shape, deepstack.shape[0], embeds.shape[-1])
            dense[is_image] = deepstack.permute(1, 0, 2).to(embeds.device, embeds.dtype)
            deepstack, _ = left_align(dense, attention_mask)
        positions, offsets = family.positions(self.model, input_ids, attention_mask, image_sizes)
        if positions is not None:
            positions, _ = left_align(positions.to(embeds.device), attention_mask)  # (B, T, K)
        embeds, mask = left_align(embeds, attention_mask)
        aligned_ids, _ = left_align(input_ids.unsqueeze(-1), attention_mask)
        spans = [image_span(aligned_ids[row, :, 0], token_id, row) for row in range(input_ids.shape[0])]
        return MergedPrompt(embeds, mask, spans, positions=positions, position_offset=offsets, deepstack=deepstack)

    def text_only_prompt(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt without its image tokens (M3ID's unconditioned branch), left-aligned."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        keep = attention_mask.bool() & (input_ids != image_token_id(self.model))  # (B, T)
        embeds = self.embed_tokens(input_ids.masked_fill(~keep, 0))  # (B, T, D)
        return left_align(embeds, keep)


class MergedEmbedsAdapter(LanguageModelAdapter):
    """A decoder-only causal language model handed a prompt whose image is already merged into
    `inputs_embeds` (InstructBLIP's own `generate` encodes the image, scatters the Q-Former's outputs over
    its placeholder tokens, then calls its language model's `generate`; a method then runs on that
    language model). The image rows are the positions whose embedding is not the token's own embedding:
    the merge replaced exactly those, so they show which id is the placeholder; nothing else is assumed.
    Positions are the usual ones (cumsum of the mask). Methods that need the pixels (VCD) cannot run here.
    """

    image_in_prompt = True

    def __init__(self, model, inputs_embeds: torch.Tensor):
        super().__init__(model)
        self.inputs_embeds = inputs_embeds  # (B, T, D)

    @property
    def language_model(self):
        return self.model.get_decoder()

    def placeholder_id(self, input_ids: torch.Tensor) -> int:
        """The token id the merge filled with image features, checked to fill every one of its tokens in one
        contiguous run per row (`image_span`'s one-line errors)."""
        if self.inputs_embeds.shape[:2] != input_ids.shape:
            raise UserError(f"inputs_embeds {tuple(self.inputs_embeds.shape)} do not match input_ids "
                            f"{tuple(input_ids.shape)}: pass the ids the embeddings were made from.")
        is_image = (self.inputs_embeds != self.embed_tokens(input_ids).to(self.inputs_embeds.dtype)).any(-1)
        placeholders = input_ids[is_image].unique()
        if placeholders.numel() == 0:
            raise UserError(f"{type(self.model).__name__}.generate got inputs_embeds equal to the embeddings of "
                            "input_ids at every position: no image is merged into the prompt, and contrastive "
                            "decoding needs one image per prompt; pass the image to the image model's generate.")
        if placeholders.numel() != 1:
            raise UserError(f"{type(self.model).__name__}.generate got inputs_embeds whose image rows hold "
                            f"{placeholders.numel()} different token ids (expected one image placeholder id): pass "
                            "the prompt with its image merged as the model's own generate does, or call "
                            "llava_avc.generate on the image model.")
        token_id = int(placeholders[0])
        for row in range(input_ids.shape[0]):
            image_span(input_ids[row], token_id, row)
        if not torch.equal(is_image, input_ids == token_id):
            raise UserError(f"some placeholder tokens (id {token_id}) of input_ids kept their own embedding in "
                            "inputs_embeds: merge one image into every placeholder of each prompt.")
        return token_id

    def merge_image(self, input_ids, attention_mask, images, image_sizes) -> MergedPrompt:
        """The given merged prompt, left-aligned (`images` are already in it: None)."""
        if images is not None:
            raise TypeError("MergedEmbedsAdapter takes no images: the prompt's inputs_embeds already hold them")
        token_id = self.placeholder_id(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        attention_mask = attention_mask.to(input_ids.device).bool()
        embeds, mask = left_align(self.inputs_embeds, attention_mask)
        aligned_ids, _ = left_align(input_ids.unsqueeze(-1), attention_mask)
        spans = [image_span(aligned_ids[row, :, 0], token_id, row) for row in range(input_ids.shape[0])]
        return MergedPrompt(embeds, mask, spans)

    def text_only_prompt(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt without its image rows (M3ID's unconditioned branch), left-aligned."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        keep = attention_mask.bool() & (input_ids != self.placeholder_id(input_ids))  # (B, T)
        return left_align(self.inputs_embeds, keep)
