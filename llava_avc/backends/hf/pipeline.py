"""A loaded llava-hf checkpoint (`LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration`
with its `AutoProcessor`) with what `llava-avc ask` and `llava-avc eval` need: the same methods as
`llava_avc.backends.llava.pipeline.LlavaPipeline`.

Prompts: the processor's chat template (`conv_mode` None or "chat-template"), or LLaVA's `llava_v1` /
`vicuna_v1` rendered as LLaVA renders them (`prompts`), so the benchmark protocols mean the same prompt on
both backends. Images (LLaVA-1.5 checkpoints): `center_crop=True` is CLIP's resize + center crop with no
pad; `center_crop=False` pads to a square with the image mean first, as LLaVA's `process_images` does
(the processor's own `do_pad`, or LLaVA's expand2square before a processor that cannot pad). LLaVA-NeXT
checkpoints use the processor's anyres tiling, where a center crop does not apply (as in the original).
`preprocessing()` says which of these a run used."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ...errors import UserError
from ..base import prompt_too_long, quiet_length_warning
from . import prompts
from ..families import FAMILIES, IMAGE_INPUTS, Family, family_of
from ..devices import check_quantization_supported, default_device, resolve_device
from ..checkpoints import check_json_file, preflight, quiet_loading_notes
from ..transformers_compat import guarded

def quantization_config(load_4bit: bool, load_8bit: bool, family: Family):
    """One BitsAndBytesConfig (nf4, double quantization, fp16 compute) keeping the family's vision tower,
    projector and lm_head unquantized (as the original backend keeps mm_projector, lm_head and the CLIP
    tower)."""
    from transformers import BitsAndBytesConfig

    if load_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16,
                                  bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4",
                                  llm_int8_skip_modules=list(family.unquantized))
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(family.unquantized))


def checkpoint_family(model_path: str) -> Family:
    """The family of a checkpoint from its config.json's model_type (a hub id without a local config:
    LLaVA-1.5's).

    Raises:
        UserError: a model_type the backend does not serve (the served ones named).
    """
    config_file = Path(model_path) / "config.json"
    model_type = check_json_file(config_file).get("model_type") if config_file.is_file() else "llava"
    if model_type not in FAMILIES:
        raise UserError(f"{model_path!r} has model_type {model_type!r}; the llava-hf backend loads "
                        f"{', '.join(FAMILIES)} checkpoints.")
    return FAMILIES[model_type]


def _load_processor(model_path: str, family: Family):
    """`AutoProcessor.from_pretrained`; a processor that needs torchvision where it is missing is one line
    (Qwen's and OneVision's load a video processor, which needs torchvision, even for images).

    Raises:
        UserError: torchvision is not installed (or not importable beside this torch).
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model_path)
    except ImportError as error:
        if "torchvision" not in str(error).lower():
            raise
        raise UserError(f"the {family.model_type} processor of {model_path!r} needs torchvision (its video processor "
                        "loads even for images), which this environment cannot import; install the torchvision "
                        "build that matches your torch (pip install torchvision, from the same index as torch).") from None


@contextmanager
def _quiet_progress():
    """transformers 5's "Loading weights" bar only on a terminal (in a log it is noise on stderr)."""
    from transformers.utils import logging as hf_logging

    if sys.stderr.isatty() or not hasattr(hf_logging, "disable_progress_bar"):
        yield
        return
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@dataclass
class HFPipeline:
    """A llava-hf model and its processor."""

    processor: Any
    model: Any

    def __post_init__(self):
        self.processor.tokenizer.padding_side = "left"  # our batches are left-padded (set once, not per call)

    @classmethod
    def load(cls, model_path: str, model_base: Optional[str] = None, *, device: Optional[str] = None,
             load_4bit: bool = False, load_8bit: bool = False) -> "HFPipeline":
        """`from_pretrained` of a llava-hf directory or hub id: fp16 on CUDA, fp32 on the CPU, or 4/8-bit."""
        import transformers

        if model_base is not None:
            raise UserError(f"--model-base (={model_base!r}) is for original-LLaVA LoRA checkpoints; a llava-hf "
                            "checkpoint is complete: drop --model-base.")
        check_quantization_supported(load_4bit, load_8bit, device or default_device())
        device = resolve_device(device)
        preflight(model_path)
        on_cuda = str(device).startswith("cuda")
        family = checkpoint_family(model_path)
        kwargs: dict = {"dtype": torch.float16 if on_cuda or load_4bit or load_8bit else torch.float32}
        if load_4bit or load_8bit:
            kwargs.update(quantization_config=quantization_config(load_4bit, load_8bit, family), device_map=device)
        with _quiet_progress(), quiet_loading_notes():
            model = getattr(transformers, family.class_name).from_pretrained(model_path, **kwargs)
            processor = _load_processor(model_path, family)
        if not (load_4bit or load_8bit):
            model.to(device)
        quiet_length_warning(processor.tokenizer)
        return cls(processor, model.eval())

    @property
    def device(self) -> torch.device:
        return self.model.device

    check_conv_mode = staticmethod(prompts.check_conv_mode)

    def prompt(self, text: str, conv_mode: Optional[str] = None) -> str:
        """One image and one question, ready for the answer: the processor's chat template (`conv_mode` None or
        "chat-template") or LLaVA's `conv_mode` template (LLaVA-1.5 and LLaVA-NeXT only: the other families
        always take their own prompt, InstructBLIP's being the question itself)."""
        prompts.check_conv_mode(conv_mode)
        if not self.family.chat_prompt:
            return text  # the question itself (InstructBLIP: the processor puts the query tokens first), as in the paper
        if conv_mode not in (None, prompts.CHAT_TEMPLATE) and self.family.llava_conversations:
            return prompts.llava_conversation(conv_mode, text, getattr(self.processor, "image_token", "<image>"))
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    @property
    def family(self) -> Family:
        return family_of(self.model)

    @property
    def _is_llava_1_5(self) -> bool:
        """LLaVA-1.5 (`Llava`): pad-to-square or center crop; the other families use their processor's own
        preprocessing (anyres tiles, Qwen's resize to a multiple of its patch grid)."""
        return self.family.model_type == "llava"

    def _can_pad(self) -> bool:
        """Whether the image processor pads to a square itself (LlavaImageProcessor's `do_pad`)."""
        return self._is_llava_1_5 and hasattr(self.processor.image_processor, "do_pad")

    def _image_kwargs(self, pil_images: list, center_crop: bool) -> tuple:
        """(images, processor kwargs) that make the LLaVA-1.5 preprocessing `center_crop` asks for."""
        if not self._is_llava_1_5:
            return pil_images, {}
        if self._can_pad():
            return pil_images, {"do_pad": not center_crop}
        if center_crop:
            return pil_images, {}  # a CLIP image processor: resize + center crop, no pad
        mean = tuple(int(255 * x) for x in self.processor.image_processor.image_mean)
        return [_expand_to_square(image, mean) for image in pil_images], {}

    def preprocessing(self, conv_mode: Optional[str] = None, center_crop: bool = False) -> dict:
        """What `inputs` makes of the prompt and the image for these settings (for run records)."""
        if not self._is_llava_1_5:
            image = f"the {self.family.model_type} processor's own preprocessing (a center crop does not apply)"
        elif center_crop:
            image = "CLIP resize + center crop, no pad to square"
        else:
            how = "the processor's do_pad" if self._can_pad() else "LLaVA's expand2square"
            image = f"pad to a square with the image mean ({how}), then CLIP resize + center crop"
        if not self.family.chat_prompt:
            prompt = "the question itself (the processor puts the image's query tokens first)"
        elif not self.family.llava_conversations:
            prompt = f"the checkpoint's chat template (LLaVA's conversation templates do not apply to {self.family.model_type})"
        else:
            prompt = prompts.describe(conv_mode)
        return {"backend": "hf", "model_type": self.family.model_type, "prompt": prompt, "image": image}

    def inputs(self, texts: list, pil_images: list, conv_mode: Optional[str] = None, center_crop: bool = False) -> dict:
        """One question per image -> the processor's left-padded batch on the model's device (`conv_mode` and
        `center_crop` as the module docstring says)."""
        images, image_kwargs = self._image_kwargs(pil_images, center_crop)
        batch = self.family.processor_batch(self.processor, images, [self.prompt(text, conv_mode) for text in texts],
                                            **image_kwargs)
        inputs = {key: value.to(self.device) for key, value in batch.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self._pixel_dtype())
        return inputs

    def _pixel_dtype(self) -> torch.dtype:
        return next(self.family.vision_module(self.model).parameters()).dtype

    @guarded
    def generate(self, inputs: dict, config=None, row_seeds=None, **generate_kwargs):
        """`llava_avc.generate` on the model: `config`'s method, or the model's own generate for None.

        `row_seeds` (one int per row) give each row its own noise and sampling generators; plain
        SAMPLED decoding then runs as `lean_decoding` (transformers draws from torch's global RNG).
        """
        from . import generate, generate_with
        from .generation import lean_decoding

        self.check_prompt_fits(inputs)
        kwargs = dict(inputs, **generate_kwargs)
        if row_seeds is not None and (config is not None or kwargs.get("do_sample")):
            kwargs["row_seeds"] = row_seeds
        with torch.inference_mode():
            if config is None and "row_seeds" in kwargs:
                return generate_with(self.model, lean_decoding, kwargs)
            return generate(self.model, config=config, **kwargs)

    def check_prompt_fits(self, inputs: dict) -> None:
        """Refuse, for every method, a prompt (text and image tokens) that reaches the language model's
        `max_position_embeddings`: transformers does not truncate it, but the model was never trained
        on such positions.

        Raises:
            ValueError: the positions the prompt needs, the limit, and the fix.
        """
        text_config = getattr(self.model.config, "text_config", self.model.config)
        limit = getattr(text_config, "max_position_embeddings", None)
        positions = int(inputs["input_ids"].shape[1])
        if limit is not None and positions >= limit:
            raise prompt_too_long(positions, int(limit), "the language model's context (max_position_embeddings)",
                                  "transformers would run it past the positions the model was trained on; llava-avc "
                                  "refuses it for every method, --method none included.")

    def decode(self, sequences: torch.Tensor, inputs: dict) -> list:
        """generate's output (the prompt ids of `inputs` first) -> the stripped answers."""
        prompt_length = inputs["input_ids"].shape[1]
        texts = self.processor.tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)
        return [text.strip() for text in texts]

    @guarded
    def find_blind_tokens(self, inputs: dict, config) -> list:
        from ...decode.loop import find_blind_tokens
        from . import image_inputs
        from .adapter import HFAdapter

        extra = {name: inputs.get(name) for name in IMAGE_INPUTS if name not in ("pixel_values", "image_sizes")}
        images, image_sizes = image_inputs(self.model, inputs["pixel_values"], inputs.get("image_sizes"), extra)
        return find_blind_tokens(HFAdapter(self.model), inputs["input_ids"], images, image_sizes, config,
                                 attention_mask=inputs["attention_mask"])

    def token_grid(self, pil_image=None):
        """Image tokens per side of the base image (24 for LLaVA-1.5 at 336 px); for a family whose grid
        follows the image (Qwen), (rows, columns) of `pil_image`'s merged patch grid as its processor makes it."""
        vision = self.model.config.vision_config
        if self.family.image_info != "image_grid_thw":
            return vision.image_size // vision.patch_size
        _, rows, columns = (int(n) for n in self.processor.image_processor(images=[pil_image])["image_grid_thw"][0])
        return rows // vision.spatial_merge_size, columns // vision.spatial_merge_size

    @property
    def image_aspect_ratio(self) -> Optional[str]:
        """"pad" when the image processor pads to a square (LLaVA-1.5), "anyres" for LLaVA-NeXT and OneVision,
        "resize" for Qwen (the whole image resized to a multiple of its patch grid)."""
        if self.family.image_info == "image_sizes":
            return "anyres"
        if self.family.image_info == "image_grid_thw":
            return "resize"
        return "pad" if getattr(self.processor.image_processor, "do_pad", False) else None

    def model_id(self, model_path: str) -> str:
        return Path(model_path.rstrip("/")).name


def _expand_to_square(image, background: tuple):
    """LLaVA's `expand2square`: the image centred on a square of the background colour (its longer side)."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square
