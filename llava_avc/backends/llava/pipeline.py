"""A loaded original-LLaVA checkpoint with what `llava-avc ask` and `llava-avc eval` need.

`LlavaPipeline` turns questions and PIL images into one left-padded generate call on a
`LlavaLlamaForCausalLM` (prompts as `llava.eval.run_llava` builds them; the backend's `generate`, no
class patched) and decodes the answers.
The command line and the eval harness talk to a pipeline, never to LLaVA directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Optional

import torch

from . import prompts
from . import generate as backend_generate
from . import lean_generate as backend_lean_generate
from .adapter import LlavaAdapter
from .loading import load_model
from ..base import prompt_too_long, quiet_length_warning


def _most_features(model) -> int:
    """An upper bound of the image features one anyres image gives (every tile of the largest grid
    pinpoint, the base image, and one newline per row of features)."""
    import ast

    try:
        tower = model.get_vision_tower()
        side = int(tower.config.image_size)
        pinpoints = getattr(model.config, "image_grid_pinpoints", None) or [[side, side]]
        if isinstance(pinpoints, str):
            pinpoints = ast.literal_eval(pinpoints)
        tiles = max((int(w) // side) * (int(h) // side) for w, h in pinpoints) + 1
        return tiles * int(tower.num_patches) + tiles * int(tower.num_patches_per_side) * 2
    except (AttributeError, TypeError, ValueError, SyntaxError):
        return 1 << 30  # unknown: the caller merges the image to know exactly


@dataclass
class LlavaPipeline:
    """`load_pretrained_model`'s 4-tuple, with prompt building, generation and decoding."""

    tokenizer: Any
    model: Any
    image_processor: Any
    context_len: int

    def __post_init__(self):
        # LLaVA re-pads the batch after merging the image; its own generate must pad on the left like our
        # batches. Set once for the pipeline's model (the decode loop left-aligns whatever the setting).
        self.model.config.tokenizer_padding_side = "left"

    @classmethod
    def load(cls, model_path: str, model_base: Optional[str] = None, *, device: Optional[str] = None,
             load_4bit: bool = False, load_8bit: bool = False) -> "LlavaPipeline":
        """Load a checkpoint with `llava_avc.backends.llava.loading.load_model`."""
        pipeline = cls(*load_model(model_path, model_base, device=device, load_4bit=load_4bit, load_8bit=load_8bit))
        quiet_length_warning(pipeline.tokenizer)  # check_prompt_fits says it in one line
        return pipeline

    @property
    def device(self) -> torch.device:
        return self.model.device

    check_conv_mode = staticmethod(prompts.check_conv_mode)

    def preprocessing(self, conv_mode: Optional[str] = None, center_crop: bool = False) -> dict:
        """What `inputs` makes of the prompt and the image for these settings (for run records)."""
        aspect = self.image_aspect_ratio
        if aspect == "pad":
            image = ("CLIP resize + center crop, no pad to square" if center_crop else
                     "pad to a square with the image mean (LLaVA's process_images), then CLIP resize + center crop")
        elif str(aspect or "").startswith("anyres"):
            image = "LLaVA's process_images anyres tiles (a center crop does not apply)"
        else:
            image = f"LLaVA's process_images with image_aspect_ratio {aspect!r}: CLIP resize + center crop"
        return {"backend": "llava", "model_type": "llava_llama",
                "prompt": f"LLaVA conversation template {conv_mode or prompts.DEFAULT_CONV_MODE!r}", "image": image}

    def inputs(self, texts: list, pil_images: list, conv_mode: Optional[str] = None, center_crop: bool = False) -> dict:
        """One question per image -> `generate` inputs: left-padded ids, mask, images, image_sizes
        (`conv_mode` None: LLaVA's llava_v1)."""
        conv_mode = conv_mode or prompts.DEFAULT_CONV_MODE
        rows = [prompts.prompt_ids(self.tokenizer, prompts.build_prompt(text, conv_mode, self.model.config))
                for text in texts]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask = prompts.left_padded_ids(rows, pad)
        model_config = self.model.config
        if center_crop and getattr(model_config, "image_aspect_ratio", None) == "pad":
            model_config = SimpleNamespace(image_aspect_ratio="center-crop")  # CLIP resize + center crop
        images = prompts.prepare_images(pil_images, self.image_processor, self.model, model_config)
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device), "images": images,
                "image_sizes": [image.size for image in pil_images]}

    def generate(self, inputs: dict, config=None, row_seeds=None, **generate_kwargs):
        """`config`'s method in the decode loop, or (None) LLaVA's own generate (`upstream`; no class is
        patched, so pipelines may decode in several threads at once).

        `row_seeds` (one int per row) give each row its own noise and sampling generators, so that a
        row's answer does not depend on its batch; plain SAMPLED decoding then runs in llava-avc's
        one-branch loop (upstream generate draws from torch's global RNG), greedy stays upstream's.
        """
        self.check_prompt_fits(inputs)
        kwargs = dict(generate_kwargs, use_cache=True, attention_mask=inputs["attention_mask"],
                      images=inputs["images"], image_sizes=inputs["image_sizes"])
        if row_seeds is not None and (config is not None or kwargs.get("do_sample")):
            kwargs["row_seeds"] = row_seeds
        with torch.inference_mode():
            if config is None and "row_seeds" in kwargs:
                return backend_lean_generate(self.model, inputs["input_ids"], kwargs.pop("images"),
                                             kwargs.pop("image_sizes"), **kwargs)
            return backend_generate(self.model, inputs["input_ids"], config, **kwargs)

    def check_prompt_fits(self, inputs: dict) -> None:
        """Refuse, for every method (none included), a prompt whose text and image features reach
        LLaVA's `tokenizer_model_max_length`: upstream LLaVA cuts such a prompt there silently and
        answers from what is left; the contrastive methods cannot (the image span is lost).

        Raises:
            ValueError: the positions the prompt needs, the limit, and the fix.
        """
        limit = getattr(self.model.config, "tokenizer_model_max_length", None)
        if limit is None:
            return
        text = int((inputs["attention_mask"].sum(-1) - 1).max())  # real tokens minus the image placeholder
        per_image = int(self.model.get_vision_tower().num_patches)  # the fewest features an image gives
        upstream = ("upstream LLaVA would cut the prompt there silently and answer from what is left; llava-avc "
                    "refuses it for every method, --method none included.")
        if text + per_image >= limit:
            raise prompt_too_long(text + per_image, limit, "LLaVA's context (tokenizer_model_max_length)", upstream)
        if str(self.image_aspect_ratio or "").startswith("anyres") and text + _most_features(self.model) >= limit:
            LlavaAdapter(self.model).merge_image(inputs["input_ids"], inputs["attention_mask"], inputs["images"],
                                                 inputs["image_sizes"])  # exact: raises when LLaVA truncates

    def decode(self, sequences: torch.Tensor, inputs: dict) -> list:
        """LLaVA's generate output (only the new tokens; a BOS column on transformers 4.37) -> stripped
        answer strings. `inputs` is unused: LLaVA's output does not repeat the prompt."""
        return [text.strip() for text in self.tokenizer.batch_decode(sequences, skip_special_tokens=True)]

    def find_blind_tokens(self, inputs: dict, config) -> list:
        """The blind tokens AVC would use for each row of `inputs` (the decoder's own code path)."""
        from ...decode.loop import find_blind_tokens

        return find_blind_tokens(LlavaAdapter(self.model), inputs["input_ids"], inputs["images"],
                                 inputs["image_sizes"], config, attention_mask=inputs["attention_mask"])

    def token_grid(self, pil_image=None) -> int:
        """Image tokens per side of the base image (24 for LLaVA-1.5 at 336 px), whatever the image."""
        return self.model.get_vision_tower().num_patches_per_side

    @property
    def image_aspect_ratio(self) -> Optional[str]:
        return getattr(self.model.config, "image_aspect_ratio", None)

    def model_id(self, model_path: str) -> str:
        """The `model_id` LLaVA's answer files carry for this checkpoint path."""
        return prompts.model_name(model_path)
