"""One question about one image: the library side of `llava-avc ask` (and of the README demo)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .config import AVCConfig
from .decode import find_blind_tokens
from .method_flags import default_config


@dataclass
class AskResult:
    answer: str
    method: str
    blind_tokens: Optional[list] = None
    details: dict = field(default_factory=dict)

    def report_lines(self) -> list[str]:
        """Human-readable facts about the run (printed to stderr by the CLI)."""
        lines = [f"method: {self.method}"]
        for row, record in enumerate(self.blind_tokens or []):
            lines.append(
                f"blind tokens: {record.num_blind} of {len(record.blind)} image tokens "
                f"(span {record.image_span[0]}..{record.image_span[1]}), selected layers {record.layers}"
            )
        if "heatmap" in self.details:
            lines.append(f"heatmap: {self.details['heatmap']}")
        return lines


def load_image(path: str):
    """Open an image file as RGB, with a clear error for a missing or unreadable file."""
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise FileNotFoundError(f"image file {path!r} does not exist.")
    try:
        return Image.open(path).convert("RGB")
    except UnidentifiedImageError as error:
        raise ValueError(f"{path!r} is not an image PIL can read ({error}).") from error


def build_prompt(query: str, conv_mode: str, model_config) -> str:
    """The LLaVA prompt for one image and one question, as llava.eval.run_llava builds it."""
    from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
    from llava.conversation import conv_templates

    if conv_mode not in conv_templates:
        raise ValueError(f"unknown --conv-mode {conv_mode!r}; choose one of {sorted(conv_templates)}.")
    image_token = DEFAULT_IMAGE_TOKEN
    if getattr(model_config, "mm_use_im_start_end", False):
        image_token = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], image_token + "\n" + query)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    """(T,) ids of a LLaVA prompt; its '<image>' becomes the IMAGE_TOKEN_INDEX placeholder."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token

    return tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")


def left_padded_ids(rows: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D id tensors into (B, T) ids and the (B, T) long attention mask generate takes."""
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, length - len(row):] = row
        mask[index, length - len(row):] = 1
    return ids, mask


def prepare_images(pil_images: list, image_processor, model, model_config=None):
    """LLaVA's `process_images` on the model's device and dtype.

    Returns a tensor, or a list of tensors for anyres images of different sizes. `model_config`
    overrides the config whose `image_aspect_ratio` decides the preprocessing.
    """
    from llava.mm_utils import process_images

    images = process_images(pil_images, image_processor, model_config or model.config)
    if torch.is_tensor(images):
        return images.to(model.device, dtype=model.dtype)
    return [image.to(model.device, dtype=model.dtype) for image in images]


def ask(model_path: str, image: str, query: str, *, method: str = "avc", model_base: Optional[str] = None,
        conv_mode: str = "llava_v1", device: Optional[str] = None, temperature: float = 0.0,
        top_p: Optional[float] = None, max_new_tokens: int = 64, seed: int = 42, config=None,
        loaded=None, load_4bit: bool = False, load_8bit: bool = False,
        heatmap: Optional[str] = None) -> AskResult:
    """Load (or reuse `loaded`), build the llava_v1 prompt, generate, decode the answer."""
    from .loading import load_model
    from .patches.llava_patch import patched

    config = config if config is not None else default_config(method)
    pil_image = load_image(image)
    tokenizer, model, image_processor, _ = loaded or load_model(
        model_path, model_base, device=device, load_4bit=load_4bit, load_8bit=load_8bit)
    prompt = build_prompt(query, conv_mode, model.config)
    input_ids = prompt_ids(tokenizer, prompt)
    input_ids = input_ids.unsqueeze(0).to(model.device)
    images = prepare_images([pil_image], image_processor, model)
    torch.manual_seed(seed)
    kwargs = dict(images=images, image_sizes=[pil_image.size], max_new_tokens=max_new_tokens,
                  do_sample=temperature > 0, use_cache=True, return_dict_in_generate=True)
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p)
    if config is not None:
        kwargs[config.method] = config
    with patched():
        output = model.generate(input_ids, **kwargs)
    answer = tokenizer.batch_decode(output.sequences, skip_special_tokens=True)[0].strip()
    records = getattr(output, "blind_tokens", None)
    details = {}
    if heatmap:
        records = records or find_blind_tokens(model, input_ids, images, [pil_image.size], AVCConfig())
        details["heatmap"] = draw_heatmap(model, pil_image, records[0], heatmap)
    return AskResult(answer, method if config is not None else "none", records, details)


def draw_heatmap(model, pil_image, record, out_path: str) -> str:
    """Save the blind-token picture of one record (LLaVA-1.6 anyres: the base image's grid)."""
    from .heatmap import draw_blind_tokens

    draw_blind_tokens(pil_image, record, grid=model.get_vision_tower().num_patches_per_side, out_path=out_path,
                      image_aspect_ratio=getattr(model.config, "image_aspect_ratio", None))
    return str(out_path)
