"""The `llava-avc` command (also `python -m llava_avc`).

    llava-avc ask --model-path P --image IMG --query Q [--method avc|vcd|m3id|none]
    llava-avc doctor

The CLI only parses, builds configs and calls library functions; heavy imports are deferred.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..errors import UserError
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
    parser.add_argument("--conv-mode", default=None, metavar="NAME",
                        help="conversation template: default llava_v1 (LLaVA's) on original checkpoints, the "
                             "checkpoint's own chat template on llava-hf ones ('chat-template'; llava_v1 and "
                             "vicuna_v1 are rendered as LLaVA renders them there)")
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
    parser.set_defaults(handler=_run_ask, on_interrupt=lambda args: "no answer was produced and nothing was written; "
                        "rerun the command to ask again")


def _add_doctor(subparsers) -> None:
    parser = subparsers.add_parser("doctor", help="check the installation (versions, LLaVA import, 4-bit kernels)")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.set_defaults(handler=_run_doctor)


class _Parser(argparse.ArgumentParser):
    """argparse with a SHORT usage line on errors (the required arguments and "[options]", not every
    flag), so a usage error is two lines: usage, then `llava-avc COMMAND: error: ...` with the fix."""

    def short_usage(self) -> str:
        if self.usage:
            return self.usage if self.usage.startswith(self.prog) else f"{self.prog} {self.usage}"
        parts = [self.prog]
        for action in self._actions:
            if action.option_strings and action.required:
                parts.append(f"{action.option_strings[0]} {action.metavar or action.dest.upper()}")
            elif not action.option_strings and action.help is not argparse.SUPPRESS:
                parts.append(action.metavar if isinstance(action.metavar, str) else action.dest)
        return " ".join(parts + ["[options]"])

    def error(self, message):
        self.exit(2, f"usage: {self.short_usage()}\n{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llava-avc",
        description="Attentional Vision Calibration (AVC, arXiv 2405.17820) for LLaVA.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_ask(subparsers)
    _add_doctor(subparsers)
    from .convert_command import register as register_convert
    from .eval_commands import register as register_eval
    from .run_script import register as register_run

    register_run(subparsers)
    register_eval(subparsers)
    register_convert(subparsers)
    parser.set_defaults(commands=subparsers.choices, main=main)  # a command may run another one
    return parser


def parse(parser: argparse.ArgumentParser, argv: list) -> argparse.Namespace:
    """`parse_args`, except that arguments a command does not know are reported by that command's parser
    (its usage line and `llava-avc COMMAND: error: ...`), not by the top-level one."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        args.commands[args.command].error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _run_doctor(args, argv) -> int:
    from .doctor import doctor_main

    return doctor_main(["--json"] if args.json else [])


def _run_ask(args, argv) -> int:
    from ..decode.methods import method_name
    from ..decode.sampling import FLAGS, check_sampling
    from ..eval.inputs import check_png_file, check_query, image_problem
    from .flags import config_from_args

    config = config_from_args(args)  # every check that needs no torch first: a usage error is instant
    check_query(args.query, "--query")
    check_sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, names=FLAGS)
    if image_problem(args.image):
        raise UserError(f"{image_problem(args.image)}; pass an image file (JPEG, PNG, ...) as --image.")
    if args.heatmap:
        check_png_file(args.heatmap, "--heatmap")
    from .ask import ask

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


def describe_error(error: BaseException) -> str:
    """One line for a user error: an OSError names its file (a full disk says to free space)."""
    import errno

    if isinstance(error, OSError) and error.strerror:
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        if full and error.filename:
            message = f"cannot write {error.filename}: {error.strerror}"
        else:
            message = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
        if full:
            message += "; free some disk space (or write elsewhere) and rerun the same command"
    else:
        message = str(error)
    return " ".join(message.split()) or type(error).__name__


def _is_user_error(error: BaseException) -> bool:
    """A `UserError` (raised on purpose for a user's mistake) or an operating-system error on a named file
    (`llava_avc.errors`); anything else is a bug and keeps its traceback."""
    from ..errors import UserError, is_environment_error

    return isinstance(error, UserError) or is_environment_error(error)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one subcommand. Its handler gets the parsed args and the argv (for run records).

    A user error (`llava_avc.errors.UserError`, or an operating-system error on a file) is one line on
    stderr and exit status 2; anything else is a bug and shows its traceback;
    Ctrl-C is one line and exit status 130 (handlers that write files say what was kept).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        args = parse(build_parser(), argv)
        try:
            return args.handler(args, argv)
        except Exception as error:  # noqa: BLE001 - a user error is one line; anything else is a bug: re-raised
            if not _is_user_error(error):
                raise
            print(f"llava-avc {args.command}: error: {describe_error(error)}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        command = args.command if args is not None else next((a for a in argv if not a.startswith("-")), "")
        hook = getattr(args, "on_interrupt", None)
        detail = f"; {hook(args)}" if hook is not None else ""
        print(f"llava-avc{' ' + command if command else ''}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
