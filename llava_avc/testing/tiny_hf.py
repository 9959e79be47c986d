"""Offline factory for small random llava-hf checkpoints (transformers' own LLaVA classes).

``make_tiny_llava_hf(DIR)`` writes a complete llava-hf directory, built from configs with random
weights (no ``llava`` import), that transformers 4.57 and 5.x open offline::

    from transformers import AutoProcessor, LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration.from_pretrained(DIR)          # preset "tiny"
    processor = AutoProcessor.from_pretrained(DIR)                       # LlavaProcessor

The files are those of ``llava_avc.backends.hf.convert.write_llava_hf`` (the converter's writer):
config.json, model.safetensors (fp16, llava-hf hub key layout), generation_config.json, the
tokenizer (tokenizer.json from the same sentencepiece model as the original tiny checkpoint:
``llava_avc.testing.tiny``'s BPE trained on the versioned corpus, so text tokenizes exactly as
there), preprocessor_config.json, processor_config.json, chat_template.jinja (LLaVA's llava_v1
prompt), plus ``tiny_llava_build.json`` (provenance, ``"format": "hf"``).

Presets (the original ``tiny`` presets' shapes, in llava-hf form):

============  =============================================  =====================================
preset        model                                           image tokens per image
============  =============================================  =====================================
tiny          LlavaForConditionalGeneration: Llama 64/192/    576 (CLIP 336 px, patch 14, layer -2,
              4L/4H, CLIP 64/128/3L/4H                         CLS dropped); LLaVA-1.5 pad-to-square
tiny-anyres   LlavaNextForConditionalGeneration, same sizes,  variable: 64 base + unpadded grid +
              CLIP 112 px, pinpoints [[112,224],[224,112],    one newline per row
              [224,224]]
============  =============================================  =====================================

Vocabulary: the 4000 trained pieces, ``<image>`` (id 4000) and ``<pad>`` (id 4001), rows padded
to 4032 (a multiple of 64, as transformers' conversion script pads) with the mean row.

Weights are drawn from one ``torch.Generator(seed)`` in a fixed order, by explicit rules, so the
same seed gives the same tensors on every transformers version: LLM linears and embeddings
N(0, 0.15), RMSNorm 1, lm_head N(0, 0.15) x 4, projector N(0, 0.15) with zero biases (the
original tiny preset's init: see the measurement note in ``llava_avc.testing.tiny``; attention
over the image is peaked, a few tokens get several times the mean), CLIP as CLIP's own
``_init_weights`` (initializer_range 0.02, factor 1), ``image_newline`` N(0, 1/sqrt(hidden)).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import UserError
from ..backends.hf.convert import LlavaHFParts, staging_dir, verify_hf_checkpoint, write_llava_hf
from . import tiny

__all__ = ["HF_PRESETS", "hf_preset_parts", "make_tiny_llava_hf"]

#: The presets this factory builds (a subset of ``tiny.PRESETS``: the 7B shape is not built here).
HF_PRESETS = ("tiny", "tiny-anyres")


# ------------------------------------------------------------------------------ tensor specs
def _llm_shapes(text_config: dict) -> dict:
    """``name -> shape`` of LlamaForCausalLM's parameters (``model.*``, ``lm_head.weight``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**text_config))
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def _vision_shapes(vision_config: dict) -> dict:
    """``name -> shape`` of CLIPVisionModel's parameters, named ``vision_model.*`` on every version."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):
        model = CLIPVisionModel(CLIPVisionConfig(**vision_config))
    return {"vision_model." + name.removeprefix("vision_model."): tuple(p.shape)
            for name, p in model.named_parameters()}


# ------------------------------------------------------------------------------- init rules
def _normal(shape, std: float, gen: torch.Generator) -> torch.Tensor:
    """fp32 N(0, std) of ``shape`` from ``gen``."""
    return torch.empty(shape).normal_(0.0, std, generator=gen)


def _llm_tensor(name: str, shape, std: float, lm_head_scale: float, gen) -> torch.Tensor:
    """Llama's init as in the original tiny preset: norms 1, biases 0, the rest N(0, std)."""
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    if name.endswith(".bias"):
        return torch.zeros(shape)
    scale = lm_head_scale if name == "lm_head.weight" else 1.0
    return _normal(shape, std, gen) * scale


def _clip_std(name: str, config: dict):
    """The std of CLIP's ``_init_weights`` for parameter ``name``; None for ones/zeros tensors."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    factor, init_range = config.get("initializer_factor", 1.0), config.get("initializer_range", 0.02)
    in_proj = hidden ** -0.5 * (2 * layers) ** -0.5 * factor
    rules = {
        "embeddings.class_embedding": hidden ** -0.5 * factor,
        "embeddings.patch_embedding.weight": init_range * factor,
        "embeddings.position_embedding.weight": init_range * factor,
        "self_attn.q_proj.weight": in_proj, "self_attn.k_proj.weight": in_proj,
        "self_attn.v_proj.weight": in_proj, "self_attn.out_proj.weight": hidden ** -0.5 * factor,
        "mlp.fc1.weight": (2 * hidden) ** -0.5 * factor, "mlp.fc2.weight": in_proj,
    }
    for suffix, std in rules.items():
        if name.endswith(suffix):
            return std
    if name.endswith(".bias") or ("norm" in name and name.endswith(".weight")):
        return None
    raise RuntimeError(f"no init rule for CLIP parameter {name!r}; add one to _clip_std in tiny_hf.py")


def _clip_tensor(name: str, shape, config: dict, gen) -> torch.Tensor:
    """One CLIP vision tensor: LayerNorm weights 1, biases 0, the rest N(0, CLIP's std)."""
    std = _clip_std(name, config)
    if std is not None:
        return _normal(shape, std, gen)
    return torch.ones(shape) if name.endswith(".weight") else torch.zeros(shape)


def _random_weights(text_config: dict, vision_config: dict, anyres: bool, lm_head_scale: float,
                    seed: int) -> dict:
    """Every tensor (fp16) in the original naming: ``llm``, ``projector``, ``vision``, ``image_newline``.

    One generator, fixed order: vision (sorted names), projector, LLM (sorted names), image_newline.
    """
    gen = torch.Generator().manual_seed(seed)
    std, hidden, vision_hidden = text_config["initializer_range"], text_config["hidden_size"], vision_config["hidden_size"]
    vision = {name: _clip_tensor(name, shape, vision_config, gen)
              for name, shape in sorted(_vision_shapes(vision_config).items())}
    projector = {"0.weight": _normal((hidden, vision_hidden), std, gen), "0.bias": torch.zeros(hidden),
                 "2.weight": _normal((hidden, hidden), std, gen), "2.bias": torch.zeros(hidden)}
    llm = {name: _llm_tensor(name, shape, std, lm_head_scale, gen)
           for name, shape in sorted(_llm_shapes(text_config).items())}
    newline = _normal((hidden,), 1 / math.sqrt(hidden), gen) if anyres else None
    return {"llm": _fp16(llm), "projector": _fp16(projector), "vision": _fp16(vision),
            "image_newline": None if newline is None else newline.to(torch.float16)}


def _fp16(tensors: dict) -> dict:
    """The same tensors in float16 (the checkpoint's dtype, as the original tiny checkpoints)."""
    return {key: value.to(torch.float16) for key, value in tensors.items()}


# ----------------------------------------------------------------------------------- presets
def _preset_configs(preset: str) -> tuple:
    """(LlamaConfig fields, CLIPVisionConfig fields, LLaVA fields, init) of an original tiny preset."""
    if preset not in HF_PRESETS:
        raise UserError(f"unknown preset {preset!r} for the llava-hf format; choose one of {list(HF_PRESETS)}")
    spec = tiny.PRESETS[preset]
    text = {**tiny._LLM_COMMON, **spec["llm"]}
    llava = {**tiny._LLAVA_COMMON, **spec["llava"]}
    return text, dict(spec["vision"]), llava, spec["init"]


def hf_preset_parts(preset: str = "tiny", seed: int = 0) -> LlavaHFParts:
    """``LlavaHFParts`` of a random checkpoint for ``preset`` (what ``make_tiny_llava_hf`` writes)."""
    text, vision, llava, init = _preset_configs(preset)
    anyres = llava["image_aspect_ratio"] == "anyres"
    weights = _random_weights(text, vision, anyres, init["lm_head_scale"], seed)
    pinpoints = [[height, width] for width, height in llava["image_grid_pinpoints"]] if anyres else None
    return LlavaHFParts(
        text_config=text, vision_config=vision, llm=weights["llm"], projector=weights["projector"],
        vision=weights["vision"], image_newline=weights["image_newline"],
        spm_proto=tiny._train_spm_proto(text["vocab_size"]),
        image_side=vision["image_size"], model_max_length=llava["tokenizer_model_max_length"],
        vision_feature_layer=llava["mm_vision_select_layer"], pad_to_square=llava["image_aspect_ratio"] == "pad",
        grid_pinpoints=pinpoints, generation={"bos_token_id": 1, "eos_token_id": 2},
    )


def _build_info(preset: str, seed: int) -> dict:
    """Provenance: the original factory's fields, the format and the transformers version."""
    import transformers

    info = tiny._build_info(preset, seed, {})
    del info["config_overrides"]
    return {"format": "hf", **info, "transformers_version": transformers.__version__}


# -------------------------------------------------------------------------------- public API
def make_tiny_llava_hf(out_dir, *, preset: str = "tiny", seed: int = 0, force: bool = False) -> Path:
    """Write a random llava-hf checkpoint for ``preset`` to ``out_dir``; return its absolute path.

    The same ``seed`` gives identical weights (on every transformers version). The build happens
    in a hidden sibling directory, is loaded once on the meta device with strict key checks, and
    only then renamed onto ``out_dir`` (with ``force`` the old contents go just before that rename,
    so a failed build keeps them). Raises UserError for an unknown preset and for
    an existing non-empty directory unless ``force``.
    """
    final = Path(out_dir).expanduser().resolve()
    tiny._check_target(final, force)
    parts = hf_preset_parts(preset, seed)
    with staging_dir(final) as staging:
        write_llava_hf(parts, staging)
        (staging / tiny.BUILD_INFO_FILE).write_text(json.dumps(_build_info(preset, seed), indent=2) + "\n")
        verify_hf_checkpoint(staging)
    return final
