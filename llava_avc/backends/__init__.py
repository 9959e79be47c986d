"""Model backends: each implements the decode loop's `ModelAdapter` for one family of models.

    llava   the original LLaVA codebase (llava-torch 1.2.2, `LlavaLlamaForCausalLM`), patched
            reversibly through the repository's `patches/` (installed as `llava_avc.patches`)
    hf      Hugging Face-native `LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration`
            (llava-hf checkpoints), through transformers' own `generate(custom_generate=...)`

`backend_of(model)` names the backend that serves a model and `adapter_for(model)` builds its
adapter. The registry recognises a model by its class name and module, so asking about a model
never imports a backend the model does not belong to. A backend imports the algorithm and the
decode loop, never the command line or the eval harness.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Callable, Optional

from ..decode.adapter import ModelAdapter


def _is_llava_torch(model) -> bool:
    return any(cls.__name__ == "LlavaLlamaForCausalLM" and cls.__module__.startswith("llava.")
               for cls in type(model).__mro__)


def _is_llava_hf(model) -> bool:
    return any(cls.__name__ in ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration")
               and cls.__module__.startswith("transformers.models.llava") for cls in type(model).__mro__)


_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")

#: backend name -> (does it serve this model?, its package: `model_adapter(model)`, `generate(model, ...)`)
BACKENDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "llava": (_is_llava_torch, "llava_avc.backends.llava"),
    "hf": (_is_llava_hf, "llava_avc.backends.hf"),
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
        "it serves the original LLaVA codebase's LlavaLlamaForCausalLM and transformers' "
        "LlavaForConditionalGeneration / LlavaNextForConditionalGeneration (llava-hf checkpoints)."
    )


def backend_module(model):
    """The package of `model`'s backend (`model_adapter(model)`, `generate(model, input_ids, config, **kwargs)`)."""
    return importlib.import_module(BACKENDS[backend_of(model)][1])


#: config.json `model_type` -> the backend whose pipeline loads such a checkpoint.
CHECKPOINT_FORMATS = {"llava_llama": "llava", "llava": "hf", "llava_next": "hf"}
#: backend -> "module:Pipeline" (the pipeline `llava-avc ask` and `eval` use).
PIPELINES = {"llava": "llava_avc.backends.llava.pipeline:LlavaPipeline",
             "hf": "llava_avc.backends.hf.pipeline:HFPipeline"}


def checkpoint_backend(model_path: str) -> str:
    """The backend of a checkpoint: from a local directory's config.json `model_type`; for a hub id,
    from the local hub cache's config.json when there is one, else from the name (llava-hf/... and
    names ending in -hf are llava-hf checkpoints).

    Raises:
        ValueError: a config.json that is not JSON, or a model_type that no backend serves.
    """
    config_file = Path(model_path).expanduser() / "config.json"
    if not config_file.is_file():
        config_file = _cached_hub_config(model_path)
    if config_file is None:
        name = model_path.rstrip("/")
        return "hf" if name.startswith("llava-hf/") or name.endswith("-hf") else "llava"
    try:
        config = json.loads(Path(config_file).read_text())
    except ValueError as error:
        raise ValueError(f"{config_file} is not valid JSON ({error}); re-download the checkpoint.") from None
    model_type = config.get("model_type")
    if "mm_vision_tower" in config and model_type != "llava_next":
        return "llava"  # original LLaVA configs carry mm_* fields (some name their model_type "llava")
    if model_type not in CHECKPOINT_FORMATS:
        raise ValueError(f"{model_path!r} is a {model_type!r} checkpoint; llava-avc serves original LLaVA "
                         f"(llava_llama) and llava-hf ({', '.join(k for k, v in CHECKPOINT_FORMATS.items() if v == 'hf')}) "
                         "checkpoints.")
    return CHECKPOINT_FORMATS[model_type]


def _cached_hub_config(model_path: str) -> Optional[str]:
    """config.json of a hub id in the local cache (no network), or None."""
    if not _HUB_ID.fullmatch(model_path):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(model_path, "config.json")
    return found if isinstance(found, str) else None


def load_pipeline(model_path: str, model_base: Optional[str] = None, **kwargs):
    """The ask/eval pipeline of the checkpoint's backend, loaded (kwargs: device, load_4bit, load_8bit)."""
    module_name, class_name = PIPELINES[checkpoint_backend(model_path)].split(":")
    pipeline_class = getattr(importlib.import_module(module_name), class_name)
    return pipeline_class.load(model_path, model_base, **kwargs)


def adapter_for(model) -> ModelAdapter:
    """The `ModelAdapter` of `model`'s backend."""
    return backend_module(model).model_adapter(model)
