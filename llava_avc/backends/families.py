"""The model families the llava-hf backend (`backends/hf`) serves, one small description each. This module
imports neither transformers nor the backend, so the backend registry and the checkpoint detection read it
cheaply.

Every family is a transformers image-text-to-text model whose processor marks the image with a run of
placeholder tokens (`config.image_token_id`) and whose decoder takes `inputs_embeds`: the generic adapter
(`adapter.HFAdapter`) merges the image features into those positions and runs the language model from
embeddings, so one merged prompt serves both branches. What differs between families lives here:

- which processor outputs carry an image's size or grid (`image_info`: LLaVA-NeXT's and OneVision's
  `image_sizes`, Qwen's `image_grid_thw`) and how the processor lays out `pixel_values` (one row per
  prompt, or Qwen's patches of every image concatenated);
- how the model computes the image features (its own `get_image_features`);
- the positions the model computes for a prompt (Qwen's multimodal rotary positions; None: the usual
  cumulative count of real tokens);
- which modules stay unquantized under 4/8-bit;
- the oldest transformers the family is tested on.

A family is one `Family` registered in `FAMILIES` (keyed by config.json's `model_type`); docs/architecture.md
says how to add one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import UserError
from .versions import version_tuple


#: Every family's image inputs among a processor's outputs (what `Family.take_image_inputs` reads).
IMAGE_INPUTS = ("pixel_values", "image_sizes", "image_grid_thw", "qformer_input_ids", "qformer_attention_mask")


@dataclass(frozen=True)
class Family:
    """LLaVA-1.5 in llava-hf form (`LlavaForConditionalGeneration`) and the defaults of every family.

    Attributes:
        model_type: config.json's `model_type`.
        class_name: the transformers class that loads it.
        image_info: the processor output with each image's size or grid (None: the pixels say it all).
        pixel_dims: dimensions of the processor's `pixel_values` for one image per prompt.
        unquantized: modules kept unquantized under 4/8-bit, full names from the model's root
            (transformers 5 matches skip patterns from the start of a module's name).
        oldest_transformers: the oldest transformers release the family is tested on.
        chat_prompt: the prompt goes through the processor's chat template (False: it is the question
            itself and the processor places the image tokens, InstructBLIP).
        llava_conversations: LLaVA's conversation templates (`--conv-mode llava_v1`, the eval protocols'
            prompts) render for this family (LLaVA-1.5 and LLaVA-NeXT); the other families always take their
            own prompt.
    """

    model_type: str
    class_name: str
    image_info: Optional[str] = None
    pixel_dims: int = 4  # (B, 3, H, W)
    unquantized: tuple = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
    oldest_transformers: str = "4.57"
    chat_prompt: bool = True
    llava_conversations: bool = True

    def check_transformers(self, version: str) -> None:
        """Refuse a transformers release older than the family is tested on (one line)."""
        if version_tuple(version) < version_tuple(self.oldest_transformers):
            raise UserError(f"{self.class_name} needs transformers >= {self.oldest_transformers} with llava-avc "
                            f"(this environment has {version}); install the hf profile's: pip install '.[hf]'.")

    # -- where things are --------------------------------------------------------------------
    def language_model(self, model):
        """The decoder (embeddings in, hidden states out; `.layers` with `.self_attn`)."""
        return model.model.language_model

    def vision_module(self, model):
        """The vision encoder (its weights' dtype is the dtype the pixels go in)."""
        return model.model.vision_tower

    def lm_head(self, model):
        """The output projection over the vocabulary."""
        return model.lm_head

    def generating_model(self, model):
        """The model whose `generate` runs a custom decoding method with the processor's inputs (the model
        itself; InstructBLIP's language model, since its own `generate` encodes the image first)."""
        return model

    def processor_batch(self, processor, images: list, texts: list, **kwargs) -> dict:
        """The processor's left-padded batch for prompts `texts` with one image each."""
        return dict(processor(images=images, text=texts, return_tensors="pt", padding=True, **kwargs))

    # -- images --------------------------------------------------------------------------------
    def take_image_inputs(self, image_inputs: dict) -> tuple:
        """(pixel_values, image info) out of the processor's image outputs (`image_inputs`: pixel_values and
        every family's info, None where absent)."""
        info = None if self.image_info is None else image_inputs.get(self.image_info)
        others = [name for name, value in image_inputs.items()
                  if value is not None and name not in ("pixel_values", self.image_info)]
        if others:  # another family's processor made them: check_pixels names both
            info = info if info is not None else image_inputs[others[0]]
        return image_inputs.get("pixel_values"), info

    def rows(self, pixel_values, image_info) -> tuple:
        """The processor's image inputs -> (images, image_sizes) with one entry per prompt row, as the decode
        loop takes them (it noises images row by row and stacks rows for two branches)."""
        return pixel_values, image_info

    def image_features(self, model, images, image_sizes) -> tuple:
        """((sum of N_b, D) features of the rows' images, in order, as the model's forward merges them;
        (K, sum of N_b, D) DeepStack features or None)."""
        output = self._encode(model, images, image_sizes)
        features = getattr(output, "pooler_output", output)  # transformers 5: an output object; 4.57: a list
        return torch.cat(list(features), dim=0), None

    def _encode(self, model, images, image_sizes):
        kwargs = {} if self.image_info is None else {self.image_info: image_sizes}
        return model.model.get_image_features(pixel_values=images, **kwargs)

    def check_pixels(self, model, images, image_sizes) -> None:
        """Refuse image inputs made by another family's processor (one line naming both classes)."""
        shape = tuple(images.shape) if hasattr(images, "shape") else None
        if shape is not None and self._takes(len(shape), image_sizes is not None):
            return
        makers = [family.class_name for family in FAMILIES.values()
                  if shape is not None and family._takes(len(shape), image_sizes is not None)]
        made_by = f"the processor of a {' / '.join(makers)}" if makers else "no processor of a served family"
        sizes = "with" if image_sizes is not None else "without"
        raise UserError(
            f"pixel_values {shape} {sizes} image sizes come from {made_by}, and the model is a "
            f"{type(model).__name__}, which takes {self._pixels()}: load the checkpoint with the class its "
            f"config.json names ({_classes_by_type()}) and its own AutoProcessor.")

    def _takes(self, dims: int, has_info: bool) -> bool:
        return dims == self.pixel_dims and has_info == (self.image_info is not None)

    def _pixels(self) -> str:
        return f"{self.pixel_dims}-dimensional pixel_values" + (f" with {self.image_info}" if self.image_info else "")

    # -- positions -----------------------------------------------------------------------------
    def positions(self, model, input_ids, attention_mask, image_sizes) -> tuple:
        """(positions, offsets) the model computes for the prompt: positions (B, T, K) batch-first and
        offsets (B,) added to each later token's count of real tokens; (None, None): the usual positions."""
        return None, None


@dataclass(frozen=True)
class LlavaNext(Family):
    """LLaVA-1.6 (`LlavaNextForConditionalGeneration`): anyres tiles (B, P, 3, H, W) with `image_sizes`."""

    image_info: Optional[str] = "image_sizes"
    pixel_dims: int = 5


@dataclass(frozen=True)
class LlavaOnevision(LlavaNext):
    """LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): anyres-max tiles of a SigLIP tower, Qwen2
    decoder; the processor's `batch_num_images` is one per prompt here (several images are refused)."""

    oldest_transformers: str = "5.0"
    llava_conversations: bool = False


@dataclass(frozen=True)
class QwenVL(Family):
    """Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): variable image-token counts from `image_grid_thw`,
    the patches of every image concatenated in `pixel_values` (patches, C * T * P * P), multimodal rotary
    positions (temporal, height, width) computed from the ids and the grids."""

    image_info: Optional[str] = "image_grid_thw"
    pixel_dims: int = 2
    unquantized: tuple = ("model.visual", "lm_head")
    oldest_transformers: str = "5.0"
    llava_conversations: bool = False

    def vision_module(self, model):
        return model.model.visual

    def rows(self, pixel_values, image_info) -> tuple:
        """Qwen's concatenated patches -> one (N_b, C * T * P * P) tensor per row, and the (3,) grid rows
        (inputs of another layout are left to `check_pixels`)."""
        if pixel_values is None or not torch.is_tensor(image_info) or pixel_values.dim() != self.pixel_dims \
                or image_info.dim() != 2 or image_info.shape[-1] != 3:
            return pixel_values, image_info
        counts = [int(count) for count in image_info.prod(-1)]  # patches per image
        if sum(counts) != pixel_values.shape[0]:
            raise UserError(f"pixel_values hold {pixel_values.shape[0]} patches but image_grid_thw describes "
                            f"{sum(counts)}: pass both from the same processor call.")
        return list(torch.split(pixel_values, counts)), list(image_info)

    def _encode(self, model, images, image_sizes):
        pixels = torch.cat(list(images)) if isinstance(images, (list, tuple)) else images
        grids = torch.stack(list(image_sizes)) if isinstance(image_sizes, (list, tuple)) else image_sizes
        return model.model.get_image_features(pixel_values=pixels, image_grid_thw=grids)

    def check_pixels(self, model, images, image_sizes) -> None:
        if isinstance(images, (list, tuple)) and image_sizes is not None and len(images) == len(image_sizes):
            return  # the rows of `rows`
        super().check_pixels(model, images, image_sizes)

    def positions(self, model, input_ids, attention_mask, image_sizes) -> tuple:
        """The model's own `get_rope_index` on the prompt: (B, T, 3) positions and (B,) rope deltas."""
        grids = torch.stack(list(image_sizes)) if isinstance(image_sizes, (list, tuple)) else image_sizes
        token_types = (input_ids == int(model.config.image_token_id)).int()  # text 0, image 1
        positions, deltas = model.model.get_rope_index(input_ids, mm_token_type_ids=token_types,
                                                       image_grid_thw=grids, attention_mask=attention_mask)
        return positions.permute(1, 2, 0), deltas.reshape(-1)  # (3, B, T) -> (B, T, 3); (B, 1) -> (B,)


@dataclass(frozen=True)
class Qwen3VL(QwenVL):
    """Qwen3-VL (`Qwen3VLForConditionalGeneration`): Qwen2.5-VL's inputs and positions, plus DeepStack: the
    vision tower's intermediate features are added to the hidden states at the image rows after each of
    the decoder's first K layers (`MergedPrompt.deepstack`)."""

    def image_features(self, model, images, image_sizes) -> tuple:
        output = self._encode(model, images, image_sizes)
        features = torch.cat(list(output.pooler_output), dim=0)  # (sum N_b, D)
        deepstack = torch.stack([torch.cat(list(layer), dim=0) for layer in output.deepstack_features])  # (K, sum N_b, D)
        return features, deepstack


@dataclass(frozen=True)
class InstructBlip(Family):
    """InstructBLIP with a decoder-only language model (`InstructBlipForConditionalGeneration`, Vicuna in the
    AvisC paper): the image tokens are the Q-Former's query outputs, which the processor places before the
    prompt (`num_query_tokens` placeholders ahead of BOS); the Q-Former also reads the question
    (`qformer_input_ids`, `qformer_attention_mask`), so a row's image features depend on its question. The
    prompt is the question itself (no chat template, as in the paper). transformers' InstructBLIP `generate`
    encodes the image before calling its language model's `generate`, so a decoding method runs through the
    language model's `generate` (`generating_model`), with the InstructBLIP model beside it."""

    image_info: Optional[str] = "qformer_input_ids"
    unquantized: tuple = ("vision_model", "qformer", "language_projection", "language_model.lm_head")
    oldest_transformers: str = "5.0"
    chat_prompt: bool = False
    llava_conversations: bool = False

    def language_model(self, model):
        return model.language_model.model

    def vision_module(self, model):
        return model.vision_model

    def lm_head(self, model):
        return model.language_model.lm_head

    def generating_model(self, model):
        return model.language_model

    def processor_batch(self, processor, images: list, texts: list, **kwargs) -> dict:
        """The processor's batch with the Q-Former's text padded on the RIGHT: the processor pads it on the
        language tokenizer's side, and left padding would shift the Q-Former's (BERT) positions, so that a
        question would read differently in a batch than alone."""
        batch = super().processor_batch(processor, images, texts, **kwargs)
        qformer = processor.qformer_tokenizer(texts, padding=True, padding_side="right", return_tensors="pt")
        batch["qformer_input_ids"], batch["qformer_attention_mask"] = qformer["input_ids"], qformer["attention_mask"]
        return batch

    def take_image_inputs(self, image_inputs: dict) -> tuple:
        """(pixel_values, (qformer_input_ids, qformer_attention_mask)) of the processor's outputs."""
        ids, mask = image_inputs.get("qformer_input_ids"), image_inputs.get("qformer_attention_mask")
        if ids is None:
            others = [name for name, value in image_inputs.items() if value is not None and name != "pixel_values"]
            return image_inputs.get("pixel_values"), (image_inputs[others[0]] if others else None)
        return image_inputs.get("pixel_values"), (ids, torch.ones_like(ids) if mask is None else mask)

    def rows(self, pixel_values, image_info) -> tuple:
        """The question of each row for the Q-Former: a (qformer ids, qformer mask) pair per row."""
        if not isinstance(image_info, tuple):
            return pixel_values, image_info
        ids, mask = image_info
        return pixel_values, list(zip(ids, mask))

    def check_pixels(self, model, images, image_sizes) -> None:
        if isinstance(image_sizes, list) and all(isinstance(row, tuple) for row in image_sizes) \
                and hasattr(images, "shape") and images.dim() == self.pixel_dims:
            return
        super().check_pixels(model, images, None if isinstance(image_sizes, list) else image_sizes)

    def _encode(self, model, images, image_sizes):
        ids = torch.stack([row_ids for row_ids, _ in image_sizes])  # (B, T_q)
        mask = torch.stack([row_mask for _, row_mask in image_sizes])
        return model.get_image_features(pixel_values=images, qformer_input_ids=ids, qformer_attention_mask=mask)

    def image_features(self, model, images, image_sizes) -> tuple:
        queries = self._encode(model, images, image_sizes).pooler_output  # (B, Q, D)
        return queries.reshape(-1, queries.shape[-1]), None


#: config.json `model_type` -> its family.
FAMILIES: dict[str, Family] = {family.model_type: family for family in (
    Family("llava", "LlavaForConditionalGeneration"),
    LlavaNext("llava_next", "LlavaNextForConditionalGeneration"),
    LlavaOnevision("llava_onevision", "LlavaOnevisionForConditionalGeneration"),
    QwenVL("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
    Qwen3VL("qwen3_vl", "Qwen3VLForConditionalGeneration"),
    InstructBlip("instructblip", "InstructBlipForConditionalGeneration"),
)}


def _classes_by_type() -> str:
    return "; ".join(f"model_type {family.model_type}: {family.class_name}" for family in FAMILIES.values())


def served_classes() -> str:
    """The transformers classes the backend serves, for messages."""
    return ", ".join(family.class_name for family in FAMILIES.values())


def _served_family(model) -> Optional[Family]:
    """The family whose transformers class is the model's class (or a base class of it), else None."""
    names = {cls.__name__ for cls in type(model).__mro__ if cls.__module__.startswith("transformers.")}
    return next((family for family in FAMILIES.values() if family.class_name in names), None)


def family_of(model) -> Family:
    """The family of a transformers model, by its class (or a base class of it).

    Raises:
        UserError: no family of this backend is that class.
    """
    family = _served_family(model)
    if family is None:
        raise UserError(f"model (={type(model).__name__}) is not a family the llava-hf backend serves; it serves "
                        f"{served_classes()}.")
    return family


def is_served(model) -> bool:
    """Whether a family of this backend is the model's class (without importing transformers)."""
    return _served_family(model) is not None
