"""The weights of a llava-hf directory: original-LLaVA tensors renamed to the llava-hf hub layout, the
vocabulary rows padded, written as safetensors shards (docs/llava-hf-format.md, "Weights")."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from ....errors import UserError
from .config import write_json
from .parts import LlavaHFParts

#: transformers' convert_llava_weights_to_hf.py pads the resized vocabulary to a multiple of 64.
VOCAB_PAD_MULTIPLE = 64
#: Shards above this size are split (as save_pretrained's default max_shard_size="5GB").
MAX_SHARD_BYTES = 5 * 10**9
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
SHARD_NAME = "model-{index:05d}-of-{count:05d}.safetensors"
SAFETENSORS_METADATA = {"format": "pt"}
#: The rows whose count the vocabulary sets (padded to VOCAB_PAD_MULTIPLE).
VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")


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
    """Rename original-LLaVA tensors to the llava-hf hub layout (docs/llava-hf-format.md, "Weights").

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
            raise UserError(f"unexpected LLM weight {key!r}: expected model.* or lm_head.weight; "
                            "is this a LLaMA-based LLaVA checkpoint?")
    linear = {"0": "linear_1", "2": "linear_2"}
    for key, value in projector.items():
        index, _, rest = key.partition(".")
        if index not in linear:
            raise UserError(f"unexpected mm_projector weight {key!r}: llava-hf supports mlp2x_gelu "
                            "(mm_projector.0 and .2) only")
        out[f"multi_modal_projector.{linear[index]}.{rest}"] = value
    for key, value in vision.items():
        out["vision_tower.vision_model." + key.removeprefix("vision_model.")] = value
    if image_newline is not None:
        out["image_newline"] = image_newline
    return out


def resized_llm(llm: dict, rows: int) -> dict:
    """``llm`` with embed_tokens and lm_head padded to ``rows`` (mean rows)."""
    out = dict(llm)
    for key in VOCAB_ROWS:
        out[key] = _extend_rows(llm[key], rows)
    return out


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _split_shards(state: dict, max_shard_bytes: int) -> list:
    """``state`` in key order, a new shard begun before a tensor that would take one past ``max_shard_bytes``."""
    shards, current, size = [], {}, 0
    for key in sorted(state):
        nbytes = _nbytes(state[key])
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key], size = state[key].contiguous(), size + nbytes
    shards.append(current)
    return shards


def save_safetensors(state: dict, out_dir: Path, max_shard_bytes: Optional[int] = None) -> None:
    """Write ``state`` as one model.safetensors, or shards + index above ``max_shard_bytes``
    (default ``MAX_SHARD_BYTES``, read at call time)."""
    from safetensors.torch import save_file

    max_shard_bytes = MAX_SHARD_BYTES if max_shard_bytes is None else max_shard_bytes
    shards = _split_shards(state, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / SAFE_WEIGHTS_NAME), metadata=SAFETENSORS_METADATA)
        return
    weight_map = {}
    for index, shard in enumerate(shards, 1):
        name = SHARD_NAME.format(index=index, count=len(shards))
        save_file(shard, str(out_dir / name), metadata=SAFETENSORS_METADATA)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(_nbytes(tensor) for tensor in state.values())
    write_json(out_dir / SAFE_INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})


def dtype_name(parts: LlavaHFParts) -> str:
    """The weights' dtype as config.json spells it ("float16", "bfloat16", "float32")."""
    return str(parts.llm["lm_head.weight"].dtype).removeprefix("torch.")

