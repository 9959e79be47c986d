"""Scoped, reversible patches of torch and LLaVA internals for the `llava-avc run` launcher.

The launcher runs UNMODIFIED upstream LLaVA scripts (``llava.eval.model_vqa_loader`` ...). Those
scripts hard-code CUDA and fp16 and call LLaVA's loader directly, so the launcher changes, for the
duration of one run only:

``cpu_device_mapping()`` (``--device cpu``)
    ``torch.Tensor.cuda`` / ``.to`` / ``.half`` and ``torch.nn.Module.cuda`` / ``.to`` / ``.half``
    are wrapped so that any CUDA device (``"cuda"``, ``"cuda:0"``, ``torch.device("cuda")``, a
    device index) becomes the CPU and float16 becomes float32 (fp16 on a CPU is ~5x slower than
    fp32 and some ops are missing; the loader below gives an fp32 model, and the scripts'
    ``images.half()`` / ``.to(dtype=torch.float16)`` must match it).

``loader_override(device, load_4bit, load_8bit)``
    ``llava.model.builder.load_pretrained_model`` (which every script imports at run time with
    ``from llava.model.builder import load_pretrained_model``) is wrapped: ``load_4bit`` /
    ``load_8bit`` are OR-ed with the launcher's flags; on the CPU the model is loaded with
    ``device_map="cpu", device="cpu"`` (fp16 mapping suspended while loading) and cast, with its
    vision tower, to float32; 4/8-bit on the CPU raises a ``UserError``. The wrapper carries
    ``__wrapped__``.

``max_new_tokens_cap(n)`` (``--max-new-tokens-cap N``)
    ``LlavaLlamaForCausalLM.generate`` (llava-avc's patched one, when patched) is wrapped so that
    an explicit ``max_new_tokens`` larger than ``n`` becomes ``n``: quick runs of scripts that
    hard-code ``max_new_tokens=1024`` (``model_vqa``, ``model_vqa_science``).

``preserved_attributes(...)``
    snapshots attributes that upstream scripts overwrite for good (``llava.utils.disable_torch_init``
    replaces ``torch.nn.Linear.reset_parameters`` and ``torch.nn.LayerNorm.reset_parameters``) and
    puts them back.

Every context manager checks everything before it mutates anything (an already-active mapping, a
missing attribute: ``RuntimeError`` and nothing changed) and restores the exact original objects on
exit, also when the block raises: an attribute that the class only inherited is deleted again, so
``torch.Tensor.cuda is <the original method descriptor>`` and ``"cuda" not in vars(torch.Tensor)``.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch

from llava_avc.errors import UserError

_MARKER_ATTR = "__llava_avc_launcher__"
_MISSING = object()

def check_quantization(load_4bit: bool, load_8bit: bool, device: Optional[str]) -> None:
    """The loader's quantization check (a UserError: one line, exit status 2).

    With a device: whether this machine can load quantized (CUDA; on the CPU transformers >= 4.53
    and bitsandbytes >= 0.48). With None: only that 4-bit and 8-bit are not both asked for.
    """
    from llava_avc.backends.devices import check_one_quantization, check_quantization_supported

    if device is None:
        check_one_quantization(load_4bit, load_8bit)
    else:
        check_quantization_supported(load_4bit, load_8bit, device)


# --------------------------------------------------------------------------------------------
# Attribute swapping with exact restoration


class _Swaps:
    """A list of (owner, name, replacement) applied all at once and undone in reverse order;
    as a context manager: applied on entry, undone on exit."""

    def __init__(self, plan: Sequence[Tuple[Any, str, Any]]):
        self.plan = list(plan)
        self.saved: List[Tuple[Any, str, Any]] = []

    def check(self) -> None:
        for owner, name, _ in self.plan:
            current = getattr(owner, name, _MISSING)
            if current is _MISSING:
                raise RuntimeError(f"{_qualname(owner)}.{name} does not exist; this torch/LLaVA is not supported.")
            if getattr(current, _MARKER_ATTR, False):
                raise RuntimeError(
                    f"{_qualname(owner)}.{name} is already wrapped by llava-avc's launcher "
                    "(nested launcher runs are not supported)."
                )

    def apply(self) -> None:
        self.check()  # nothing is mutated unless every target is present and unwrapped
        try:
            for owner, name, replacement in self.plan:
                self.saved.append((owner, name, vars(owner).get(name, _MISSING)))
                setattr(owner, name, replacement)
        except BaseException:
            self.restore()
            raise

    def restore(self) -> None:
        while self.saved:
            owner, name, own = self.saved.pop()
            if own is _MISSING:
                if name in vars(owner):
                    delattr(owner, name)
            else:
                setattr(owner, name, own)

    def __enter__(self) -> "_Swaps":
        self.apply()
        return self

    def __exit__(self, *exc_info) -> None:
        self.restore()


def _qualname(owner: Any) -> str:
    return getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))


def _mark(function: Callable) -> Callable:
    setattr(function, _MARKER_ATTR, True)
    return function


@contextmanager
def preserved_attributes(targets: Sequence[Tuple[Any, str]]) -> Iterator[None]:
    """Put `owner.name` back as it was (own attribute or inherited) when the block exits."""
    saved = [(owner, name, vars(owner).get(name, _MISSING)) for owner, name in targets]
    try:
        yield
    finally:
        for owner, name, own in reversed(saved):
            if own is _MISSING:
                if name in vars(owner):
                    delattr(owner, name)
            elif vars(owner).get(name, _MISSING) is not own:
                setattr(owner, name, own)


def upstream_side_effect_targets() -> List[Tuple[Any, str]]:
    """Attributes LLaVA's scripts overwrite for good (`llava.utils.disable_torch_init`)."""
    return [(torch.nn.Linear, "reset_parameters"), (torch.nn.LayerNorm, "reset_parameters")]


# --------------------------------------------------------------------------------------------
# CUDA -> CPU, float16 -> float32


class _MappingState:
    map_half = True


_STATE = _MappingState()
_CPU = torch.device("cpu")


def _cpu_if_cuda(device: Any) -> Any:
    if isinstance(device, torch.device):
        return _CPU if device.type == "cuda" else device
    if isinstance(device, str):
        return _CPU if device.split(":", 1)[0].strip() == "cuda" else device
    if isinstance(device, int) and not isinstance(device, bool):
        return _CPU  # a bare index means a CUDA device
    return device


def _float32_if_half(dtype: Any) -> Any:
    return torch.float32 if (dtype is torch.float16 and _STATE.map_half) else dtype


def _map_to_arguments(args: tuple, kwargs: dict) -> Tuple[tuple, dict]:
    """Map the devices and dtypes in a `Tensor.to` / `Module.to` call (every overload)."""
    mapped = []
    for index, value in enumerate(args):
        if isinstance(value, torch.dtype):
            value = _float32_if_half(value)
        elif isinstance(value, (str, torch.device)) or (index == 0 and isinstance(value, int)
                                                         and not isinstance(value, bool)):
            value = _cpu_if_cuda(value)
        mapped.append(value)
    if "device" in kwargs:
        kwargs = dict(kwargs, device=_cpu_if_cuda(kwargs["device"]))
    if "dtype" in kwargs:
        kwargs = dict(kwargs, dtype=_float32_if_half(kwargs["dtype"]))
    return tuple(mapped), kwargs


def _cpu_plan() -> List[Tuple[Any, str, Any]]:
    tensor_to = torch.Tensor.to
    module_to = torch.nn.Module.to

    @functools.wraps(tensor_to)
    def tensor_to_cpu(self, *args, **kwargs):
        args, kwargs = _map_to_arguments(args, kwargs)
        return tensor_to(self, *args, **kwargs)

    def tensor_cuda_cpu(self, device=None, non_blocking=False, memory_format=torch.preserve_format):
        return tensor_to(self, _CPU, non_blocking=non_blocking, memory_format=memory_format)

    tensor_half = torch.Tensor.half

    def tensor_half_cpu(self, memory_format=torch.preserve_format):
        if not _STATE.map_half:
            return tensor_half(self, memory_format=memory_format)
        return tensor_to(self, torch.float32, memory_format=memory_format)

    @functools.wraps(module_to)
    def module_to_cpu(self, *args, **kwargs):
        args, kwargs = _map_to_arguments(args, kwargs)
        return module_to(self, *args, **kwargs)

    def module_cuda_cpu(self, device=None):
        return module_to(self, _CPU)

    module_half = torch.nn.Module.half

    def module_half_cpu(self):
        return module_half(self) if not _STATE.map_half else self.float()

    for original, wrapper in ((torch.Tensor.cuda, tensor_cuda_cpu), (tensor_half, tensor_half_cpu),
                              (torch.nn.Module.cuda, module_cuda_cpu), (module_half, module_half_cpu)):
        functools.update_wrapper(wrapper, original)
    return [
        (torch.Tensor, "to", _mark(tensor_to_cpu)),
        (torch.Tensor, "cuda", _mark(tensor_cuda_cpu)),
        (torch.Tensor, "half", _mark(tensor_half_cpu)),
        (torch.nn.Module, "to", _mark(module_to_cpu)),
        (torch.nn.Module, "cuda", _mark(module_cuda_cpu)),
        (torch.nn.Module, "half", _mark(module_half_cpu)),
    ]


@contextmanager
def cpu_device_mapping(map_half: bool = True) -> Iterator[None]:
    """Run code that hard-codes `.cuda()` / `device="cuda"` / `.half()` on the CPU.

    Args:
        map_half: also turn float16 into float32 (an unquantized model runs in float32 on the
            CPU); False for a quantized model, whose unquantized modules stay float16.
    """
    with _Swaps(_cpu_plan()):
        _STATE.map_half = map_half
        try:
            yield
        finally:
            _STATE.map_half = True


@contextmanager
def _half_mapping_suspended() -> Iterator[None]:
    previous = _STATE.map_half
    _STATE.map_half = False
    try:
        yield
    finally:
        _STATE.map_half = previous


def is_cpu_mapping_active() -> bool:
    return bool(getattr(torch.Tensor.to, _MARKER_ATTR, False))


# --------------------------------------------------------------------------------------------
# LLaVA's loader


def _builder():
    from llava.model import builder

    return builder


def _cast_to_float32(model) -> None:
    model.to(dtype=torch.float32)
    get_tower = getattr(model, "get_vision_tower", None)
    tower = get_tower() if callable(get_tower) else None
    if tower is not None:
        tower.to(dtype=torch.float32)


@contextmanager
def loader_override(device: str, load_4bit: bool = False, load_8bit: bool = False,
                    records: List[dict] | None = None) -> Iterator[None]:
    """Wrap `llava.model.builder.load_pretrained_model` for the block (see the module docstring).

    Args:
        device: "cpu" forces a CPU load in float32; anything else passes device settings through.
        load_4bit / load_8bit: the launcher's flags, OR-ed with what the script asks for.
        records: if given, one dict per load is appended (model path, effective flags, dtype).
    Raises (from the wrapped loader):
        UserError: 4-bit and 8-bit together, or 4/8-bit on the CPU.
    """
    check_quantization(load_4bit, load_8bit, None)
    builder = _builder()
    original = builder.load_pretrained_model
    # follow_wrapped=False: the function may itself be a wrapper (patch_llava's loader) whose
    # __wrapped__ signature differs from its own.
    signature = inspect.signature(original, follow_wrapped=False)
    on_cpu = not str(device).startswith("cuda")

    @functools.wraps(original)
    def load_pretrained_model(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        want_4bit = bool(arguments.get("load_4bit")) or load_4bit
        want_8bit = bool(arguments.get("load_8bit")) or load_8bit
        check_quantization(want_4bit, want_8bit, None)
        arguments["load_4bit"], arguments["load_8bit"] = want_4bit, want_8bit
        if on_cpu:
            quantized = want_4bit or want_8bit
            if quantized:
                check_quantization(want_4bit, want_8bit, "cpu")
            arguments["device_map"], arguments["device"] = "cpu", "cpu"
            with _half_mapping_suspended():
                loaded = original(*bound.args, **bound.kwargs)
                if not quantized:  # never .to() a quantized model
                    _cast_to_float32(loaded[1])
        else:
            # Under patch_llava(), `original` is its loader wrapper, which routes 4/8-bit loads
            # through llava_avc.backends.llava.loading.load_quantized; outside it, LLaVA's own loader.
            loaded = original(*bound.args, **bound.kwargs)
        if records is not None:
            model = loaded[1]
            records.append({
                "model_path": str(arguments.get("model_path")),
                "model_base": arguments.get("model_base"),
                "load_4bit": want_4bit,
                "load_8bit": want_8bit,
                "device": str(getattr(model, "device", arguments.get("device"))),
                "dtype": str(getattr(model, "dtype", None)),
            })
        return loaded

    with _Swaps([(builder, "load_pretrained_model", _mark(load_pretrained_model))]):
        yield


# --------------------------------------------------------------------------------------------
# max_new_tokens cap


def _llava_llama_class():
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    return LlavaLlamaForCausalLM


@contextmanager
def max_new_tokens_cap(cap: int) -> Iterator[None]:
    """Clamp an explicit `max_new_tokens` of `LlavaLlamaForCausalLM.generate` calls to `cap`.

    Wraps whatever `generate` the class has at entry (llava-avc's patched one inside
    `patched()`); calls without `max_new_tokens` are left alone (a cap never raises a limit).
    """
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise UserError(f"--max-new-tokens-cap must be a positive integer, got {cap!r}.")
    cls = _llava_llama_class()
    current = cls.generate

    @functools.wraps(current)
    def generate(self, *args, **kwargs):
        limit = kwargs.get("max_new_tokens")
        if limit is not None and limit > cap:
            kwargs["max_new_tokens"] = cap
        return current(self, *args, **kwargs)

    with _Swaps([(cls, "generate", _mark(generate))]):
        yield
