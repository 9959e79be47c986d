"""The `llava-avc` command (also `python -m llava_avc`).

    llava-avc ask --model-path P --image IMG --query Q [--method avc|vcd|m3id|none]
    llava-avc doctor

The CLI only parses, builds configs and calls library functions; heavy imports are deferred.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .flags import add_method_arguments, add_model_arguments


def _add_ask(subparsers) -> None:
    parser = subparsers.add_parser(
        "ask",
        help="answer one question about one image",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  llava-avc ask --model-path liuhaotian/llava-v1.5-7b --image photo.jpg "
        "--query 'Is there a dog in the image?'",
    )
    add_model_arguments(parser)
    parser.add_argument("--conv-mode", default="llava_v1", help="LLaVA conversation template (default llava_v1)")
    query = parser.add_argument_group("question")
    query.add_argument("--image", required=True, metavar="FILE", help="image file")
    query.add_argument("--query", required=True, help="the question")
    add_method_arguments(parser, default_method="avc")
    decoding = parser.add_argument_group("decoding")
    decoding.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    decoding.add_argument("--top-p", type=float, default=None)
    decoding.add_argument("--max-new-tokens", type=int, default=64)
    decoding.add_argument("--seed", type=int, default=42)
    parser.add_argument("--heatmap", metavar="PNG", default=None,
                        help="save the image with the blind tokens and their attention scores drawn over it")
    parser.set_defaults(handler=_run_ask)


def _add_doctor(subparsers) -> None:
    parser = subparsers.add_parser("doctor", help="check the installation (versions, LLaVA import, 4-bit kernels)")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.set_defaults(handler=_run_doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava-avc",
        description="Attentional Vision Calibration (AVC, arXiv 2405.17820) for LLaVA.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_ask(subparsers)
    _add_doctor(subparsers)
    from .convert_command import register as register_convert
    from .eval_commands import register as register_eval
    from .run_script import register as register_run

    register_run(subparsers)
    register_eval(subparsers)
    register_convert(subparsers)
    return parser


def _run_doctor(args, argv) -> int:
    from .doctor import doctor_main

    return doctor_main(["--json"] if args.json else [])


def _run_ask(args, argv) -> int:
    from ..algorithm.config import method_name
    from .ask import ask
    from .flags import config_from_args

    config = config_from_args(args)
    result = ask(
        model_path=args.model_path,
        model_base=args.model_base,
        image=args.image,
        query=args.query,
        method=method_name(config),
        config=config,
        load_4bit=args.load_4bit,
        load_8bit=args.load_8bit,
        heatmap=args.heatmap,
        conv_mode=args.conv_mode,
        device=args.device,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    for line in result.report_lines():
        print(line, file=sys.stderr)
    print(result.answer)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one subcommand. Its handler gets the parsed args and the argv (for run records)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from ..algorithm.contrast import NonFiniteLogitsError

    try:
        return args.handler(args, argv)
    except (ValueError, OSError, NonFiniteLogitsError) as error:
        print(f"llava-avc {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
