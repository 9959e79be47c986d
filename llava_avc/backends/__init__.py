"""Model backends: each implements the decode loop's `ModelAdapter` for one family of models.

    llava   the original LLaVA codebase (llava-torch 1.2.2, `LlavaLlamaForCausalLM`), patched
            reversibly through the repository's `patches/` (installed as `llava_avc.patches`)
    hf      transformers' image-text-to-text families (`families.FAMILIES`: llava-hf's Llava and LlavaNext,
            LLaVA-OneVision, Qwen2.5-VL), through transformers' own `generate(custom_generate=...)`

`backend_of(model)` names the backend that serves a model and `adapter_for(model)` builds its
adapter. The registry recognises a model by its class name and module, so asking about a model
never imports a backend the model does not belong to. A backend imports the algorithm and the
decode loop, never the command line or the eval harness.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Optional

from ..errors import UserError
from ..decode.adapter import ModelAdapter
from .families import FAMILIES, is_served, served_classes
from .versions import HF_OLDEST, dotted, version_tuple


def _is_llava_torch(model) -> bool:
    return any(cls.__name__ == "LlavaLlamaForCausalLM" and cls.__module__.startswith("llava.")
               for cls in type(model).__mro__)


def _is_hf_family(model) -> bool:
    return is_served(model)


#: backend name -> (does it serve this model?, its package: `model_adapter(model)`, `generate(model, ...)`)
BACKENDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "llava": (_is_llava_torch, "llava_avc.backends.llava"),
    "hf": (_is_hf_family, "llava_avc.backends.hf"),
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
        f"it serves the original LLaVA codebase's LlavaLlamaForCausalLM and transformers' {served_classes()}."
    )


def backend_module(model):
    """The package of `model`'s backend (`model_adapter(model)`, `generate(model, input_ids, config, **kwargs)`)."""
    return importlib.import_module(BACKENDS[backend_of(model)][1])


#: config.json `model_type` -> the backend whose pipeline loads such a checkpoint.
CHECKPOINT_FORMATS = {"llava_llama": "llava", **{model_type: "hf" for model_type in FAMILIES}}
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
    if config_file.parent.is_dir() and not config_file.is_file():
        raise UserError(f"{model_path!r} is not a checkpoint folder: it has no config.json (a LLaVA or llava-hf "
                        "checkpoint holds config.json, its weights and its tokenizer); pass the folder that holds them.")
    if not config_file.is_file():
        from .checkpoints import HUB_ID, cached_hub_file

        config_file = cached_hub_file(model_path) if HUB_ID.fullmatch(model_path) else None
    if config_file is None:
        name = model_path.rstrip("/")
        return "hf" if name.startswith("llava-hf/") or name.endswith("-hf") else "llava"
    from .checkpoints import check_json_file

    config = check_json_file(Path(config_file))
    if not isinstance(config, dict):
        raise UserError(f"{config_file} holds a JSON {type(config).__name__}, not a model config (an object with "
                        "model_type); re-download the checkpoint.")
    model_type = config.get("model_type")
    if "mm_vision_tower" in config and model_type != "llava_next":
        return "llava"  # original LLaVA configs carry mm_* fields (some name their model_type "llava")
    if model_type not in CHECKPOINT_FORMATS:
        raise UserError(f"{model_path!r} is a {model_type!r} checkpoint; llava-avc serves original LLaVA "
                        f"(llava_llama) and llava-hf ({', '.join(k for k, v in CHECKPOINT_FORMATS.items() if v == 'hf')}) "
                        "checkpoints.")
    return CHECKPOINT_FORMATS[model_type]


def check_before_loading(model_path: str, model_base: Optional[str] = None, device: Optional[str] = None,
                         load_4bit: bool = False, load_8bit: bool = False, conv_mode: Optional[str] = None) -> str:
    """Everything that can be checked before a model loads, in seconds: the device, quantization on this
    machine, a hub id that is not cached while the hub is out of reach, damaged checkpoint files, the
    checkpoint's format, and (when given) a conversation template its backend can render. Returns the
    backend name.

    Raises:
        ValueError: one line naming the value, the constraint and the fix.
    """
    from .checkpoints import preflight
    from .devices import check_quantization_supported, default_device, resolve_device

    check_quantization_supported(load_4bit, load_8bit, device or default_device())
    device = resolve_device(device)
    preflight(model_path, model_base)
    backend = checkpoint_backend(model_path)
    check_backend_available(backend, model_path)
    if conv_mode is not None:
        pipeline_class(backend).check_conv_mode(conv_mode)
    return backend


def check_backend_available(backend: str, model_path: str) -> None:
    """Raise ValueError when this environment lacks what the checkpoint's backend needs (without
    importing it): llava-torch for original checkpoints, transformers >= 4.57 for llava-hf ones."""
    import importlib.util
    from importlib import metadata

    if backend == "llava" and importlib.util.find_spec("llava") is None:
        raise UserError(
            f"{model_path!r} is an original-LLaVA checkpoint and this environment has no original LLaVA (llava-torch); "
            "install it (pip install 'llava-avc[llava]' and pip install --no-deps llava-torch==1.2.2.post1), or "
            f"convert the checkpoint for this one: llava-avc convert --to hf {model_path} OUT_DIR.")
    if backend == "hf":
        try:
            found = metadata.version("transformers")
        except metadata.PackageNotFoundError:
            found = "none"
        if found == "none" or version_tuple(found) < HF_OLDEST:
            oldest = dotted(HF_OLDEST[:2])
            raise UserError(
                f"{model_path!r} is a llava-hf checkpoint; the llava-hf backend needs transformers >= {oldest} and this "
                f"environment has {found}: run it where transformers >= {oldest} is installed (e.g. bash "
                "scripts/install.sh --profile hf), or use the original LLaVA checkpoint here.")


def pipeline_class(backend: str):
    """The ask/eval pipeline class of a backend ("llava" or "hf", as `check_before_loading` returns)."""
    module_name, class_name = PIPELINES[backend].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_pipeline(model_path: str, model_base: Optional[str] = None, conv_mode: Optional[str] = None, **kwargs):
    """The ask/eval pipeline of the checkpoint's backend, loaded (kwargs: device, load_4bit, load_8bit), after
    `check_before_loading` (with the conversation template the caller will use)."""
    backend = check_before_loading(model_path, model_base, kwargs.get("device"), kwargs.get("load_4bit", False),
                                   kwargs.get("load_8bit", False), conv_mode)
    return pipeline_class(backend).load(model_path, model_base, **kwargs)


def adapter_for(model) -> ModelAdapter:
    """The `ModelAdapter` of `model`'s backend."""
    return backend_module(model).model_adapter(model)
