"""llava-avc: Attentional Vision Calibration (AVC, a.k.a. AvisC; arXiv 2405.17820) for LLaVA.

    import llava_avc
    llava_avc.patch_llava()
    model.generate(input_ids, images=..., image_sizes=..., avc=llava_avc.AVCConfig())

Rooms (docs/architecture.md): ``algorithm`` (pure tensors: configs, blind tokens, contrast, noise)
<- ``decode`` (the two-branch loop and the model-adapter interface) <- ``backends`` (adapters;
``backends.llava`` with the repository's ``patches/``, installed as ``llava_avc.patches``) <- ``eval``
(benchmarks) <- ``interfaces`` (the Python API and the ``llava-avc`` command); ``testing`` builds tiny
checkpoints. Public names are imported lazily so that ``llava-avc doctor`` still runs when LLaVA
itself is broken.
"""

import importlib
import importlib.util
import os
import sys

__version__ = "0.1.0"


def _map_source_patches() -> None:
    """From a source checkout that is not installed (e.g. PYTHONPATH=$PWD on a lent GPU machine),
    map the repository's top-level `patches/` folder to `llava_avc.patches`, as setup.cfg's
    `package_dir` does for an installed (normal or editable) llava-avc."""
    if importlib.util.find_spec("llava_avc.patches") is not None:
        return
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "patches")
    spec = importlib.util.spec_from_file_location(
        "llava_avc.patches", os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
    if spec is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["llava_avc.patches"] = module
    spec.loader.exec_module(module)


_map_source_patches()

_LAZY = {
    "AVCConfig": "llava_avc.algorithm.config",
    "VCDConfig": "llava_avc.algorithm.config",
    "M3IDConfig": "llava_avc.algorithm.config",
    "MethodConfig": "llava_avc.algorithm.config",
    "Method": "llava_avc.decode.methods",
    "register_method": "llava_avc.decode.methods",
    "unregister_method": "llava_avc.decode.methods",
    "BlindTokens": "llava_avc.algorithm.blind",
    "NonFiniteLogitsError": "llava_avc.algorithm.contrast",
    "patch_llava": "llava_avc.patches.llava_patch",
    "unpatch_llava": "llava_avc.patches.llava_patch",
    "patched": "llava_avc.patches.llava_patch",
    "is_patched": "llava_avc.patches.llava_patch",
    "default_method": "llava_avc.patches.llava_patch",
    "generate": "llava_avc.interfaces.api",
    "find_blind_tokens": "llava_avc.interfaces.api",
    "contrastive_generate": "llava_avc.interfaces.api",
    "lean_generate": "llava_avc.interfaces.api",
}

#: Subpackages reachable as attributes: `llava_avc.hf.contrastive_decoding` (transformers' custom_generate).
_MODULES = {"hf": "llava_avc.backends.hf"}

__all__ = sorted(_LAZY) + sorted(_MODULES) + ["__version__"]


def __getattr__(name):
    if name in _MODULES:
        module = importlib.import_module(_MODULES[name])
        globals()[name] = module
        return module
    if name not in _LAZY:
        raise AttributeError(f"module 'llava_avc' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
