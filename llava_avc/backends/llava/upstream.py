"""LLaVA's own `generate` (upstream decoding, no method), called without patching any class.

LLaVA 1.2.2's `LlavaLlamaForCausalLM.forward` takes a fixed list of arguments; transformers >= 4.38's
`generate` passes it more (`cache_position`, `logits_to_keep`, `num_logits_to_keep`) and, from 4.38, cannot
build LLaVA's position ids without an attention mask. `upstream_generate` runs LLaVA's own generate with
both mended: the mask is built when missing (all ones, as 4.37 builds it), and the model gets, once, a
forward PRE-HOOK that drops those three keywords during `upstream_generate` calls of its own thread and
leaves every other call untouched (its `forward` itself is not replaced: a later `patch_llava()`, or a
hook accelerate put on the instance, still applies). Nothing is ever unpatched, so concurrent calls never
see a class change under them. `patches/llava_patch.py` (users' `model.generate(avc=)`) builds on the same pieces.
"""

from __future__ import annotations

import functools
import threading
import weakref

import torch

from ..transformers_compat import needs_explicit_attention_mask

#: Where `patches/llava_patch.py` keeps a patched class's own function objects (name -> function).
ORIGINALS_ATTR = "_llava_avc_originals"
#: Keyword arguments newer transformers' generate passes to forward that LLaVA 1.2.2's forward rejects.
DROPPED_FORWARD_KWARGS = ("cache_position", "logits_to_keep", "num_logits_to_keep")
_FILTER_LOCK = threading.Lock()
#: The models that carry the `_drop_new_kwargs` pre-hook.
_FILTERED: "weakref.WeakSet" = weakref.WeakSet()
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


def _drop_new_kwargs(module, args, kwargs):
    """Forward pre-hook: inside `upstream_generate` (this thread), the forward's kwargs without
    `DROPPED_FORWARD_KWARGS`; otherwise no change."""
    if not getattr(_IN_UPSTREAM_GENERATE, "active", False):
        return None
    return args, {name: value for name, value in kwargs.items() if name not in DROPPED_FORWARD_KWARGS}


def ensure_keyword_filter(model) -> None:
    """Register `_drop_new_kwargs` on `model` once (idempotent, thread-safe)."""
    with _FILTER_LOCK:
        if model not in _FILTERED:
            model.register_forward_pre_hook(_drop_new_kwargs, with_kwargs=True)
            _FILTERED.add(model)


def with_attention_mask(inputs, kwargs: dict) -> dict:
    """`kwargs` with an all-ones attention mask where transformers >= 4.38 needs one and none is given."""
    if needs_explicit_attention_mask() and kwargs.get("attention_mask") is None and inputs is not None:
        return {**kwargs, "attention_mask": torch.ones_like(inputs, dtype=torch.long)}
    return kwargs


def upstream_generate(model, inputs=None, images=None, image_sizes=None, **kwargs):
    """LLaVA's own `generate(inputs, images, image_sizes, **kwargs)` on this transformers, unpatched."""
    ensure_keyword_filter(model)
    generate = own_function(type(model), "generate")
    outer = getattr(_IN_UPSTREAM_GENERATE, "active", False)
    _IN_UPSTREAM_GENERATE.active = True
    try:
        return generate(model, inputs, images, image_sizes, **with_attention_mask(inputs, kwargs))
    finally:
        _IN_UPSTREAM_GENERATE.active = outer
