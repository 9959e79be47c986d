"""The device a model loads on and whether it may load quantized there: one rule for both backends,
the launcher and `llava-avc doctor`. Importing this module is cheap (torch is imported when a
function needs it), so the command line checks these before anything heavy loads."""

from __future__ import annotations

from typing import Optional

from ..errors import UserError


def check_one_quantization(load_4bit: bool, load_8bit: bool) -> None:
    """Raise ValueError when both 4-bit and 8-bit loading are asked for (the one place that says so)."""
    if load_4bit and load_8bit:
        raise UserError("--load-4bit and --load-8bit are exclusive; pick one.")


#: Device types a model can be loaded on (what `--device` accepts, with an optional ":N" index).
DEVICE_TYPES = ("cuda", "cpu", "mps")


def default_device() -> str:
    """cuda when torch sees a CUDA GPU, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: Optional[str]) -> str:
    """The device a model will be loaded on (None: `default_device()`), checked before anything loads.

    Raises:
        ValueError: not a device torch knows, a type llava-avc does not load models on (e.g. tpu),
            cuda on a machine where torch finds no CUDA GPU, or a GPU index that does not exist.
    """
    import torch

    if device is None:
        return default_device()
    text = str(device).strip()
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in DEVICE_TYPES:
        raise UserError(f"--device (={text!r}) is not a device llava-avc can load a model on; use cuda (the "
                        "first CUDA GPU), cuda:N (GPU N) or cpu.")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {text}, but torch finds no CUDA GPU on this machine; pass --device cpu to run "
                            "on the CPU (fp32), or install a CUDA build of torch.")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UserError(f"--device {text}: there are {torch.cuda.device_count()} CUDA GPU(s) here "
                            f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); pick one of them.")
    if parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError(f"--device {text}, but torch finds no Apple GPU (MPS) here; pass --device cpu.")
    return text


#: oldest bitsandbytes with working 4-bit kernels on a CUDA GPU / on a CPU.
MIN_BNB_CUDA = (0, 43, 0)
MIN_BNB_CPU = (0, 48, 0)
#: oldest transformers whose bitsandbytes integration accepts a CPU device.
MIN_TRANSFORMERS_CPU_QUANT = (4, 53, 0)


def _version(distribution: str) -> Optional[tuple]:
    import re
    from importlib import metadata

    try:
        numbers = [int(part) for part in re.findall(r"\d+", metadata.version(distribution))[:3]]
    except metadata.PackageNotFoundError:
        return None
    return tuple(numbers + [0] * (3 - len(numbers)))


def check_quantization_supported(load_4bit: bool, load_8bit: bool, device: str) -> None:
    """Raise ValueError with a fix when this machine cannot load a model quantized on `device`:
    the one rule for both backends, the launcher and `llava-avc doctor`."""
    check_one_quantization(load_4bit, load_8bit)
    if not (load_4bit or load_8bit):
        return
    flag = "--load-4bit" if load_4bit else "--load-8bit"
    bits = "4-bit" if load_4bit else "8-bit"
    import torch

    on_cuda = str(device).startswith("cuda")
    if on_cuda and not torch.cuda.is_available():
        raise UserError(f"{bits} loading needs a CUDA GPU; found none; drop {flag} to run in fp32 on the CPU.")
    transformers_version = _version("transformers") or (0, 0, 0)
    if not on_cuda and transformers_version < MIN_TRANSFORMERS_CPU_QUANT:
        raise UserError(
            f"{bits} loading needs a CUDA GPU; found none; drop {flag} to run in fp32 on the CPU "
            f"(or use transformers >= 4.53 with bitsandbytes >= 0.48, which quantize on the CPU)."
        )
    minimum = MIN_BNB_CUDA if on_cuda else MIN_BNB_CPU
    installed = _version("bitsandbytes")
    wanted = ".".join(map(str, minimum))
    if installed is None:
        raise UserError(f"{flag} needs bitsandbytes >= {wanted}, which is not installed: "
                        f"pip install 'bitsandbytes>={wanted}'.")
    if installed < minimum:
        raise UserError(
            f"bitsandbytes {'.'.join(map(str, installed))} is too old for {flag} here; "
            f"need >= {wanted}: pip install -U 'bitsandbytes>={wanted}'."
        )
