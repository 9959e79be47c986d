"""llava-avc: Attentional Vision Calibration (AVC, a.k.a. AvisC; arXiv 2405.17820) for LLaVA.

    import llava_avc
    llava_avc.patch_llava()
    model.generate(input_ids, images=..., image_sizes=..., avc=llava_avc.AVCConfig())

The pure algorithm (``config``, ``blind``, ``contrast``, ``noise``) imports neither ``llava`` nor
``transformers``; everything that reaches into LLaVA or transformers internals lives in
``llava_avc.patches`` (the repository's ``patches/`` folder). Public names are imported lazily so
that ``llava-avc doctor`` still runs when LLaVA itself is broken.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "AVCConfig": "llava_avc.config",
    "VCDConfig": "llava_avc.config",
    "M3IDConfig": "llava_avc.config",
    "BlindTokens": "llava_avc.blind",
    "NonFiniteLogitsError": "llava_avc.contrast",
    "patch_llava": "llava_avc.patches.llava_patch",
    "unpatch_llava": "llava_avc.patches.llava_patch",
    "patched": "llava_avc.patches.llava_patch",
    "is_patched": "llava_avc.patches.llava_patch",
    "find_blind_tokens": "llava_avc.decode",
    "contrastive_generate": "llava_avc.decode",
    "make_tiny_llava": "llava_avc.tiny",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'llava_avc' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
