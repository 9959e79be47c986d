"""Loading LLaVA checkpoints (fp32 / fp16 / 8-bit / 4-bit) on top of LLaVA's own loader.

`load_model` builds on `llava.model.builder.load_pretrained_model` and fixes what upstream gets
wrong for quantized loading:

- upstream passes `load_in_4bit=True` AND a `quantization_config`, which transformers >= 4.38
  rejects; we pass ONLY a `BitsAndBytesConfig` (nf4, double quantization, fp16 compute);
- `mm_projector` and `lm_head` stay unquantized (`llm_int8_skip_modules`), as LLaVA's training
  code does (`llava/train/train.py` skips them from 4/8-bit);
- the CLIP vision tower ends up in fp16 on the model's device (upstream leaves it fp32 with
  `device_map="auto"`);
- `.to()` is never called on a quantized model.

Every quantized load goes through ONE function, `load_quantized`: `load_model` calls it, and while
`llava_avc.patch_llava()` is active LLaVA's own loader (used by `llava.serve.cli --load-4bit` and
the eval scripts) routes its `load_4bit` / `load_8bit` to it (patches/llava_patch.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import torch

from ...errors import UserError
from ..devices import check_quantization_supported, default_device, resolve_device
from ..checkpoints import HUB_ID as _HUB_ID
from ..checkpoints import check_json_file, own_vision_tower, preflight, quiet_loading_notes

#: modules LLaVA keeps in fp16 when training/loading quantized (llava/train/train.py).
UNQUANTIZED_MODULES = ["mm_projector", "lm_head"]


class NotALlavaCheckpointError(UserError):
    """The path is not a LLaVA checkpoint directory (the message names what is missing)."""


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
    config = check_json_file(config_file)
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


def _recorded_tower(model_path: str) -> Optional[str]:
    config_file = Path(str(model_path)).expanduser() / "config.json"
    return check_json_file(config_file).get("mm_vision_tower") if config_file.is_file() else None


@contextmanager
def checkpoint_vision_tower(model_path: str, model_base: Optional[str] = None) -> Iterator[None]:
    """While LLaVA's loader runs in the block, build the vision tower from the checkpoint's own
    `vision_tower/` folder when config.json's `mm_vision_tower` is a path that no longer exists or
    another copy's tower (`llava_avc.backends.checkpoints.own_vision_tower`): copied and moved tiny
    checkpoints load their own tower. Nothing changes for any other checkpoint."""
    recorded = _recorded_tower(model_path)
    tower = own_vision_tower(recorded, model_path, model_base)
    if tower is None:
        yield
        return
    from llava.model import llava_arch

    original = llava_arch.build_vision_tower

    def build_vision_tower(vision_tower_cfg, **kwargs):
        if getattr(vision_tower_cfg, "mm_vision_tower", None) == recorded:
            vision_tower_cfg.mm_vision_tower = tower  # the loaded model's config names the tower it used
        return original(vision_tower_cfg, **kwargs)

    llava_arch.build_vision_tower = build_vision_tower
    try:
        yield
    finally:
        llava_arch.build_vision_tower = original


def quantization_config(load_4bit: bool, load_8bit: bool):
    """The ONE BitsAndBytesConfig passed to from_pretrained (never with load_in_4bit kwargs)."""
    from transformers import BitsAndBytesConfig

    if load_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=torch.float16,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
            llm_int8_skip_modules=list(UNQUANTIZED_MODULES),
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(UNQUANTIZED_MODULES))


def load_quantized(original_loader, model_path, model_base, model_name, *, load_4bit, load_8bit,
                   device_map, device, **kwargs):
    """Call LLaVA's loader (`original_loader`) with the fixed quantized settings.

    LLaVA's loader, given no load_*bit flag, adds `torch_dtype=float16` (the dtype of the
    unquantized modules) and passes our `quantization_config` through to `from_pretrained`.
    """
    check_quantization_supported(load_4bit, load_8bit, device)
    kwargs["quantization_config"] = quantization_config(load_4bit, load_8bit)
    with checkpoint_vision_tower(model_path, model_base):
        tokenizer, model, image_processor, context_len = original_loader(
            model_path, model_base, model_name, load_8bit=False, load_4bit=False,
            device_map=device_map, device=device, **kwargs,
        )
    vision_device = device if not str(device).startswith("cuda") else model.get_model().embed_tokens.weight.device
    model.get_vision_tower().to(device=vision_device, dtype=torch.float16)  # the tower is never quantized
    return tokenizer, model, image_processor, context_len


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
        model_path: local directory or hub id (LoRA directories with `model_base` too).
        model_base: base model for LoRA / projector-only checkpoints.
        load_4bit / load_8bit: bitsandbytes nf4 / int8 (CUDA; CPU with transformers >= 4.53 and
            bitsandbytes >= 0.48).
        device: "cuda", "cpu" ...; default: cuda when available.
        dtype: dtype of the unquantized model; default fp16 on CUDA, fp32 on CPU (LLaVA's loader
            forces fp16, which is ~5x slower than fp32 on a CPU). Ignored when quantized (fp16).
    Returns:
        (tokenizer, model, image_processor, context_len)
    Raises:
        ValueError: both flags, quantization impossible here, not a LLaVA checkpoint.
    """
    check_quantization_supported(load_4bit, load_8bit, device or default_device())
    device = resolve_device(device)
    check_local_checkpoint(model_path)
    preflight(model_path, model_base)
    from llava.mm_utils import get_model_name_from_path
    from llava.model import builder

    # Patched or not, LLaVA's loader called WITHOUT load_4bit/load_8bit is upstream's own code path
    # (patch_llava's wrapper only reroutes those flags), so this works either way.
    loader = builder.load_pretrained_model
    name = get_model_name_from_path(model_path)
    device_map = "auto" if str(device).startswith("cuda") else device
    if load_4bit or load_8bit:
        with quiet_loading_notes():
            loaded = load_quantized(loader, model_path, model_base, name, load_4bit=load_4bit, load_8bit=load_8bit,
                                    device_map=device_map, device=device)
    else:
        with checkpoint_vision_tower(model_path, model_base), quiet_loading_notes():
            loaded = loader(model_path, model_base, name, device_map=device_map, device=device)
        dtype = dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)
        loaded[1].to(device=device, dtype=dtype)
    loaded[1].eval()
    return loaded
