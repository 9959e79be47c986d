"""Version facts about transformers and LLaVA that the rest of llava-avc must not hard-code.

LLaVA 1.2.2 (llava-torch 1.2.2.post1) pins transformers 4.37.2; the facts below were measured with
it (llava-torch 1.2.2.post1 on transformers 4.37.2 and 4.57.x, CPU).
"""

from __future__ import annotations

import transformers

from .versions import MAX_TRANSFORMERS_EXCLUSIVE, MIN_TRANSFORMERS, version_tuple


TRANSFORMERS_VERSION = version_tuple(transformers.__version__)


def check_transformers_supported() -> None:
    """Raise RuntimeError when the installed transformers is outside the supported range."""
    if not (MIN_TRANSFORMERS <= TRANSFORMERS_VERSION < MAX_TRANSFORMERS_EXCLUSIVE):
        raise RuntimeError(
            f"llava-avc supports transformers >= 4.37 and < 4.58; found {transformers.__version__}. "
            "Install LLaVA's pin with `pip install transformers==4.37.2 tokenizers==0.15.2`."
        )


def generate_returns_leading_bos() -> bool:
    """Whether HF `generate(inputs_embeds=...)` starts its output with a BOS column.

    transformers <= 4.37 initialises `input_ids` with one BOS token per row when only
    `inputs_embeds` is given, so upstream LLaVA's `generate` returns `[BOS, new tokens...]`;
    from 4.38 on it starts from an empty tensor and returns only the new tokens.
    """
    return TRANSFORMERS_VERSION < (4, 38, 0)


def needs_explicit_attention_mask() -> bool:
    """Upstream LLaVA generate without an attention_mask fails from transformers 4.38 on
    ('NoneType' object has no attribute 'shape' / 'new_ones'); 4.37 builds one itself."""
    return TRANSFORMERS_VERSION >= (4, 38, 0)


def set_attention_implementation(model, name: str) -> str:
    """Switch the attention kernel of a loaded Llama-family model; returns the previous name.

    From transformers 4.48 the kernel is looked up per call from `config._attn_implementation`,
    so switching is enough; 4.37 builds one module class per implementation at init, where
    `output_attentions=True` on sdpa falls back to eager by itself.
    """
    previous = model.config._attn_implementation
    if TRANSFORMERS_VERSION >= (4, 48, 0):
        model.config._attn_implementation = name
    return previous
