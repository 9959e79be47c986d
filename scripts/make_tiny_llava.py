#!/usr/bin/env python
"""Write a random, offline LLaVA checkpoint (see llava_avc.testing.tiny) and print its path.

    python scripts/make_tiny_llava.py --out /tmp/llava-tiny [--seed 0] [--preset tiny] [--force]
    python scripts/make_tiny_llava.py --format hf --out /tmp/tiny-llava-hf [--preset tiny|tiny-anyres]

--format original (default) writes LLaVA's own format (llava-torch's loader; needs `llava`);
--format hf writes the Hugging Face llava-hf format (LlavaForConditionalGeneration /
LlavaNextForConditionalGeneration + AutoProcessor; see llava_avc.testing.tiny_hf), presets tiny
and tiny-anyres only.

Exit status 2 with a one-line message on stderr when the directory name lacks 'llava' (original
format), the directory exists and is not empty (without --force), or the preset / config is invalid.
"""

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def parse_args(argv=None):
    """Parse the command line."""
    from llava_avc.testing.tiny import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True,
                        help="checkpoint directory (original format: its name must contain 'llava')")
    parser.add_argument("--format", default="original", choices=("original", "hf"),
                        help="original: LLaVA's own format (default); hf: transformers' llava-hf format")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random weights (the same seed gives the same weights)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Build the checkpoint; return the process exit status."""
    args = parse_args(argv)
    if args.format == "hf":
        from llava_avc.testing.tiny_hf import make_tiny_llava_hf as make
    else:
        from llava_avc.testing.tiny import make_tiny_llava as make
    try:
        path = make(args.out, preset=args.preset, seed=args.seed, force=args.force)
    except (ValueError, FileExistsError) as exc:
        print(f"make_tiny_llava: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
