"""`llava-avc convert --to hf ORIGINAL_DIR OUT_DIR [--force]`: an original LLaVA checkpoint as llava-hf.

Writes a directory that transformers' `LlavaForConditionalGeneration` (LLaVA-1.5) or
`LlavaNextForConditionalGeneration` (LLaVA-1.6 anyres) and `AutoProcessor` open offline
(`llava_avc.backends.hf.convert.convert_to_hf`). No network: a hub-id vision tower
(`openai/clip-vit-large-patch14-336`) must already be in the local Hugging Face cache.
Prints the output path. Errors (not a LLaVA checkpoint, a non-empty OUT_DIR without --force,
a vision tower that is not local) are ValueError / OSError: one line and exit status 2.
"""

from __future__ import annotations

import argparse

#: target formats of `--to`
FORMATS = ("hf",)


def register(subparsers) -> None:
    """Add `convert` to an argparse subparsers object (sets `handler`)."""
    parser = subparsers.add_parser(
        "convert",
        help="convert an original LLaVA checkpoint to the Hugging Face llava-hf format",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  llava-avc convert --to hf checkpoints/llava-v1.5-7b checkpoints/llava-v1.5-7b-hf",
    )
    parser.add_argument("--to", required=True, choices=FORMATS, help="target format (hf: transformers' llava-hf)")
    parser.add_argument("original_dir", metavar="ORIGINAL_DIR",
                        help="original LLaVA checkpoint (config.json with mm_*, weights, tokenizer.model)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (must be empty or absent)")
    parser.add_argument("--force", action="store_true", help="replace the contents of a non-empty OUT_DIR")
    parser.set_defaults(handler=run_convert_command)


def run_convert_command(args, argv) -> int:
    """Handler of `llava-avc convert`: convert, print the output directory, return 0."""
    from ..backends.hf.convert import convert_to_hf

    print(convert_to_hf(args.original_dir, args.out_dir, force=args.force))
    return 0
