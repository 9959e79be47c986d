"""The method registry: every decoding method is ONE entry here (in the spirit of peft's
PEFT_TYPE_TO_CONFIG_MAPPING and lm-evaluation-harness's registries).

A `Method` names its config class (a frozen, validated `MethodConfig` dataclass whose fields carry
`help` / `constraint` metadata), its prefill (how the biased branch is made, `llava_avc.decode.prefill`)
and its combiner (how the two branches' logits become the scores of one step). Everything else is
derived from the registry: the `generate(..., <name>=config)` keyword on both backends, the command
line's `--method` choices and `--<name>-<field>` flags, the fix added to transformers' "model_kwargs
are not used" error, and the runs of `llava-avc doctor`.

    import llava_avc
    llava_avc.register_method(llava_avc.Method("mine", MyConfig, prefill=my_prefill, combine=my_combine))
    llava_avc.generate(model, **inputs, mine=MyConfig())        # both backends
    llava-avc ask ... --method mine --mine-alpha 1.0             # after the registration, in that process

This module imports neither `llava` nor `transformers`, nor torch: the command line builds its flags
from it without loading them (`--help` stays light); the built-in prefills and combiners import their
tensor code when first called.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import UserError
from ..algorithm.config import AVCConfig, M3IDConfig, MethodConfig, VCDConfig

if TYPE_CHECKING:
    import torch

#: The method name that means plain decoding (no entry in the registry).
NO_METHOD = "none"


@dataclass(frozen=True)
class Method:
    """One decoding method.

    Attributes:
        name: the keyword of `generate(..., name=config)` and the value of `--method`; an identifier.
        config_class: its `MethodConfig` dataclass (`config_class.method == name`).
        prefill: `(adapter, PrefillRequest, config) -> (BranchState, records or None)`.
        combine: `(config, logits, biased_logits, step) -> scores`, all (B, V) float32 (step 0 = the first
            new token), before the logits processors.
        description: one line for `--help`.
        needs_pixels: its biased branch is made from the pixels (VCD noises them), so it cannot run on a prompt
            whose image is already merged into the embeddings (InstructBLIP's own `generate`).
    """

    name: str
    config_class: type
    prefill: Callable
    combine: Callable[[Any, "torch.Tensor", "torch.Tensor", int], "torch.Tensor"]
    description: str = ""
    needs_pixels: bool = False


_REGISTRY: dict = {}


def _check_entry(method: Method) -> None:
    name, cls = method.name, method.config_class
    if not (isinstance(name, str) and name.isidentifier() and name.islower()) or name == NO_METHOD:
        raise UserError(f"Method name {name!r} must be a lower-case Python identifier other than {NO_METHOD!r} "
                        "(it becomes the generate keyword and the --method value).")
    if not (isinstance(cls, type) and issubclass(cls, MethodConfig) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"Method {name!r}: config_class (={cls!r}) must be a dataclass subclassing "
                        "llava_avc.MethodConfig (frozen, validated in validate()).")
    if cls.method != name:
        raise UserError(f"Method {name!r}: {cls.__name__}.method is {cls.method!r}; set `method: ClassVar[str] = "
                        f"{name!r}` on the config class.")
    for field in dataclasses.fields(cls):
        missing = [key for key in ("help", "constraint") if key not in field.metadata]
        if missing:
            raise UserError(f"Method {name!r}: field {cls.__name__}.{field.name} lacks metadata {missing} (the "
                            "command line builds its --help from them): field(default=..., metadata={'help': ..., "
                            "'constraint': ...}).")
    if not (callable(method.prefill) and callable(method.combine)):
        raise TypeError(f"Method {name!r}: prefill and combine must be callables (see llava_avc.decode.methods).")


def register_method(method: Method) -> Method:
    """Add a method to the registry; returns it.

    Raises:
        ValueError / TypeError: a name taken (by another entry) or not an identifier, a config class that is
            not a `MethodConfig` dataclass of that name, or fields without help / constraint metadata.
    """
    _check_entry(method)
    taken = _REGISTRY.get(method.name)
    if taken is not None and taken != method:
        raise UserError(f"a method named {method.name!r} is already registered ({taken.config_class.__name__}); "
                        "choose another name.")
    _REGISTRY[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a registered method (the built-in ones stay)."""
    if name in BUILT_IN:
        raise UserError(f"{name!r} is built in and cannot be unregistered.")
    _REGISTRY.pop(name, None)


def method_names() -> tuple:
    """The registered method names, in registration order (the built-in avc, vcd, m3id first)."""
    return tuple(_REGISTRY)


def get_method(name: str) -> Method:
    """The registered method `name`.

    Raises:
        ValueError: unknown; names the nearest one and every registered one.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(str(name), list(_REGISTRY) + [NO_METHOD], n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(f"unknown method {name!r}.{hint} Available: {', '.join(method_names() + (NO_METHOD,))}.")


def default_config(name: str) -> Optional[MethodConfig]:
    """The default config of a method name; None for "none" (plain decoding)."""
    return None if name == NO_METHOD else get_method(name).config_class()


def method_name(config: Optional[MethodConfig]) -> str:
    """The method name of a config; "none" for None (plain decoding)."""
    return NO_METHOD if config is None else config.method


def _check_keyword(name: str, value: Any) -> None:
    """Raise TypeError unless `value` is None or the config class of method `name`."""
    expected = get_method(name).config_class
    if value is None or isinstance(value, expected):
        return
    cls = expected.__name__
    if isinstance(value, dict):
        fix = f"Pass `{name}={cls}(**your_dict)`."
    elif isinstance(value, MethodConfig):
        fix = f"Pass `{name}={cls}(...)`, or pass this config as `{value.method}=`."
    else:
        fix = f"Pass `{name}={cls}(...)`, e.g. `{name}={cls}()` for the defaults."
    raise TypeError(f"`{name}` (={value!r}) must be an instance of {cls} or None, not {type(value).__name__}. {fix}")


def resolve_method(**given: Any) -> Optional[MethodConfig]:
    """The one method config among the keywords given (method name -> config or None); None = plain decoding.

    Raises:
        ValueError: an unknown method name, or more than one method (they are exclusive).
        TypeError: a value that is neither None nor its method's config class.
    """
    for name, value in given.items():
        _check_keyword(name, value)
    chosen = [name for name, value in given.items() if value is not None]
    if len(chosen) > 1:
        names = ", ".join(f"{name}=" for name in chosen)
        raise UserError(f"resolve_method: got {names} (={len(chosen)} methods) but the methods are exclusive; pass "
                        f"at most one of {', '.join(f'{n}=' for n in method_names())}. Drop all but one.")
    return given[chosen[0]] if chosen else None


def pop_method(kwargs: dict) -> Optional[MethodConfig]:
    """Take every registered method keyword out of `kwargs` (generate's keyword arguments) and resolve them."""
    return resolve_method(**{name: kwargs.pop(name) for name in method_names() if name in kwargs})


# ------------------------------------------------------------------------------------- built-in methods


def _combine_avc(config: AVCConfig, logits, biased_logits, step: int):
    from ..algorithm.contrast import avc_logits

    return avc_logits(logits, biased_logits, config.alpha, config.beta)


def _combine_vcd(config: VCDConfig, logits, biased_logits, step: int):
    from ..algorithm.contrast import vcd_logits

    return vcd_logits(logits, biased_logits, config.alpha, config.beta)


def _combine_m3id(config: M3IDConfig, logits, biased_logits, step: int):
    from ..algorithm.contrast import m3id_logits

    # M3ID's schedule counts generated tokens from t = 1 (official code).
    return m3id_logits(logits, biased_logits, step + 1, config.lam, config.beta)


def _prefill_avc(adapter, request, config: AVCConfig):
    from .prefill import prefill_avc

    return prefill_avc(adapter, request, config)


def _prefill_vcd(adapter, request, config: VCDConfig):
    from .prefill import prefill_vcd

    return prefill_vcd(adapter, request, config)


def _prefill_m3id(adapter, request, config: M3IDConfig):
    from .prefill import prefill_m3id

    return prefill_m3id(adapter, request, config)


BUILT_IN = ("avc", "vcd", "m3id")
register_method(Method("avc", AVCConfig, _prefill_avc, _combine_avc,
                       "Attentional Vision Calibration (AvisC): contrast with only the blind image tokens kept"))
register_method(Method("vcd", VCDConfig, _prefill_vcd, _combine_vcd,
                       "Visual Contrastive Decoding: contrast with a diffusion-noised image", needs_pixels=True))
register_method(Method("m3id", M3IDConfig, _prefill_m3id, _combine_m3id,
                       "M3ID: contrast with the prompt without its image, growing with each token"))
