"""Reading an original LLaVA checkpoint: finding its files (config, weight shards, tokenizer, the CLIP
vision tower, locally or in the hub cache), refusing what llava-hf cannot represent, and gathering it all
into `LlavaHFParts` (docs/llava-hf-format.md)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

import torch

from ....errors import UserError
from ...checkpoints import HUB_ID, cached_hub_snapshot, own_vision_tower
from .config import read_json
from .parts import (DEFAULT_MODEL_MAX_LENGTH, DEFAULT_VISION_FEATURE_LAYER, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                    PIL_BICUBIC, LlavaHFParts)

#: Prefix of the CLIP tower's tensors inside LLaVA's own shards (a trained vision tower).
_VISION_IN_SHARDS = "model.vision_tower.vision_tower."
#: model_max_length values above this are the "no limit" sentinels of tokenizer configs (e.g. 1e30).
MAX_MODEL_MAX_LENGTH = 10**9


def original_config(original: Path) -> dict:
    """config.json of an original LLaVA checkpoint, or a one-line ValueError saying what is wrong."""
    config_file = original / "config.json"
    if not original.is_dir() or not config_file.is_file():
        raise UserError(f"{original} is not an original LLaVA checkpoint: no config.json there; "
                        "pass the directory that holds config.json, the weights and tokenizer.model")
    config = read_json(config_file)
    if config.get("model_type") != "llava_llama" or "mm_vision_tower" not in config:
        raise UserError(
            f"{original} is not an original LLaVA checkpoint: config.json has model_type "
            f"{config.get('model_type')!r} (expected 'llava_llama' with mm_vision_tower); "
            "llava-hf checkpoints need no conversion, LLaVA's mistral/mpt variants are not supported")
    if not (original / "tokenizer.model").is_file():
        raise UserError(f"{original} has no tokenizer.model; copy the sentencepiece model of the "
                        "checkpoint's LLM there")
    return config


def check_supported(config: dict) -> None:
    """Refuse LLaVA options that llava-hf cannot represent (one line each)."""
    checks = [
        ("mm_projector_type", config.get("mm_projector_type", "linear"), ("mlp2x_gelu",)),
        ("mm_use_im_start_end", bool(config.get("mm_use_im_start_end", False)), (False,)),
        ("mm_vision_select_feature", config.get("mm_vision_select_feature", "patch"), ("patch", "cls_patch")),
    ]
    for name, value, allowed in checks:
        if value not in allowed:
            raise UserError(f"{name}={value!r} cannot be converted: llava-hf supports {list(allowed)}")
    anyres = config.get("image_aspect_ratio") == "anyres"
    merge = config.get("mm_patch_merge_type", "flat")
    if anyres != (merge == "spatial_unpad"):
        raise UserError(
            f"image_aspect_ratio={config.get('image_aspect_ratio')!r} with mm_patch_merge_type={merge!r} "
            "cannot be converted: llava-hf has anyres + spatial_unpad (LlavaNext) or pad/square + flat (Llava)")


def _vision_tower_dir(name: str, original: Path) -> Path:
    """``mm_vision_tower``: a local directory (absolute, or relative to the checkpoint) or a hub id
    already in the local Hugging Face cache. A tiny checkpoint's own ``vision_tower/`` folder wins over
    a recorded path that is gone or another copy's (`llava_avc.backends.checkpoints.own_vision_tower`)."""
    own = own_vision_tower(name, original)
    if own is not None:
        return Path(own)
    for candidate in (Path(name).expanduser(), original / name):
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    snapshot = cached_hub_snapshot(name) if HUB_ID.fullmatch(name) else None
    if snapshot is None:
        raise UserError(
            f"vision tower {name!r} (config.json's mm_vision_tower) is neither a local directory nor in the "
            f"local Hugging Face cache; download it once with `hf download {name}` "
            "(the command of huggingface_hub), or set mm_vision_tower to a local copy")
    return snapshot


def _weight_files(original: Path) -> list:
    """The LLM shards: *.safetensors, else pytorch_model*.bin (top level only)."""
    files = sorted(original.glob("*.safetensors")) or sorted(original.glob("pytorch_model*.bin"))
    if not files:
        raise UserError(f"{original} has no weights (*.safetensors or pytorch_model*.bin)")
    return files


def _load_tensors(files: list) -> dict:
    """All tensors of ``files`` on CPU in their stored dtype."""
    from safetensors.torch import load_file

    tensors = {}
    for path in files:
        if path.suffix == ".safetensors":
            tensors.update(load_file(str(path)))
        else:
            tensors.update(torch.load(str(path), map_location="cpu", weights_only=True))
    return tensors


def _split_original(tensors: dict) -> tuple:
    """Split LLaVA's state dict into (llm, projector, image_newline, vision-from-shards)."""
    llm, projector, vision, newline = {}, {}, {}, None
    for key, value in tensors.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue  # a buffer that old transformers saved; recomputed at load
        if key.startswith("model.mm_projector."):
            projector[key.removeprefix("model.mm_projector.")] = value
        elif key.startswith(_VISION_IN_SHARDS):
            if not key.endswith("position_ids"):  # a buffer old transformers saved
                vision[key.removeprefix(_VISION_IN_SHARDS)] = value
        elif key == "model.image_newline":
            newline = value
        else:
            llm[key] = value
    missing = [key for key in ("model.embed_tokens.weight", "lm_head.weight") if key not in llm]
    if missing or not projector:
        raise UserError(f"the weights lack {missing or ['model.mm_projector.*']}; is this a complete "
                        "(merged, non-LoRA) LLaVA checkpoint?")
    return llm, projector, newline, vision


def _vision_weights(tower: Path, dtype: torch.dtype) -> tuple:
    """(CLIPVisionConfig dict, CLIP vision tensors) of the tower, through transformers' own loader."""
    from transformers import CLIPVisionModel

    model = CLIPVisionModel.from_pretrained(str(tower), dtype=dtype)
    return model.config.to_dict(), {key: value for key, value in model.state_dict().items()
                                    if not key.endswith("position_ids")}


def _tower_image_processor(tower: Path, vision_config: dict) -> dict:
    """mean / std / resample / side of the tower's CLIP preprocessor_config.json (OpenAI defaults)."""
    config = read_json(tower / "preprocessor_config.json")
    crop = config.get("crop_size", vision_config["image_size"])
    side = crop["height"] if isinstance(crop, dict) else int(crop)
    return {"image_mean": config.get("image_mean", OPENAI_CLIP_MEAN),
            "image_std": config.get("image_std", OPENAI_CLIP_STD),
            "resample": config.get("resample", PIL_BICUBIC), "image_side": side}


def _grid_pinpoints(config: dict) -> Optional[list]:
    """LLaVA's image_grid_pinpoints ((width, height), maybe a string) as transformers' [h, w] pairs."""
    if config.get("image_aspect_ratio") != "anyres":
        return None
    pinpoints = config.get("image_grid_pinpoints")
    if isinstance(pinpoints, str):
        pinpoints = ast.literal_eval(pinpoints)
    if not pinpoints:
        raise UserError("image_aspect_ratio is 'anyres' but config.json has no image_grid_pinpoints")
    return [[int(height), int(width)] for width, height in pinpoints]


def _content(token) -> Optional[str]:
    """A token of tokenizer_config.json, written as a string or as an AddedToken dict."""
    return token.get("content") if isinstance(token, dict) else token


def _added_tokens(original: Path, config: dict, n_pieces: int) -> dict:
    """{id: (content, special)} of the tokens added after the ``n_pieces`` sentencepiece pieces."""
    decoder = config.get("added_tokens_decoder", {})
    added = {int(i): (t["content"], bool(t.get("special", True))) for i, t in decoder.items() if int(i) >= n_pieces}
    added.update({i: (c, True) for c, i in read_json(original / "added_tokens.json").items() if i >= n_pieces})
    if sorted(added) != list(range(n_pieces, n_pieces + len(added))):
        raise UserError(f"added token ids {sorted(added)} do not follow the {n_pieces} sentencepiece pieces")
    return added


def _tokenizer_settings(original: Path, n_pieces: int) -> dict:
    """Added tokens (beyond the sentencepiece pieces), pad token, add_bos_token, model_max_length."""
    config = read_json(original / "tokenizer_config.json")
    added = _added_tokens(original, config, n_pieces)
    pad, unk = _content(config.get("pad_token")), _content(config.get("unk_token", "<unk>"))
    keep_pad = pad if pad and pad != unk and pad in {c for c, _ in added.values()} else None
    max_length = min(config.get("model_max_length", DEFAULT_MODEL_MAX_LENGTH), MAX_MODEL_MAX_LENGTH)
    return {"added_tokens": [added[i] for i in sorted(added)], "pad_token": keep_pad,
            "add_bos_token": bool(config.get("add_bos_token", True)), "model_max_length": int(max_length)}


def original_parts(original: Path, config: dict) -> LlavaHFParts:
    """Read an original checkpoint into ``LlavaHFParts``."""
    import sentencepiece as spm

    llm, projector, newline, shard_vision = _split_original(_load_tensors(_weight_files(original)))
    tower = _vision_tower_dir(config["mm_vision_tower"], original)
    vision_config, vision = _vision_weights(tower, llm["lm_head.weight"].dtype)
    if shard_vision and config.get("unfreeze_mm_vision_tower"):
        vision = shard_vision  # LLaVA loads these over the tower's weights (trained vision tower)
    proto = (original / "tokenizer.model").read_bytes()
    n_pieces = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    pinpoints = _grid_pinpoints(config)
    if pinpoints is not None and newline is None:
        raise UserError("an anyres / spatial_unpad checkpoint must have model.image_newline in its weights")
    return LlavaHFParts(
        text_config=config, vision_config=vision_config, llm=llm, projector=projector, vision=vision,
        spm_proto=proto, **_tokenizer_settings(original, n_pieces),
        **_tower_image_processor(tower, vision_config),
        vision_feature_layer=int(config.get("mm_vision_select_layer", DEFAULT_VISION_FEATURE_LAYER)),
        vision_feature_select_strategy="full" if config.get("mm_vision_select_feature") == "cls_patch" else "default",
        pad_to_square=config.get("image_aspect_ratio") == "pad",
        grid_pinpoints=pinpoints, image_newline=newline,
        generation=read_json(original / "generation_config.json"),
    )
