"""Prompts and image tensors for the original LLaVA codebase, built with LLaVA's public script API
(`llava.conversation`, `llava.mm_utils`, `llava.constants`), exactly as `llava.eval.run_llava` does."""

from __future__ import annotations

import torch

from ...errors import UserError


#: The conversation template of `ask` and of the protocols' LLaVA-1.5 prompts when none is named.
DEFAULT_CONV_MODE = "llava_v1"


def check_conv_mode(conv_mode) -> None:
    """Refuse a `--conv-mode` that is not one of LLaVA's `conv_templates` (None: the default, llava_v1).

    Raises:
        ValueError: the value and the templates LLaVA has.
    """
    from llava.conversation import conv_templates

    if conv_mode is not None and conv_mode not in conv_templates:
        raise UserError(f"--conv-mode (={conv_mode!r}) is not one of LLaVA's conversation templates; choose one of "
                        f"{', '.join(sorted(conv_templates))}.")


def build_prompt(query: str, conv_mode: str, model_config) -> str:
    """The LLaVA prompt for one image and one question, as llava.eval.run_llava builds it."""
    from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
    from llava.conversation import conv_templates

    check_conv_mode(conv_mode)
    image_token = DEFAULT_IMAGE_TOKEN
    if getattr(model_config, "mm_use_im_start_end", False):
        image_token = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], image_token + "\n" + query)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def conversation_prompt(text: str, conv_mode: str, image_count: int) -> str:
    """`text` as the user's turn of conversation template `conv_mode`, after `image_count` '<image>' tokens
    unless it has one already (how lmms-eval's `llava` model builds its prompts; no im_start/im_end tokens)."""
    import copy

    from llava.constants import DEFAULT_IMAGE_TOKEN
    from llava.conversation import conv_templates

    if image_count and DEFAULT_IMAGE_TOKEN not in text:
        text = " ".join([DEFAULT_IMAGE_TOKEN] * image_count) + "\n" + text
    template = conv_templates[conv_mode]  # a llama_3 one holds objects `copy()` would share
    conv = copy.deepcopy(template) if "llama_3" in conv_mode else template.copy()
    conv.append_message(conv.roles[0], text)
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


def prepare_images(pil_images: list, image_processor, model, model_config=None, dtype=None):
    """LLaVA's `process_images` on the model's device, in `dtype` (default: the model's dtype).

    Returns a tensor, or a list of tensors for anyres images of different sizes. `model_config`
    overrides the config whose `image_aspect_ratio` decides the preprocessing.
    """
    from llava.mm_utils import process_images

    dtype = dtype or model.dtype
    images = process_images(pil_images, image_processor, model_config or model.config)
    if torch.is_tensor(images):
        return images.to(model.device, dtype=dtype)
    return [image.to(model.device, dtype=dtype) for image in images]


def model_name(model_path: str) -> str:
    """LLaVA's name for a checkpoint path (what its loader and answer files use)."""
    from llava.mm_utils import get_model_name_from_path

    return get_model_name_from_path(model_path)
