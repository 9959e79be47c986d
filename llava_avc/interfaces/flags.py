"""Command-line flags that choose the model and the decoding method with its hyperparameters.

Shared by `llava-avc ask`, `llava-avc run` and `llava-avc eval`. The method flags are generated
from the method registry (`llava_avc.decode.methods`) when the parser is built: `--method` offers
every registered method, and every field of its config class (`AVCConfig`, `VCDConfig`, `M3IDConfig`,
or a registered one) becomes `--<method>-<field>` (the field's `flag` metadata renames it:
`lam` -> `--avc-lambda`) with the field's help, constraint and default. The official AvisC and VCD
scripts' spellings are accepted as aliases (`OFFICIAL_ALIASES`), so their command lines can be
reused unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Optional

from ..errors import UserError
from ..decode.methods import NO_METHOD, get_method, method_names

#: The official scripts' method switches: flag (also hyphenated) -> method.
METHOD_SWITCHES = {"use_avisc": "avc", "use_cd": "vcd", "use_m3id": "m3id"}


@dataclass(frozen=True)
class Alias:
    """An official scripts' flag: its spellings, the methods it applies to and the config field it sets."""

    flags: tuple
    methods: tuple
    field: str


#: Flags of the official AvisC / VCD scripts. Those of one method are extra spellings of our flag;
#: `--cd_alpha` / `--cd_beta` set the field of whichever method is chosen.
OFFICIAL_ALIASES = (
    Alias(("--layer_gamma", "--layer-gamma"), ("avc",), "gamma"),
    Alias(("--lamb",), ("avc",), "lam"),
    Alias(("--masking_scheme", "--masking-scheme"), ("avc",), "masking"),
    Alias(("--noise_step", "--noise-step"), ("vcd",), "noise_step"),
    Alias(("--cd_alpha", "--cd-alpha"), ("avc", "vcd"), "alpha"),
    Alias(("--cd_beta", "--cd-beta"), ("avc", "vcd", "m3id"), "beta"),
)


@dataclass(frozen=True)
class MethodFlag:
    """One value flag: where argparse stores it, its spellings, the methods and config field it sets."""

    dest: str
    flags: tuple
    methods: tuple
    field: str
    type: type
    help: str


def method_flags() -> list:
    """One MethodFlag per config field of every registered method, plus the shared official aliases
    (cd_alpha, cd_beta)."""
    result = []
    for method in method_names():
        cls = get_method(method).config_class
        for field in dataclasses.fields(cls):
            name = field.metadata.get("flag", field.name).replace("_", "-")
            aliases = tuple(flag for alias in OFFICIAL_ALIASES if alias.methods == (method,)
                            and alias.field == field.name for flag in alias.flags)
            text = f"{cls.__name__}.{field.name}: {field.metadata['help']} ({field.metadata['constraint']}; " \
                   f"default {field.default})"
            result.append(MethodFlag(f"{method}_{field.name}", (f"--{method}-{name}",) + aliases, (method,),
                                     field.name, type(field.default), text))
    for alias in OFFICIAL_ALIASES:
        if len(alias.methods) > 1:
            result.append(MethodFlag(alias.flags[0].lstrip("-"), alias.flags, alias.methods, alias.field, float,
                                     f"alias: {alias.field} of the chosen method ({'/'.join(alias.methods)}; "
                                     "official AvisC/VCD scripts)"))
    return result


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model-path, --model-base, --device and the exclusive --load-4bit / --load-8bit."""
    model = parser.add_argument_group("model")
    model.add_argument("--model-path", required=True, metavar="PATH", help="checkpoint dir or hub id: original LLaVA (liuhaotian/llava-v1.5-7b) or llava-hf (llava-hf/llava-1.5-7b-hf)")
    model.add_argument("--model-base", default=None, metavar="PATH", help="base model for LoRA checkpoints")
    model.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    add_quantization_arguments(model)


def add_quantization_arguments(group) -> None:
    """The exclusive --load-4bit / --load-8bit pair (argparse refuses both at once)."""
    quantization = group.add_mutually_exclusive_group()
    quantization.add_argument("--load-4bit", action="store_true",
                              help="bitsandbytes nf4 weights (LLaVA-1.5-7B on an 8 GB GPU)")
    quantization.add_argument("--load-8bit", action="store_true", help="bitsandbytes int8 weights")


def add_method_arguments(parser: argparse.ArgumentParser, default_method: str = "avc") -> None:
    """Add the method group to `parser`; read the result back with `config_from_args`."""
    group = parser.add_argument_group("decoding method")
    names = method_names() + (NO_METHOD,)
    group.add_argument("--method", choices=names, default=None,
                       help=f"{', '.join(names[:-1])} or {NO_METHOD} = plain LLaVA decoding (default {default_method})")
    for dest, method in METHOD_SWITCHES.items():
        group.add_argument(f"--{dest}", f"--{dest.replace('_', '-')}", dest=dest, action="store_true",
                           help=f"alias of --method {method} (official scripts' spelling)")
    for flag in method_flags():
        group.add_argument(*flag.flags, dest=flag.dest, type=flag.type, default=None, help=flag.help)
    parser.set_defaults(default_method=default_method)


def chosen_method(args: argparse.Namespace) -> str:
    """The one method the flags ask for. Raises ValueError when they ask for two."""
    asked = {args.method} if args.method else set()
    asked |= {method for dest, method in METHOD_SWITCHES.items() if getattr(args, dest)}
    if len(asked) > 1:
        raise UserError(f"conflicting method flags: {', '.join(sorted(asked))}; choose one method.")
    return asked.pop() if asked else args.default_method


def config_from_args(args: argparse.Namespace) -> Optional[object]:
    """The config of the method the flags describe (AVCConfig, VCDConfig, M3IDConfig, a registered one's),
    or None for `--method none`.

    Raises:
        ValueError: two methods, a flag of another method (e.g. --avc-gamma with --method vcd),
            two flags that set one field to different values, or a value the config refuses.
    """
    method = chosen_method(args)
    values: dict = {}
    for flag in method_flags():
        value = getattr(args, flag.dest, None)
        if value is None:
            continue
        if method not in flag.methods:
            raise UserError(f"{flag.flags[0]} applies to {'/'.join(flag.methods)}, but the method is {method}; "
                            "drop it.")
        if flag.field in values and values[flag.field] != value:
            raise UserError(f"{flag.flags[0]} (={value}) contradicts another flag setting "
                            f"{flag.field}={values[flag.field]}.")
        values[flag.field] = value
    if method == NO_METHOD:
        return None
    return get_method(method).config_class(**values)
