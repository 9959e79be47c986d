"""The one writer of the llava-hf format (`write_llava_hf`), its check (`verify_hf_checkpoint`) and the
output directory it is built in (docs/llava-hf-format.md)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

from ....errors import UserError
from ...transformers_compat import load_on_meta
from .config import generation_config, image_processor_config, model_config, processor_config, write_json
from .parts import LLAVA_V1_CHAT_TEMPLATE, LlavaHFParts
from .tokenizer import write_tokenizer
from .weights import VOCAB_ROWS, dtype_name, hf_state_dict, padded_vocab_size, resized_llm, save_safetensors

#: Hex digits of the random suffix of a staging directory's name.
STAGING_SUFFIX_CHARS = 8
#: Keys of each kind named in verify_hf_checkpoint's error.
SHOWN_KEYS = 5


def write_llava_hf(parts: LlavaHFParts, out_dir) -> None:
    """Write the llava-hf files of ``parts`` into the existing directory ``out_dir``."""
    out_dir = Path(out_dir)
    ids = write_tokenizer(parts, out_dir)
    vocab_size = _write_weights(parts, ids, out_dir)
    _write_configs(parts, ids, vocab_size, out_dir)


def _write_weights(parts: LlavaHFParts, ids: dict, out_dir: Path) -> int:
    """The safetensors files, vocabulary rows padded to cover the tokenizer; returns the padded vocab size."""
    rows = parts.llm[VOCAB_ROWS[0]].shape[0]  # embed_tokens [V, H]
    if ids["image"] > rows:
        raise UserError(f"the tokenizer has {ids['image']} tokens but the embedding only {rows} rows; "
                        "check that tokenizer.model belongs to this checkpoint")
    vocab_size = padded_vocab_size(max(rows, ids["size"]))
    state = hf_state_dict(resized_llm(parts.llm, vocab_size), parts.projector, parts.vision, parts.image_newline)
    save_safetensors(state, out_dir)
    return vocab_size


def _write_configs(parts: LlavaHFParts, ids: dict, vocab_size: int, out_dir: Path) -> None:
    """config.json, the generation / preprocessor / processor configs and the chat template."""
    write_json(out_dir / "config.json", model_config(parts, ids, vocab_size, dtype_name(parts)))
    write_json(out_dir / "generation_config.json", generation_config(parts, ids))
    write_json(out_dir / "preprocessor_config.json", image_processor_config(parts))
    write_json(out_dir / "processor_config.json", processor_config(parts))
    (out_dir / "chat_template.jinja").write_text(LLAVA_V1_CHAT_TEMPLATE, encoding="utf-8")


def _model_class(out_dir: Path):
    """LlavaForConditionalGeneration or LlavaNextForConditionalGeneration, from config.json."""
    import transformers

    name = json.loads((out_dir / "config.json").read_text())["architectures"][0]
    return getattr(transformers, name)


def verify_hf_checkpoint(out_dir) -> None:
    """Load ``out_dir`` with the installed transformers on the meta device (no tensor is read) and
    raise RuntimeError (a bug of the converter) on any missing, unexpected or mismatched weight key."""
    out_dir = Path(out_dir)
    model_class = _model_class(out_dir)
    _, info = load_on_meta(model_class, out_dir)
    bad = {kind: sorted(map(str, info.get(kind) or []))[:SHOWN_KEYS]
           for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)}
    if bad:
        raise RuntimeError(f"{out_dir} does not load cleanly as {model_class.__name__}: {bad}; "
                           "this is a bug in llava_avc.backends.hf.convert, please report it")


def check_out_dir(path: Path, force: bool) -> None:
    """Refuse an existing file, or an existing non-empty directory unless ``force``."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a directory; remove it or choose another output path")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UserError(f"{path} exists and is not empty; pass force=True (--force) to replace its contents")


@contextlib.contextmanager
def staging_dir(final: Path):
    """Yield a hidden sibling of ``final`` to build in; on success it replaces ``final``.

    On an error the staging directory is removed and ``final`` keeps its old contents.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:STAGING_SUFFIX_CHARS]}"
    staging.mkdir()
    try:
        yield staging
        if final.is_dir():
            shutil.rmtree(final)
        os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)

