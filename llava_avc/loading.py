"""Loading LLaVA checkpoints on top of `llava.model.builder.load_pretrained_model`.

fp32 / fp16 today; the quantized path (one BitsAndBytesConfig, mm_projector and lm_head kept
unquantized) is validated on a GPU in issue 4.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import torch


_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


class NotALlavaCheckpointError(ValueError):
    """The path is not a LLaVA checkpoint directory (the message names what is missing)."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_local_checkpoint(model_path: str) -> None:
    """For a LOCAL directory, name what is missing for it to be a LLaVA checkpoint.

    Hub ids (no such local path) are left to LLaVA's loader.
    """
    path = Path(model_path)
    if not path.exists():
        if _HUB_ID.fullmatch(model_path):
            return  # a hub id such as liuhaotian/llava-v1.5-7b: the user's machine downloads it
        raise NotALlavaCheckpointError(f"model path {model_path!r} does not exist (nor is it a hub id owner/name).")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise NotALlavaCheckpointError(f"{model_path!r} is not a LLaVA checkpoint: config.json is missing.")
    config = json.loads(config_file.read_text())
    missing = [key for key in ("mm_vision_tower", "mm_hidden_size") if key not in config]
    if missing:
        raise NotALlavaCheckpointError(
            f"{model_path!r} is not a LLaVA checkpoint: config.json lacks {', '.join(missing)}."
        )
    if "llava" not in path.resolve().name.lower():
        raise NotALlavaCheckpointError(
            f"the directory name {path.resolve().name!r} must contain 'llava': LLaVA's loader picks the "
            "model class by name. Rename the directory (e.g. llava-my-model)."
        )


def load_model(
    model_path: str,
    model_base: Optional[str] = None,
    *,
    load_4bit: bool = False,
    load_8bit: bool = False,
    device: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
):
    """Load a LLaVA checkpoint like `load_pretrained_model` and return the same 4-tuple.

    Args:
        model_path: local directory or hub id.
        model_base: base model for LoRA / projector-only checkpoints.
        load_4bit / load_8bit: bitsandbytes quantization (CUDA only with transformers 4.37).
        device: "cuda", "cpu" ...; default: cuda when available.
        dtype: compute dtype of the unquantized weights; default fp16 on CUDA, fp32 on CPU
            (LLaVA's loader forces fp16, which is ~5x slower than fp32 on a CPU).
    Returns:
        (tokenizer, model, image_processor, context_len)
    """
    if load_4bit and load_8bit:
        raise ValueError("--load-4bit and --load-8bit are exclusive; pick one.")
    device = device or default_device()
    if (load_4bit or load_8bit) and not str(device).startswith("cuda"):
        flag = "--load-4bit" if load_4bit else "--load-8bit"
        raise ValueError(
            f"{flag[2:]} loading needs a CUDA GPU; found device {device!r}. Drop {flag} to run in fp32 on the CPU."
        )
    check_local_checkpoint(model_path)
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    tokenizer, model, image_processor, context_len = load_pretrained_model(
        model_path, model_base, get_model_name_from_path(model_path),
        load_8bit=load_8bit, load_4bit=load_4bit,
        device_map="auto" if str(device).startswith("cuda") else "cpu", device=device,
    )
    dtype = dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)
    if not (load_4bit or load_8bit):
        model.to(device=device, dtype=dtype)
    model.get_vision_tower().to(device=device, dtype=dtype if not (load_4bit or load_8bit) else torch.float16)
    model.eval()
    return tokenizer, model, image_processor, context_len
