#!/usr/bin/env python
"""Write a random, offline LLaVA checkpoint (see llava_avc.testing.tiny) and print its path.

    python scripts/make_tiny_llava.py --out /tmp/llava-tiny [--seed 0] [--preset tiny] [--force]

Exit status 2 with a one-line message on stderr when the directory name lacks 'llava', the
directory exists and is not empty (without --force), or the preset / config is invalid.
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
                        help="checkpoint directory (its name must contain 'llava')")
    parser.add_argument("--seed", type=int, default=0,
                        help="torch.manual_seed for the random weights")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Build the checkpoint; return the process exit status."""
    from llava_avc.testing.tiny import make_tiny_llava

    args = parse_args(argv)
    try:
        path = make_tiny_llava(args.out, preset=args.preset, seed=args.seed, force=args.force)
    except (ValueError, FileExistsError) as exc:
        print(f"make_tiny_llava: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
