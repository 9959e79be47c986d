"""Original LLaVA checkpoints -> llava-hf directories; the format is specified in docs/llava-hf-format.md."""

from __future__ import annotations

from pathlib import Path

from ....errors import UserError
from ...checkpoints import check_checkpoint_files
from .config import write_json
from .parts import IMAGE_TOKEN, LLAVA_V1_CHAT_TEMPLATE, LLAVA_V1_SYSTEM, PAD_TOKEN, LlavaHFParts
from .sources import check_supported, original_config, original_parts
from .tokenizer import build_hf_tokenizer
from .weights import VOCAB_PAD_MULTIPLE, hf_state_dict, padded_vocab_size
from .writer import check_out_dir, staging_dir, verify_hf_checkpoint, write_llava_hf

__all__ = [
    "IMAGE_TOKEN",
    "LLAVA_V1_CHAT_TEMPLATE",
    "LLAVA_V1_SYSTEM",
    "LlavaHFParts",
    "PAD_TOKEN",
    "VOCAB_PAD_MULTIPLE",
    "build_hf_tokenizer",
    "check_out_dir",
    "convert_to_hf",
    "hf_state_dict",
    "padded_vocab_size",
    "staging_dir",
    "verify_hf_checkpoint",
    "write_llava_hf",
]

#: The record of where a converted directory came from.
CONVERSION_RECORD = "llava_avc_conversion.json"


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
    original = Path(original_dir).expanduser().resolve()
    final = Path(out_dir).expanduser().resolve()
    config = original_config(original)
    check_checkpoint_files(original)  # a damaged (half-downloaded) weight or JSON file is named, before any work
    check_supported(config)
    if final == original:
        raise UserError(f"out_dir {final} is the original checkpoint; choose a new directory")
    check_out_dir(final, force)
    parts = original_parts(original, config)
    with staging_dir(final) as staging:
        write_llava_hf(parts, staging)
        write_json(staging / CONVERSION_RECORD, {"format": "hf", "converted_from": str(original)})
        verify_hf_checkpoint(staging)
    return final
