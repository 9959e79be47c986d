"""The fix in transformers' "model_kwargs are not used" error when the unused keyword is a
llava-avc method: `model.generate(..., avc=AVCConfig())` reaches a `generate` that does not know
`avc=` when the original LLaVA model was not patched (`llava_avc.patch_llava()`), or when a llava-hf
model is called without `custom_generate`. Without the hint the user reads "The following
`model_kwargs` are not used by the model: ['avc']" and nothing about what to do.

`install_when_transformers_loads()` (called by the `llava_avc` facade when its public names are
used) wraps `GenerationMixin._validate_model_kwargs` once transformers' generation module is
imported: now when it already is, else right after it is (a one-shot import hook that removes
itself). The wrapper changes nothing but the message of the error it re-raises.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys

_TARGET = "transformers.generation.utils"
_MARKER = "__llava_avc_hint__"


def _advice(model, names: list) -> str:
    keyword = ", ".join(f"{name}=" for name in names)
    classes = {cls.__name__ for cls in type(model).__mro__}
    if "LlavaLlamaForCausalLM" in classes:
        return (f"{keyword} is llava-avc's, and this LlavaLlamaForCausalLM is not patched: call "
                f"llava_avc.patch_llava() once before model.generate(..., {keyword}...), or use "
                f"llava_avc.generate(model, input_ids, images=..., {keyword}...)")
    return (f"{keyword} is llava-avc's: use llava_avc.generate(model, **inputs, {keyword}...), or "
            f"model.generate(**inputs, custom_generate=llava_avc.hf.contrastive_decoding, {keyword}...)")


def install(module=None) -> None:
    """Wrap `GenerationMixin._validate_model_kwargs` (idempotent; a no-op when it is missing)."""
    module = module or sys.modules.get(_TARGET)
    mixin = getattr(module, "GenerationMixin", None)
    original = vars(mixin).get("_validate_model_kwargs") if mixin is not None else None
    if original is None or getattr(original, _MARKER, False):
        return

    @functools.wraps(original)
    def _validate_model_kwargs(self, model_kwargs, *args, **kwargs):
        try:
            return original(self, model_kwargs, *args, **kwargs)
        except ValueError as error:
            from ..decode.methods import method_names

            names = [name for name in method_names() if model_kwargs.get(name) is not None]
            if not names:
                raise
            raise ValueError(f"{' '.join(str(error).split())} -- {_advice(self, names)}.") from None

    setattr(_validate_model_kwargs, _MARKER, True)
    mixin._validate_model_kwargs = _validate_model_kwargs


class _Loader(importlib.abc.Loader):
    """The real loader of transformers' generation module, then `install`."""

    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def __getattr__(self, name):  # get_source, get_filename, is_package ...: the real loader's
        return getattr(self.inner, name)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        try:
            install(module)
        except Exception:  # noqa: BLE001 - a message helper must never break an import
            pass


class _InstallAfterImport(importlib.abc.MetaPathFinder):
    """One-shot: when transformers' generation module is first imported, install the hint after it."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        _remove_finder()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


def _remove_finder() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _InstallAfterImport)]


def install_when_transformers_loads() -> None:
    """Install the hint now if transformers' generation module is imported, else right after it is."""
    if _TARGET in sys.modules:
        try:
            install()
        except Exception:  # noqa: BLE001
            pass
        return
    if not any(isinstance(finder, _InstallAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _InstallAfterImport())
