"""Model backends: each implements the decode loop's `ModelAdapter` for one family of models.

    llava   the original LLaVA codebase (llava-torch 1.2.2, `LlavaLlamaForCausalLM`), patched
            reversibly through the repository's `patches/` (installed as `llava_avc.patches`)

`backend_of(model)` names the backend that serves a model and `adapter_for(model)` builds its
adapter. The registry recognises a model by its class name and module, so asking about a model
never imports a backend the model does not belong to. A backend imports the algorithm and the
decode loop, never the command line or the eval harness.
"""

from __future__ import annotations

import importlib
from typing import Callable

from ..decode.adapter import ModelAdapter


def _is_llava_torch(model) -> bool:
    return any(cls.__name__ == "LlavaLlamaForCausalLM" and cls.__module__.startswith("llava.")
               for cls in type(model).__mro__)


#: backend name -> (does it serve this model?, its package: `model_adapter(model)`, `generate(model, ...)`)
BACKENDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "llava": (_is_llava_torch, "llava_avc.backends.llava"),
}


def backend_of(model) -> str:
    """The name of the backend that serves `model`.

    Raises:
        TypeError: no backend serves this model class.
    """
    for name, (serves, _) in BACKENDS.items():
        if serves(model):
            return name
    raise TypeError(
        f"model (={type(model).__module__}.{type(model).__name__}) is not a model llava-avc can decode; "
        "it serves the original LLaVA codebase's LlavaLlamaForCausalLM. Load the checkpoint with "
        "llava.model.builder.load_pretrained_model or llava_avc.backends.llava.loading.load_model."
    )


def backend_module(model):
    """The package of `model`'s backend (`model_adapter(model)`, `generate(model, input_ids, config, **kwargs)`)."""
    return importlib.import_module(BACKENDS[backend_of(model)][1])


def adapter_for(model) -> ModelAdapter:
    """The `ModelAdapter` of `model`'s backend."""
    return backend_module(model).model_adapter(model)
