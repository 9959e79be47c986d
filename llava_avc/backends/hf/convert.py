"""Original LLaVA checkpoints -> llava-hf directories, and the llava-hf file format itself.

``convert_to_hf(ORIGINAL_DIR, OUT_DIR)`` reads an original LLaVA checkpoint (model_type
``llava_llama``: config.json with the mm_* fields, safetensors or pytorch .bin shards,
tokenizer.model, a CLIP vision tower named by ``mm_vision_tower``) and writes a directory that
transformers' own classes open offline (4.57 and 5.x)::

    LlavaForConditionalGeneration.from_pretrained(OUT_DIR)      # image_aspect_ratio "pad" / square
    LlavaNextForConditionalGeneration.from_pretrained(OUT_DIR)  # "anyres" + "spatial_unpad" (LLaVA-1.6)
    AutoProcessor.from_pretrained(OUT_DIR)                      # LlavaProcessor / LlavaNextProcessor

``write_llava_hf(parts, OUT_DIR)`` is the one writer of that format; ``convert_to_hf`` and the
offline tiny factory (``llava_avc.testing.tiny_hf``) both go through it. Files written::

    config.json                  LlavaConfig / LlavaNextConfig (text_config llama, vision_config CLIP)
    model.safetensors            (or model-0000i-of-0000n.safetensors + model.safetensors.index.json)
    generation_config.json       bos / eos of the LLM, pad = the added <pad>
    tokenizer.model              the original sentencepiece model (provenance; not read by the fast tokenizer)
    tokenizer.json, tokenizer_config.json, special_tokens_map.json
    preprocessor_config.json     LlavaImageProcessor / LlavaNextImageProcessor
    processor_config.json, chat_template.jinja

Weights use the on-disk key layout of the llava-hf hub checkpoints, i.e. what transformers'
``convert_llava_weights_to_hf.py`` writes and what transformers 4.57's ``save_pretrained`` writes::

    model.embed_tokens / model.layers.* / model.norm   -> language_model.model.*
    lm_head.weight                                     -> language_model.lm_head.weight
    model.mm_projector.0 / .2                          -> multi_modal_projector.linear_1 / linear_2
    (CLIP) vision_model.*                              -> vision_tower.vision_model.*
    model.image_newline (anyres)                       -> image_newline

Both versions read it (4.57 through ``_checkpoint_conversion_mapping``, 5.x through its
``conversion_mapping``). The in-memory layouts differ (4.57: ``model.vision_tower.vision_model.*``;
5.x: ``model.vision_tower.*`` without ``vision_model``), and transformers 5's own
``save_pretrained`` drops the ``vision_model.`` prefix, which 4.57 cannot load; that is why this
writer does not use ``save_pretrained`` for the weights. ``verify_hf_checkpoint`` loads the
result on the meta device with the installed transformers and fails on any missing, unexpected
or mismatched key.

Vocabulary (as transformers' conversion script): ``<image>`` is added as a special token with
id = len(tokenizer), then ``<pad>`` (unless the tokenizer already has a distinct pad token), and
the embedding / lm_head rows are padded to a multiple of 64. The script fills the new rows with
samples of N(mean, 1e-5 * cov) of the old rows; we write the mean itself (deterministic; the
``<image>`` row is never read, image features replace it).

Tokenizer: tokenizer.json is built from the sentencepiece model itself (vocab, BPE merges by
piece score, byte fallback, ``<unk>`` fused) with a normalizer that prepends "▁" to EVERY text
segment between added tokens and replaces spaces by "▁". On plain text this is exactly the slow
``LlamaTokenizer(legacy=False)`` (and sentencepiece). Around ``<image>`` it gives exactly the ids
of LLaVA's ``tokenizer_image_token``, which tokenizes the text before and after each ``<image>``
as separate calls, each with its dummy-prefix "▁" ("USER: <image>\\nQ" -> ... ':' '▁' <image>
'▁' '<0x0A>' ...). (transformers' own Llama fast tokenizer with legacy=False prepends only to the
first segment and so drops that '▁' after the image.) The one difference from the slow tokenizer:
text typed directly after ``<s>`` / ``</s>`` inside one string (multi-turn histories) gets a
'▁' that the slow legacy=False tokenizer omits. tokenizer_config.json names the generic
``PreTrainedTokenizerFast`` class, so 4.57 and 5.x load tokenizer.json verbatim (a class such as
``LlamaTokenizer`` makes transformers 5 rebuild the pre-tokenizer from its own flags). Padding
side: left (llava-hf's choice; batched generation).

Image processor: LLaVA-1.5 (``image_aspect_ratio: pad``) pads the image to a square with the
mean colour ``tuple(int(255 * m) for m in image_mean)``, centred, then CLIP-resizes the shortest
edge to 336 (bicubic), centre-crops 336 and normalises with the OpenAI CLIP mean/std. That is
``LlavaImageProcessor(do_pad=True)``: the same padding (same colour, same offsets), then the CLIP
steps. On 4.57 (slow, numpy + PIL resize) and on 5.x without torchvision (``LlavaImageProcessorPil``)
the pixels equal LLaVA's ``process_images`` up to float rounding (see tests/test_convert.py for
the measured difference). On 5.x WITH torchvision, ``AutoProcessor`` picks the torchvision
backend, whose bicubic resize differs slightly from PIL's; pass ``backend="pil"`` to reproduce
LLaVA's pixels. ``anyres`` checkpoints get ``LlavaNextImageProcessor`` with the grid pinpoints
converted from LLaVA's (width, height) pairs to transformers' (height, width) pairs. One inherent
difference stays (transformers', not this converter's): when unpadding the anyres grid, LLaVA
truncates ``int(h * scale)`` while transformers rounds first (``int(round(x, 7))``), so for about
3 in 100,000 image sizes, where the product is an integer up to float error, the two keep a
different number of grid rows / columns (e.g. a 49x784 image on the tiny-anyres preset: LLaVA
keeps 0 columns, 80 image tokens; transformers 2 columns, 112 tokens). The model and the processor
of transformers agree with each other; the logits then differ from LLaVA's for those sizes only.

Chat template: renders ``[{"role": "user", "content": [{"type": "image"}, {"type": "text",
"text": Q}]}]`` with ``add_generation_prompt=True`` into exactly LLaVA's ``llava_v1`` prompt
(``LLAVA_V1_SYSTEM + " USER: <image>\\nQ ASSISTANT:"``); assistant turns end with ``</s>``;
a leading system message replaces the default system prompt.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..transformers_compat import load_on_meta

__all__ = [
    "IMAGE_TOKEN",
    "LLAVA_V1_CHAT_TEMPLATE",
    "LLAVA_V1_SYSTEM",
    "LlavaHFParts",
    "PAD_TOKEN",
    "VOCAB_PAD_MULTIPLE",
    "build_hf_tokenizer",
    "convert_to_hf",
    "hf_state_dict",
    "padded_vocab_size",
    "verify_hf_checkpoint",
    "write_llava_hf",
]

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
#: transformers' convert_llava_weights_to_hf.py pads the resized vocabulary to a multiple of 64.
VOCAB_PAD_MULTIPLE = 64
#: Shards above this size are split (as save_pretrained's default max_shard_size="5GB").
MAX_SHARD_BYTES = 5 * 10**9
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

#: LLaVA's conv_templates["llava_v1"].system.
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
#: Renders LLaVA's llava_v1 conversation (sep " ", sep2 "</s>", roles USER / ASSISTANT).
LLAVA_V1_CHAT_TEMPLATE = (
    r"{%- set system_message = '" + LLAVA_V1_SYSTEM.replace("'", "\\'") + r"' -%}"
    r"{%- if messages and messages[0]['role'] == 'system' -%}"
    r"{%- if messages[0]['content'] is string -%}{%- set system_message = messages[0]['content'] -%}"
    r"{%- else -%}{%- set system_message = messages[0]['content'] | selectattr('type', 'equalto', 'text')"
    r" | map(attribute='text') | join(' ') -%}{%- endif -%}"
    r"{%- set loop_messages = messages[1:] -%}"
    r"{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}"
    r"{{- system_message + ' ' -}}"
    r"{%- for message in loop_messages -%}"
    r"{%- if message['content'] is string -%}{%- set text = message['content'] -%}{%- set n_images = 0 -%}"
    r"{%- else -%}{%- set text = message['content'] | selectattr('type', 'equalto', 'text')"
    r" | map(attribute='text') | join(' ') -%}"
    r"{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    r"{%- endif -%}"
    r"{%- if message['role'] == 'user' -%}{{- 'USER: ' + '<image>\n' * n_images + text + ' ' -}}"
    r"{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' + text + '</s>' -}}"
    r"{%- else -%}{{- raise_exception('llava_v1 has roles system (first), user and assistant, got '"
    r" + message['role']) -}}{%- endif -%}"
    r"{%- endfor -%}"
    r"{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


# ------------------------------------------------------------------------------------ parts
@dataclass
class LlavaHFParts:
    """Everything ``write_llava_hf`` needs, in the ORIGINAL LLaVA naming.

    Shapes (V = rows of the original vocabulary, H = LLM hidden, C = CLIP hidden):
    ``llm``: LlamaForCausalLM tensors, ``model.embed_tokens.weight`` [V, H], ``model.layers.*``,
    ``model.norm.weight`` [H], ``lm_head.weight`` [V, H]; ``projector``: LLaVA's mm_projector
    Sequential, ``0.weight`` [H, C], ``0.bias`` [H], ``2.weight`` [H, H], ``2.bias`` [H];
    ``vision``: CLIPVisionModel tensors (keys with or without ``vision_model.``);
    ``image_newline``: [H] for anyres, else None.
    """

    text_config: dict
    vision_config: dict
    llm: dict
    projector: dict
    vision: dict
    spm_proto: bytes
    image_side: int
    added_tokens: list = field(default_factory=list)  # [(content, special)] after the spm pieces
    pad_token: Optional[str] = None  # an existing distinct pad token, else <pad> is added
    add_bos_token: bool = True
    model_max_length: int = 2048
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    image_mean: list = field(default_factory=lambda: list(OPENAI_CLIP_MEAN))
    image_std: list = field(default_factory=lambda: list(OPENAI_CLIP_STD))
    resample: int = 3  # PIL bicubic
    pad_to_square: bool = True  # LLaVA-1.5 image_aspect_ratio "pad"
    grid_pinpoints: Optional[list] = None  # anyres: transformers' [height, width] pairs
    image_newline: Optional[torch.Tensor] = None
    generation: dict = field(default_factory=dict)


# -------------------------------------------------------------------------------- tokenizer
def _spm_vocab_and_merges(sp) -> tuple:
    """BPE ``vocab`` (piece -> id) and ``merges`` [(left, right)] of a sentencepiece BPE model.

    Merges are ordered by the score of the merged piece (highest first), the splits of one piece
    by the ids of their halves: sentencepiece's BPE applies the best-scoring merge first.
    """
    size = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(size)}
    mergeable = [i for i in range(size) if not (sp.is_unknown(i) or sp.is_control(i)
                                                 or sp.is_byte(i) or sp.is_unused(i))]
    merges = []
    for i in sorted(mergeable, key=lambda i: (-sp.get_score(i), i)):
        piece = sp.id_to_piece(i)
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))
                  if piece[:k] in vocab and piece[k:] in vocab]
        merges += sorted(splits, key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
    return vocab, merges


def build_hf_tokenizer(spm_proto: bytes, added_tokens=(), add_bos_token: bool = True):
    """A ``tokenizers.Tokenizer`` equivalent to the sentencepiece model (see the module docstring).

    ``added_tokens``: ``[(content, special)]`` appended after the pieces, ids in order. Returns
    ``(tokenizer, (unk, bos, eos))``. The unknown and control pieces (``<unk>``, ``<s>``, ``</s>``)
    become special added tokens; sentencepiece USER_DEFINED pieces (none in LLaMA's tokenizer) are
    not treated specially.
    """
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    sp = spm.SentencePieceProcessor(model_proto=spm_proto)
    if sp.unk_id() < 0 or sp.bos_id() < 0 or sp.eos_id() < 0:
        raise ValueError("tokenizer.model lacks an <unk>, <s> or </s> piece (unk/bos/eos id -1); "
                         "a LLaMA-style sentencepiece model is required")
    vocab, merges = _spm_vocab_and_merges(sp)
    unk, bos, eos = sp.id_to_piece(sp.unk_id()), sp.id_to_piece(sp.bos_id()), sp.id_to_piece(sp.eos_id())
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    controls = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]
    tok.add_special_tokens([AddedToken(piece, special=True, normalized=False) for piece in controls])
    for content, special in added_tokens:
        token = AddedToken(content, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    if add_bos_token:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, sp.bos_id())])
    return tok, (unk, bos, eos)


def _added_tokens_decoder(tok) -> dict:
    """tokenizer_config.json's ``added_tokens_decoder`` for every added token of ``tok``."""
    return {
        str(index): {"content": token.content, "lstrip": token.lstrip, "normalized": token.normalized,
                     "rstrip": token.rstrip, "single_word": token.single_word, "special": token.special}
        for index, token in sorted(tok.get_added_tokens_decoder().items())
    }


def _write_tokenizer(parts: LlavaHFParts, out_dir: Path) -> dict:
    """Write the tokenizer files; return ``{"image": id, "pad": id, "bos", "eos", "size"}``."""
    pad = parts.pad_token or PAD_TOKEN
    present = {content for content, _ in parts.added_tokens}
    extra = list(parts.added_tokens) + [(token, True) for token in (IMAGE_TOKEN, pad) if token not in present]
    tok, (unk, bos, eos) = build_hf_tokenizer(parts.spm_proto, extra, parts.add_bos_token)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer.model").write_bytes(parts.spm_proto)
    specials = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "model_max_length": parts.model_max_length,
        "padding_side": "left",
        "model_input_names": ["input_ids", "attention_mask"],  # no token_type_ids (generate rejects them)
        "clean_up_tokenization_spaces": False,
        "chat_template": LLAVA_V1_CHAT_TEMPLATE,
        "added_tokens_decoder": _added_tokens_decoder(tok),
    }
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", specials)
    ids = {"image": tok.token_to_id(IMAGE_TOKEN), "pad": tok.token_to_id(pad),
           "bos": tok.token_to_id(bos), "eos": tok.token_to_id(eos), "size": tok.get_vocab_size()}
    if ids["pad"] is None:
        raise ValueError(f"pad token {pad!r} is not in the vocabulary; remove it from the tokenizer "
                         f"config so that {PAD_TOKEN} is added")
    return ids


# ---------------------------------------------------------------------------------- configs
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


def _model_config(parts: LlavaHFParts, ids: dict, vocab_size: int, dtype: str) -> dict:
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


def _image_processor_config(parts: LlavaHFParts) -> dict:
    """preprocessor_config.json: LlavaImageProcessor (pad to square) or LlavaNextImageProcessor."""
    side = parts.image_side
    config = {
        "do_convert_rgb": True, "do_resize": True, "size": {"shortest_edge": side}, "resample": parts.resample,
        "do_center_crop": True, "crop_size": {"height": side, "width": side},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(parts.image_mean), "image_std": list(parts.image_std),
    }
    if parts.grid_pinpoints is not None:
        return {"image_processor_type": "LlavaNextImageProcessor", "processor_class": "LlavaNextProcessor",
                **config, "image_grid_pinpoints": [list(p) for p in parts.grid_pinpoints], "do_pad": True}
    return {"image_processor_type": "LlavaImageProcessor", "processor_class": "LlavaProcessor",
            **config, "do_pad": parts.pad_to_square}


def _processor_config(parts: LlavaHFParts) -> dict:
    """processor_config.json: what expands <image> into the right number of image tokens."""
    anyres = parts.grid_pinpoints is not None
    return {
        "processor_class": "LlavaNextProcessor" if anyres else "LlavaProcessor",
        "image_token": IMAGE_TOKEN,
        "patch_size": parts.vision_config["patch_size"],
        "vision_feature_select_strategy": parts.vision_feature_select_strategy,
        "num_additional_image_tokens": 1,  # CLIP's CLS token
    }


def _generation_config(parts: LlavaHFParts, ids: dict) -> dict:
    """generation_config.json: the original's fields with the new pad id."""
    skip = {"_from_model_config", "transformers_version"}
    kept = {key: value for key, value in parts.generation.items() if key not in skip}
    return {**kept, "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------- weights
def padded_vocab_size(n_tokens: int, multiple: int = VOCAB_PAD_MULTIPLE) -> int:
    """Rows of the resized embedding: ``n_tokens`` rounded up to a multiple of ``multiple``."""
    return multiple * math.ceil(n_tokens / multiple)


def _extend_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """[V, H] -> [rows, H]: the new rows are the mean of the existing ones (computed in fp32)."""
    if rows <= weight.shape[0]:
        return weight
    mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(rows - weight.shape[0], -1)], dim=0).contiguous()


def hf_state_dict(llm: dict, projector: dict, vision: dict, image_newline=None) -> dict:
    """Rename original-LLaVA tensors to the llava-hf hub layout (see the module docstring).

    ``llm`` keys ``model.*`` and ``lm_head.weight``; ``projector`` keys ``0.*`` / ``2.*``;
    ``vision`` CLIPVisionModel keys (``vision_model.`` prefix optional). Raises ValueError
    naming any key it cannot place.
    """
    out = {}
    for key, value in llm.items():
        if key == "lm_head.weight":
            out["language_model.lm_head.weight"] = value
        elif key.startswith("model."):
            out["language_model." + key] = value
        else:
            raise ValueError(f"unexpected LLM weight {key!r}: expected model.* or lm_head.weight; "
                             "is this a LLaMA-based LLaVA checkpoint?")
    linear = {"0": "linear_1", "2": "linear_2"}
    for key, value in projector.items():
        index, _, rest = key.partition(".")
        if index not in linear:
            raise ValueError(f"unexpected mm_projector weight {key!r}: llava-hf supports mlp2x_gelu "
                             "(mm_projector.0 and .2) only")
        out[f"multi_modal_projector.{linear[index]}.{rest}"] = value
    for key, value in vision.items():
        out["vision_tower.vision_model." + key.removeprefix("vision_model.")] = value
    if image_newline is not None:
        out["image_newline"] = image_newline
    return out


def _resized_llm(llm: dict, rows: int) -> dict:
    """``llm`` with embed_tokens and lm_head padded to ``rows`` (mean rows)."""
    out = dict(llm)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        out[key] = _extend_rows(llm[key], rows)
    return out


def _save_safetensors(state: dict, out_dir: Path, max_shard_bytes: Optional[int] = None) -> None:
    """Write ``state`` as one model.safetensors, or shards + index above ``max_shard_bytes``
    (default ``MAX_SHARD_BYTES``, read at call time)."""
    from safetensors.torch import save_file

    max_shard_bytes = MAX_SHARD_BYTES if max_shard_bytes is None else max_shard_bytes
    shards, current, size = [], {}, 0
    for key in sorted(state):
        nbytes = state[key].numel() * state[key].element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key], size = state[key].contiguous(), size + nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    _write_json(out_dir / SAFE_INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})


def _dtype_name(parts: LlavaHFParts) -> str:
    """The weights' dtype as config.json spells it ("float16", "bfloat16", "float32")."""
    return str(parts.llm["lm_head.weight"].dtype).removeprefix("torch.")


def write_llava_hf(parts: LlavaHFParts, out_dir) -> None:
    """Write the llava-hf files of ``parts`` into the existing directory ``out_dir``."""
    out_dir = Path(out_dir)
    rows = parts.llm["model.embed_tokens.weight"].shape[0]
    ids = _write_tokenizer(parts, out_dir)
    if ids["image"] > rows:
        raise ValueError(f"the tokenizer has {ids['image']} tokens but the embedding only {rows} rows; "
                         "check that tokenizer.model belongs to this checkpoint")
    vocab_size = padded_vocab_size(max(rows, ids["size"]))
    state = hf_state_dict(_resized_llm(parts.llm, vocab_size), parts.projector, parts.vision, parts.image_newline)
    _save_safetensors(state, out_dir)
    _write_json(out_dir / "config.json", _model_config(parts, ids, vocab_size, _dtype_name(parts)))
    _write_json(out_dir / "generation_config.json", _generation_config(parts, ids))
    _write_json(out_dir / "preprocessor_config.json", _image_processor_config(parts))
    _write_json(out_dir / "processor_config.json", _processor_config(parts))
    (out_dir / "chat_template.jinja").write_text(LLAVA_V1_CHAT_TEMPLATE, encoding="utf-8")


def _model_class(out_dir: Path):
    """LlavaForConditionalGeneration or LlavaNextForConditionalGeneration, from config.json."""
    import transformers

    name = json.loads((out_dir / "config.json").read_text())["architectures"][0]
    return getattr(transformers, name)


def verify_hf_checkpoint(out_dir) -> None:
    """Load ``out_dir`` with the installed transformers on the meta device (no tensor is read) and
    raise ValueError on any missing, unexpected or mismatched weight key."""
    out_dir = Path(out_dir)
    model_class = _model_class(out_dir)
    _, info = load_on_meta(model_class, out_dir)
    bad = {kind: sorted(map(str, info.get(kind) or []))[:5]
           for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)}
    if bad:
        raise ValueError(f"{out_dir} does not load cleanly as {model_class.__name__}: {bad}; "
                         "this is a bug in llava_avc.backends.hf.convert, please report it")


# ------------------------------------------------------------------------------ directories
def check_out_dir(path: Path, force: bool) -> None:
    """Refuse an existing file, or an existing non-empty directory unless ``force``."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory; remove it or choose another output path")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise FileExistsError(f"{path} exists and is not empty; pass force=True (--force) to replace its contents")


@contextlib.contextmanager
def staging_dir(final: Path):
    """Yield a hidden sibling of ``final`` to build in; on success it replaces ``final``.

    On an error the staging directory is removed and ``final`` keeps its old contents.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if final.is_dir():
            shutil.rmtree(final)
        os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


# ------------------------------------------------------------------------ original checkpoints
def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _original_config(original: Path) -> dict:
    """config.json of an original LLaVA checkpoint, or a one-line ValueError saying what is wrong."""
    config_file = original / "config.json"
    if not original.is_dir() or not config_file.is_file():
        raise ValueError(f"{original} is not an original LLaVA checkpoint: no config.json there; "
                         "pass the directory that holds config.json, the weights and tokenizer.model")
    config = _read_json(config_file)
    if config.get("model_type") != "llava_llama" or "mm_vision_tower" not in config:
        raise ValueError(
            f"{original} is not an original LLaVA checkpoint: config.json has model_type "
            f"{config.get('model_type')!r} (expected 'llava_llama' with mm_vision_tower); "
            "llava-hf checkpoints need no conversion, LLaVA's mistral/mpt variants are not supported")
    if not (original / "tokenizer.model").is_file():
        raise ValueError(f"{original} has no tokenizer.model; copy the sentencepiece model of the "
                         "checkpoint's LLM there")
    return config


def _check_supported(config: dict) -> None:
    """Refuse LLaVA options that llava-hf cannot represent (one line each)."""
    checks = [
        ("mm_projector_type", config.get("mm_projector_type", "linear"), ("mlp2x_gelu",)),
        ("mm_use_im_start_end", bool(config.get("mm_use_im_start_end", False)), (False,)),
        ("mm_vision_select_feature", config.get("mm_vision_select_feature", "patch"), ("patch", "cls_patch")),
    ]
    for name, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"{name}={value!r} cannot be converted: llava-hf supports {list(allowed)}")
    anyres = config.get("image_aspect_ratio") == "anyres"
    merge = config.get("mm_patch_merge_type", "flat")
    if anyres != (merge == "spatial_unpad"):
        raise ValueError(
            f"image_aspect_ratio={config.get('image_aspect_ratio')!r} with mm_patch_merge_type={merge!r} "
            "cannot be converted: llava-hf has anyres + spatial_unpad (LlavaNext) or pad/square + flat (Llava)")


def _hub_cache_snapshot(repo_id: str) -> Optional[Path]:
    """The local Hugging Face cache snapshot of ``repo_id`` (no network), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=os.environ.get("HF_HUB_CACHE"))
    return Path(found).parent if isinstance(found, str) else None


def _vision_tower_dir(name: str, original: Path) -> Path:
    """``mm_vision_tower``: a local directory (absolute, or relative to the checkpoint) or a hub id
    already in the local Hugging Face cache. A tiny checkpoint's own ``vision_tower/`` folder wins over
    a recorded path that is gone or another copy's (`llava_avc.backends.checkpoints.own_vision_tower`)."""
    from ..checkpoints import own_vision_tower

    own = own_vision_tower(name, original)
    if own is not None:
        return Path(own)
    for candidate in (Path(name).expanduser(), original / name):
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    snapshot = _hub_cache_snapshot(name) if name.count("/") == 1 and not name.startswith(("/", ".")) else None
    if snapshot is None:
        raise OSError(
            f"vision tower {name!r} (config.json's mm_vision_tower) is neither a local directory nor in the "
            f"local Hugging Face cache; download it once with `hf download {name}` "
            "(the command of huggingface_hub), or set mm_vision_tower to a local copy")
    return snapshot


def _weight_files(original: Path) -> list:
    """The LLM shards: *.safetensors, else pytorch_model*.bin (top level only)."""
    files = sorted(original.glob("*.safetensors")) or sorted(original.glob("pytorch_model*.bin"))
    if not files:
        raise ValueError(f"{original} has no weights (*.safetensors or pytorch_model*.bin)")
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


_VISION_IN_SHARDS = "model.vision_tower.vision_tower."


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
        raise ValueError(f"the weights lack {missing or ['model.mm_projector.*']}; is this a complete "
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
    config = _read_json(tower / "preprocessor_config.json")
    crop = config.get("crop_size", vision_config["image_size"])
    side = crop["height"] if isinstance(crop, dict) else int(crop)
    return {"image_mean": config.get("image_mean", OPENAI_CLIP_MEAN),
            "image_std": config.get("image_std", OPENAI_CLIP_STD),
            "resample": config.get("resample", 3), "image_side": side}


def _grid_pinpoints(config: dict) -> Optional[list]:
    """LLaVA's image_grid_pinpoints ((width, height), maybe a string) as transformers' [h, w] pairs."""
    if config.get("image_aspect_ratio") != "anyres":
        return None
    pinpoints = config.get("image_grid_pinpoints")
    if isinstance(pinpoints, str):
        pinpoints = ast.literal_eval(pinpoints)
    if not pinpoints:
        raise ValueError("image_aspect_ratio is 'anyres' but config.json has no image_grid_pinpoints")
    return [[int(height), int(width)] for width, height in pinpoints]


def _tokenizer_settings(original: Path, n_pieces: int) -> dict:
    """Added tokens (beyond the sentencepiece pieces), pad token, add_bos_token, model_max_length."""
    config = _read_json(original / "tokenizer_config.json")
    decoder = config.get("added_tokens_decoder", {})
    added = {int(i): (t["content"], bool(t.get("special", True))) for i, t in decoder.items() if int(i) >= n_pieces}
    added.update({i: (c, True) for c, i in _read_json(original / "added_tokens.json").items() if i >= n_pieces})
    if sorted(added) != list(range(n_pieces, n_pieces + len(added))):
        raise ValueError(f"added token ids {sorted(added)} do not follow the {n_pieces} sentencepiece pieces")
    pad = config.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    unk = config.get("unk_token", "<unk>")
    unk = unk.get("content") if isinstance(unk, dict) else unk
    keep_pad = pad if pad and pad != unk and pad in {c for c, _ in added.values()} else None
    return {"added_tokens": [added[i] for i in sorted(added)], "pad_token": keep_pad,
            "add_bos_token": bool(config.get("add_bos_token", True)),
            "model_max_length": int(min(config.get("model_max_length", 2048), 10**9))}


def _original_parts(original: Path, config: dict) -> LlavaHFParts:
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
        raise ValueError("an anyres / spatial_unpad checkpoint must have model.image_newline in its weights")
    return LlavaHFParts(
        text_config=config, vision_config=vision_config, llm=llm, projector=projector, vision=vision,
        spm_proto=proto, **_tokenizer_settings(original, n_pieces),
        **_tower_image_processor(tower, vision_config),
        vision_feature_layer=int(config.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="full" if config.get("mm_vision_select_feature") == "cls_patch" else "default",
        pad_to_square=config.get("image_aspect_ratio") == "pad",
        grid_pinpoints=pinpoints, image_newline=newline,
        generation=_read_json(original / "generation_config.json"),
    )


# -------------------------------------------------------------------------------- public API
def convert_to_hf(original_dir, out_dir, *, force: bool = False) -> Path:
    """Convert an original LLaVA checkpoint directory into a llava-hf directory; return its path.

    Offline: a hub-id ``mm_vision_tower`` must already be in the local Hugging Face cache. The
    result is built in a hidden sibling directory, checked with ``verify_hf_checkpoint`` and only
    then renamed onto ``out_dir`` (with ``force``, the old contents go just before that rename).
    Raises ValueError for a directory that is not an original LLaVA checkpoint or uses options
    llava-hf lacks, FileExistsError for a non-empty ``out_dir`` without ``force``, OSError for a
    vision tower that cannot be found locally. Memory: the LLM's tensors are held once in their
    stored dtype (about the checkpoint's size on disk, ~14 GB for a 7B fp16), plus the CLIP tower.
    """
    from ..checkpoints import check_checkpoint_files

    original = Path(original_dir).expanduser().resolve()
    final = Path(out_dir).expanduser().resolve()
    config = _original_config(original)
    check_checkpoint_files(original)  # a damaged (half-downloaded) weight or JSON file is named, before any work
    _check_supported(config)
    if final == original:
        raise ValueError(f"out_dir {final} is the original checkpoint; choose a new directory")
    check_out_dir(final, force)
    parts = _original_parts(original, config)
    with staging_dir(final) as staging:
        write_llava_hf(parts, staging)
        _write_json(staging / "llava_avc_conversion.json", {"format": "hf", "converted_from": str(original)})
        verify_hf_checkpoint(staging)
    return final
