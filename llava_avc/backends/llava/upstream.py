"""LLaVA's own `generate` (upstream decoding, no method), called without patching any class.

LLaVA 1.2.2's `LlavaLlamaForCausalLM.forward` takes a fixed list of arguments; transformers >= 4.38's
`generate` passes it more (`cache_position`, `logits_to_keep`, `num_logits_to_keep`) and, from 4.38, cannot
build LLaVA's position ids without an attention mask. `upstream_generate` runs LLaVA's own generate with
both mended: the mask is built when missing (all ones, as 4.37 builds it), and the model INSTANCE gets,
once, a forward that drops those three keywords during `upstream_generate` calls of its own thread and
passes every other call through untouched (it wraps the forward the instance had, so a hook accelerate
put there stays). Nothing is ever unpatched, so concurrent calls never see a class change under them. `patches/llava_patch.py` (users' `model.generate(avc=)`) builds on the same pieces.
"""

from __future__ import annotations

import functools
import threading

import torch

from ..transformers_compat import needs_explicit_attention_mask

#: Where `patches/llava_patch.py` keeps a patched class's own function objects (name -> function).
ORIGINALS_ATTR = "_llava_avc_originals"
#: Keyword arguments newer transformers' generate passes to forward that LLaVA 1.2.2's forward rejects.
DROPPED_FORWARD_KWARGS = ("cache_position", "logits_to_keep", "num_logits_to_keep")
_SHIM_ATTR = "__llava_avc_forward_shim__"
_SHIM_LOCK = threading.Lock()
#: `active` is True in a thread while it runs `upstream_generate`.
_IN_UPSTREAM_GENERATE = threading.local()


def forward_without_new_kwargs(forward):
    """`forward` that always ignores `DROPPED_FORWARD_KWARGS` (the patch's class-wide forward; the signature
    transformers inspects is kept)."""

    @functools.wraps(forward)
    def without_new_kwargs(*args, **kwargs):
        for name in DROPPED_FORWARD_KWARGS:
            kwargs.pop(name, None)
        return forward(*args, **kwargs)

    return without_new_kwargs


def own_function(model_class, name: str):
    """LLaVA's own `name` of `model_class` (a patched class's original, found along the MRO)."""
    for klass in model_class.__mro__:
        originals = vars(klass).get(ORIGINALS_ATTR)
        if originals is not None and name in originals:
            return originals[name]
        if name in vars(klass):
            return vars(klass)[name]
    raise AttributeError(f"{model_class.__name__} has no {name!r}")


def _forward_in_upstream_generate(forward):
    """`forward` that ignores `DROPPED_FORWARD_KWARGS` while its thread runs `upstream_generate`, and is
    `forward` itself for every other call."""

    @functools.wraps(forward)
    def forward_in_upstream_generate(*args, **kwargs):
        if getattr(_IN_UPSTREAM_GENERATE, "active", False):
            for name in DROPPED_FORWARD_KWARGS:
                kwargs.pop(name, None)
        return forward(*args, **kwargs)

    setattr(forward_in_upstream_generate, _SHIM_ATTR, True)
    return forward_in_upstream_generate


def ensure_forward_shim(model) -> None:
    """Give `model` (once; idempotent, thread-safe) the forward of `_forward_in_upstream_generate`."""
    with _SHIM_LOCK:
        if not getattr(model.forward, _SHIM_ATTR, False):
            model.forward = _forward_in_upstream_generate(model.forward)


def with_attention_mask(inputs, kwargs: dict) -> dict:
    """`kwargs` with an all-ones attention mask where transformers >= 4.38 needs one and none is given."""
    if needs_explicit_attention_mask() and kwargs.get("attention_mask") is None and inputs is not None:
        return {**kwargs, "attention_mask": torch.ones_like(inputs, dtype=torch.long)}
    return kwargs


def upstream_generate(model, inputs=None, images=None, image_sizes=None, **kwargs):
    """LLaVA's own `generate(inputs, images, image_sizes, **kwargs)` on this transformers, unpatched."""
    ensure_forward_shim(model)
    generate = own_function(type(model), "generate")
    outer = getattr(_IN_UPSTREAM_GENERATE, "active", False)
    _IN_UPSTREAM_GENERATE.active = True
    try:
        return generate(model, inputs, images, image_sizes, **with_attention_mask(inputs, kwargs))
    finally:
        _IN_UPSTREAM_GENERATE.active = outer
