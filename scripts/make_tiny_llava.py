#!/usr/bin/env python
"""Write a random, offline LLaVA checkpoint (see llava_avc.testing.tiny) and print its path.

    python scripts/make_tiny_llava.py --out /tmp/llava-tiny [--seed 0] [--preset tiny] [--force]
    python scripts/make_tiny_llava.py --format hf --out /tmp/tiny-llava-hf [--preset tiny|tiny-anyres]
    python scripts/make_tiny_llava.py --family qwen2_5_vl --out /tmp/tiny-qwen2_5_vl [--seed 0] [--force]

--format original (default) writes LLaVA's own format (llava-torch's loader; needs `llava`);
--format hf writes the Hugging Face llava-hf format (LlavaForConditionalGeneration /
LlavaNextForConditionalGeneration + AutoProcessor; see llava_avc.testing.tiny_hf), presets tiny
and tiny-anyres only.
--family FAMILY writes a tiny transformers-native checkpoint of that family instead (llava_onevision,
qwen2_5_vl, qwen3_vl, instructblip; see llava_avc.testing.tiny_families); --format and --preset are
then ignored.

Exit status 2 with a one-line message on stderr when the directory name lacks 'llava' (original
format), the directory exists and is not empty (without --force), or the preset / family / config is
invalid.
"""

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def parse_args(argv=None):
    """Parse the command line."""
    from llava_avc.testing.tiny import PRESETS
    from llava_avc.testing.tiny_families import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True,
                        help="checkpoint directory (original format: its name must contain 'llava')")
    parser.add_argument("--format", default="original", choices=("original", "hf"),
                        help="original: LLaVA's own format (default); hf: transformers' llava-hf format")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random weights (the same seed gives the same weights)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--family", choices=FAMILIES,
                        help="write this transformers-native family's checkpoint (ignores --format and --preset)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    return parser.parse_args(argv)


def _factory(args):
    """(the factory the arguments ask for, its keyword arguments besides out, seed and force)."""
    if args.family:
        from llava_avc.testing.tiny_families import make_tiny_family

        return make_tiny_family, {"family": args.family}
    if args.format == "hf":
        from llava_avc.testing.tiny_hf import make_tiny_llava_hf

        return make_tiny_llava_hf, {"preset": args.preset}
    from llava_avc.testing.tiny import make_tiny_llava

    return make_tiny_llava, {"preset": args.preset}


def main(argv=None) -> int:
    """Build the checkpoint; return the process exit status."""
    args = parse_args(argv)
    make, options = _factory(args)
    try:
        path = make(args.out, seed=args.seed, force=args.force, **options)
    except (ValueError, FileExistsError) as exc:
        print(f"make_tiny_llava: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
