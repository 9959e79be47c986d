"""The JSON files of a llava-hf directory: config.json, preprocessor / processor / generation configs
(docs/llava-hf-format.md), and the JSON reading and writing the converter shares."""

from __future__ import annotations

import json
from pathlib import Path

from .parts import IMAGE_TOKEN, LlavaHFParts

#: processor_config.json's num_additional_image_tokens: CLIP's CLS token.
CLS_TOKENS = 1
#: preprocessor_config.json's rescale_factor: 8-bit pixel values to [0, 1].
RESCALE_FACTOR = 1 / 255

_TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                "rope_theta", "rope_scaling", "initializer_range", "attention_bias", "mlp_bias",
                "head_dim", "pretraining_tp")
_VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "image_size", "patch_size", "projection_dim", "hidden_act", "layer_norm_eps",
                  "num_channels", "initializer_range", "initializer_factor", "attention_dropout")


def _text_config(parts: LlavaHFParts, ids: dict, vocab_size: int) -> dict:
    """config.json's text_config (llama): the original LLM fields, the new vocab and special ids."""
    text = {key: parts.text_config[key] for key in _TEXT_FIELDS if parts.text_config.get(key) is not None}
    return {"model_type": "llama", **text, "vocab_size": vocab_size, "bos_token_id": ids["bos"],
            "eos_token_id": ids["eos"], "pad_token_id": ids["pad"], "tie_word_embeddings": False,
            "use_cache": True}


def _vision_config(parts: LlavaHFParts) -> dict:
    """config.json's vision_config (clip_vision_model)."""
    vision = {key: parts.vision_config[key] for key in _VISION_FIELDS if parts.vision_config.get(key) is not None}
    return {"model_type": "clip_vision_model", **vision}


def model_config(parts: LlavaHFParts, ids: dict, vocab_size: int, dtype: str) -> dict:
    """config.json: LlavaConfig, or LlavaNextConfig when ``grid_pinpoints`` is set."""
    anyres = parts.grid_pinpoints is not None
    vision = _vision_config(parts)
    config = {
        "architectures": ["LlavaNextForConditionalGeneration" if anyres else "LlavaForConditionalGeneration"],
        "model_type": "llava_next" if anyres else "llava",
        "image_token_index": ids["image"],
        "pad_token_id": ids["pad"],
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "vision_feature_layer": parts.vision_feature_layer,
        "vision_feature_select_strategy": parts.vision_feature_select_strategy,
        "image_seq_length": (vision["image_size"] // vision["patch_size"]) ** 2,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "text_config": _text_config(parts, ids, vocab_size),
        "vision_config": vision,
    }
    if anyres:
        config["image_grid_pinpoints"] = [list(p) for p in parts.grid_pinpoints]
        config["use_image_newline_parameter"] = True
    return config


def image_processor_config(parts: LlavaHFParts) -> dict:
    """preprocessor_config.json: LlavaImageProcessor (pad to square) or LlavaNextImageProcessor."""
    side = parts.image_side
    config = {
        "do_convert_rgb": True, "do_resize": True, "size": {"shortest_edge": side}, "resample": parts.resample,
        "do_center_crop": True, "crop_size": {"height": side, "width": side},
        "do_rescale": True, "rescale_factor": RESCALE_FACTOR, "do_normalize": True,
        "image_mean": list(parts.image_mean), "image_std": list(parts.image_std),
    }
    if parts.grid_pinpoints is not None:
        return {"image_processor_type": "LlavaNextImageProcessor", "processor_class": "LlavaNextProcessor",
                **config, "image_grid_pinpoints": [list(p) for p in parts.grid_pinpoints], "do_pad": True}
    return {"image_processor_type": "LlavaImageProcessor", "processor_class": "LlavaProcessor",
            **config, "do_pad": parts.pad_to_square}


def processor_config(parts: LlavaHFParts) -> dict:
    """processor_config.json: what expands <image> into the right number of image tokens."""
    anyres = parts.grid_pinpoints is not None
    return {
        "processor_class": "LlavaNextProcessor" if anyres else "LlavaProcessor",
        "image_token": IMAGE_TOKEN,
        "patch_size": parts.vision_config["patch_size"],
        "vision_feature_select_strategy": parts.vision_feature_select_strategy,
        "num_additional_image_tokens": CLS_TOKENS,
    }


def generation_config(parts: LlavaHFParts, ids: dict) -> dict:
    """generation_config.json: the original's fields with the new pad id."""
    skip = {"_from_model_config", "transformers_version"}
    kept = {key: value for key, value in parts.generation.items() if key not in skip}
    return {**kept, "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict:
    """A JSON file's contents, or {} when there is no such file."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
