#!/usr/bin/env python
"""Decode-speed benchmark of upstream LLaVA generate, the lean loop, AVC, VCD and M3ID.

Thin command line over `decode_benchmark.run_benchmark` (the module beside this script; see there
for what is measured).

Examples:
    python scripts/bench_decode.py                                    # tiny, CPU, fp32, the full grid
    python scripts/bench_decode.py --batches 1 --new-tokens 16 --runs 1 --methods plain,lean,avc
    python scripts/bench_decode.py --preset 7b-shape --device cuda --dtypes fp16,nf4 --json $OUT/bench.json
    .venv-hf/bin/python scripts/bench_decode.py --backend hf --batches 1 --new-tokens 16 --runs 1   # llava-hf
    .venv-hf/bin/python scripts/bench_decode.py --family qwen2_5_vl --batches 1,4 --new-tokens 16 --runs 3
    python scripts/bench_decode.py --report .cache/gpu-check/                 # tables + target verdicts of saved rows
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The llava-hf backend's other families (`--family`), as decode_backends.BACKENDS names them.
FAMILIES = ["llava_onevision", "qwen2_5_vl", "qwen3_vl", "instructblip"]


def _import_from_working_tree() -> None:
    """Make `llava_avc` importable when the package is not installed (the package itself maps
    the repository's `patches/` folder to `llava_avc.patches`)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(item.strip()) for item in text.split(",") if item.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list: {error}") from error

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[3:]),
    )
    model = parser.add_argument_group("model")
    model.add_argument("--preset", default="tiny", choices=["tiny", "7b-shape"],
                       help="shape of the random checkpoint (default: tiny)")
    model.add_argument("--checkpoint", metavar="DIR", default=None,
                       help="an existing LLaVA checkpoint instead of the preset's random one")
    model.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    model.add_argument("--backend", default="llava", choices=["llava", "hf"],
                       help="llava = the original LLaVA codebase, patched (plain = upstream LLaVA generate); "
                       "hf = llava-hf through transformers' generate (plain = transformers' own generate)")
    model.add_argument("--family", default=None, choices=FAMILIES,
                       help="another family of the llava-hf backend (transformers 5): its tiny random checkpoint "
                       "(or --checkpoint), plain = the model's own generate; replaces --backend")
    grid = parser.add_argument_group("grid")
    grid.add_argument("--dtypes", type=_csv(str), default=["fp32"], metavar="LIST", help="fp32,fp16,nf4 (default: fp32)")
    grid.add_argument("--batches", type=_csv(int), default=[1, 8], metavar="LIST", help="default: 1,8")
    grid.add_argument("--new-tokens", type=_csv(int), default=[64, 256], metavar="LIST", help="default: 64,256")
    grid.add_argument("--methods", type=_csv(str), metavar="LIST",
                      default=["plain", "lean", "avc", "avc_sequential", "vcd", "m3id"],
                      help="plain,lean,avc,avc_sequential,vcd,m3id (default: all)")
    grid.add_argument("--runs", type=int, default=5, help="timed calls per measurement, median (default: 5)")
    grid.add_argument("--warmup", type=int, default=1, help="untimed calls per method and batch (default: 1)")
    grid.add_argument("--prompt-tokens", type=int, default=626,
                      help="merged prompt length, text + image tokens (default: 626)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="OUT", default=None, help="write the rows as a JSON list (after every row)")
    out.add_argument("--report", nargs="+", metavar="JSON", default=None,
                     help="measure nothing: print the tables and the target verdicts of saved --json files "
                          "(or folders of them)")
    out.add_argument("--time-budget", type=float, metavar="S", default=None,
                     help="(dtype, batch) groups not started after S seconds are recorded as skipped")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _import_from_working_tree()
    import decode_benchmark as bench

    if args.report:
        try:
            rows = bench.read_rows(args.report)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(bench.format_table(rows) + "\n\n" + bench.format_targets(bench.check_targets(rows)))
        return 0
    info = bench.machine_info(args.device)
    print(f"machine: {info['machine']}; torch {info['torch']}, transformers {info['transformers']}; {info['date']}",
          flush=True)
    done = []

    def on_row(row):
        done.append(row)
        metrics = ", ".join(f"{key}={row[key]:.3g}" for key in ("prefill_ms", "decode_ms_per_token", "tokens_per_s",
                                                                 "peak_mem_gib") if row[key] is not None)
        reason = row.get("skipped") or row.get("error") or ""
        print(f"  {row['method']} {row['dtype']} B={row['batch']} N={row['new_tokens']}: {metrics}{reason}", flush=True)
        if args.json:
            bench.write_json(done, args.json)

    try:
        rows = bench.run_benchmark(
            preset=args.preset, device=args.device, dtypes=args.dtypes, batches=args.batches,
            new_tokens=args.new_tokens, runs=args.runs, warmup=args.warmup, methods=args.methods,
            checkpoint=args.checkpoint, prompt_tokens=args.prompt_tokens, time_budget_s=args.time_budget,
            on_row=on_row, log=lambda message: print(message, flush=True), backend=args.family or args.backend,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        bench.write_json(rows, args.json)  # again: now with the AVC ratios
    command = "python scripts/bench_decode.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\ncommand: {command}\nbackend: {args.family or args.backend}\nprompt: {rows[0].get('prompt_tokens', '-') if rows else '-'} tokens "
          f"(576 image tokens for LLaVA-1.5 shapes), greedy, EOS suppressed, median of {args.runs}\n")
    print(bench.format_table(rows, info))
    print("\n" + bench.format_targets(bench.check_targets(rows)))
    return 1 if any(row.get("error") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
