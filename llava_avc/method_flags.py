"""Command-line flags that choose the model and the decoding method with its hyperparameters.

Shared by `llava-avc ask`, `llava-avc run` and `llava-avc eval`. Besides our own spellings it
accepts the flags of the official AvisC and VCD scripts as aliases (`--use_avisc`, `--cd_alpha`,
`--cd_beta`, `--layer_gamma`, `--lamb`, `--masking_scheme`, `--use_cd`, `--noise_step`,
`--use_m3id`, each also hyphenated), so their command lines can be reused unchanged.
"""

from __future__ import annotations

import argparse
from typing import Optional

from .config import MASKING_SCHEMES, AVCConfig, M3IDConfig, VCDConfig

METHODS = ("avc", "vcd", "m3id", "none")
_CONFIG_CLASSES = {"avc": AVCConfig, "vcd": VCDConfig, "m3id": M3IDConfig}

# (dest, our flag, alias flags, type, help, methods it applies to, config field)
_VALUE_FLAGS = [
    ("avc_alpha", "--avc-alpha", (), float, "AVC contrast strength (default 2.5)", ("avc",), "alpha"),
    ("avc_beta", "--avc-beta", (), float, "AVC plausibility cutoff (default 0.1)", ("avc",), "beta"),
    ("avc_gamma", "--avc-gamma", ("--layer_gamma", "--layer-gamma"), float,
     "AVC top-p share of image attention for layer selection (default 0.5)", ("avc",), "gamma"),
    ("avc_lambda", "--avc-lambda", ("--lamb",), float, "AVC blind threshold mean + lambda*std (default 1.0)",
     ("avc",), "lam"),
    ("avc_masking", "--avc-masking", ("--masking_scheme", "--masking-scheme"), str,
     f"AVC replacement of non-blind tokens: {', '.join(MASKING_SCHEMES)} (default zeros)", ("avc",), "masking"),
    ("vcd_alpha", "--vcd-alpha", (), float, "VCD contrast strength (default 1.0)", ("vcd",), "alpha"),
    ("vcd_noise_step", "--vcd-noise-step", ("--noise_step", "--noise-step"), int,
     "VCD diffusion noise step of 1000 (default 500)", ("vcd",), "noise_step"),
    ("m3id_lambda", "--m3id-lambda", (), float, "M3ID decay lambda of g_t = exp(-lambda t) (default 0.02)",
     ("m3id",), "lam"),
    ("cd_alpha", "--cd_alpha", ("--cd-alpha",), float, "alias: alpha of the chosen method (AvisC/VCD scripts)",
     ("avc", "vcd"), "alpha"),
    ("cd_beta", "--cd_beta", ("--cd-beta",), float, "alias: beta of the chosen method (AvisC/VCD scripts)",
     ("avc", "vcd", "m3id"), "beta"),
]
_METHOD_SWITCHES = [("use_avisc", "avc"), ("use_cd", "vcd"), ("use_m3id", "m3id")]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model-path, --model-base, --device and the exclusive --load-4bit / --load-8bit."""
    model = parser.add_argument_group("model")
    model.add_argument("--model-path", required=True, metavar="PATH", help="LLaVA checkpoint dir or hub id")
    model.add_argument("--model-base", default=None, metavar="PATH", help="base model for LoRA checkpoints")
    model.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    quantization = model.add_mutually_exclusive_group()
    quantization.add_argument("--load-4bit", action="store_true",
                              help="bitsandbytes nf4 weights (LLaVA-1.5-7B on an 8 GB GPU)")
    quantization.add_argument("--load-8bit", action="store_true", help="bitsandbytes int8 weights")


def add_method_arguments(parser: argparse.ArgumentParser, default_method: str = "avc") -> None:
    """Add the method group to `parser`; read the result back with `config_from_args`."""
    group = parser.add_argument_group("decoding method")
    group.add_argument("--method", choices=METHODS, default=None,
                       help=f"avc (AvisC), vcd, m3id or none = plain LLaVA decoding (default {default_method})")
    for dest, method in _METHOD_SWITCHES:
        group.add_argument(f"--{dest}", f"--{dest.replace('_', '-')}", dest=dest, action="store_true",
                           help=f"alias of --method {method} (official scripts' spelling)")
    for dest, flag, aliases, kind, text, _, _ in _VALUE_FLAGS:
        group.add_argument(flag, *aliases, dest=dest, type=kind, default=None, help=text)
    parser.set_defaults(_default_method=default_method)


def chosen_method(args: argparse.Namespace) -> str:
    """The one method the flags ask for. Raises ValueError when they ask for two."""
    asked = {args.method} if args.method else set()
    asked |= {method for dest, method in _METHOD_SWITCHES if getattr(args, dest)}
    if len(asked) > 1:
        raise ValueError(f"conflicting method flags: {', '.join(sorted(asked))}; choose one method.")
    return asked.pop() if asked else args._default_method


def config_from_args(args: argparse.Namespace):
    """The AVCConfig / VCDConfig / M3IDConfig the flags describe, or None for `--method none`.

    Raises:
        ValueError: two methods, or a flag of another method (e.g. --avc-gamma with --method vcd).
    """
    method = chosen_method(args)
    values: dict = {}
    for dest, flag, _, _, _, methods, field in _VALUE_FLAGS:
        value = getattr(args, dest)
        if value is None:
            continue
        if method not in methods:
            raise ValueError(f"{flag} applies to {'/'.join(methods)}, but the method is {method}; drop it.")
        if field in values and values[field] != value:
            raise ValueError(f"{flag} (={value}) contradicts another flag setting {field}={values[field]}.")
        values[field] = value
    if method == "none":
        return None
    return _CONFIG_CLASSES[method](**values)


def default_config(method: str):
    """The default AVCConfig / VCDConfig / M3IDConfig of a method name; None for "none"."""
    if method == "none":
        return None
    if method not in _CONFIG_CLASSES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    return _CONFIG_CLASSES[method]()


def method_name(config: Optional[object]) -> str:
    return "none" if config is None else config.method
