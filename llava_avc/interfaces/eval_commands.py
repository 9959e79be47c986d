"""The `eval`, `score` and `merge` subcommands of `llava-avc` (see `llava_avc.eval` for the workflow).

`register(subparsers)` adds them to the main CLI (`llava_avc.interfaces.cli`), whose error handling
they share: a user error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from .flags import add_method_arguments, add_model_arguments

BENCHMARK_HELP = "pope, mme or amber"


def _add_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="answer a benchmark's questions (resumable, chunkable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  llava-avc eval pope --model-path liuhaotian/llava-v1.5-7b --image-folder val2014 \\\n"
               "      --question-file coco_pope_random.json --out runs/pope-avc --method avc\n"
               "multi-GPU: one process per GPU, see `python -c 'import llava_avc.eval; help(llava_avc.eval)'`.")
    parser.add_argument("benchmark", help=BENCHMARK_HELP)
    add_model_arguments(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--question-file", default=None, metavar="F",
                      help="the benchmark's original question file (MME: the MME_Benchmark_release_version folder)")
    data.add_argument("--image-folder", default=None, metavar="DIR", help="folder of the images the questions name")
    data.add_argument("--out", required=True, metavar="DIR", help="run folder: answers*.jsonl and run.json")
    data.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N questions")
    data.add_argument("--num-chunks", type=int, default=1, metavar="K", help="split the questions in K chunks")
    data.add_argument("--chunk-idx", type=int, default=0, metavar="I", help="answer chunk I (0-based)")
    add_method_arguments(parser, default_method="avc")
    decoding = parser.add_argument_group("decoding")
    decoding.add_argument("--protocol", default="paper", help="paper (sampling T=1, 64 tokens, llava_v1) or llava "
                          "(greedy, short-answer suffix, 128 tokens, vicuna_v1); default paper")
    decoding.add_argument("--conv-mode", default=None, help="override the protocol's conversation template")
    decoding.add_argument("--max-new-tokens", type=int, default=None, help="override the protocol's limit")
    decoding.add_argument("--seed", type=int, default=42, help="torch.manual_seed once at the start (default 42)")
    decoding.add_argument("--batch-size", type=int, default=1, help="questions per generate call (left-padded)")
    parser.add_argument("--progress", dest="progress", action="store_true", default=None,
                        help="always show the progress bar (default: only on a terminal)")
    parser.set_defaults(handler=run_eval_command)


def _add_score(subparsers) -> None:
    parser = subparsers.add_parser(
        "score", help="score answers (POPE as upstream eval_pope.py, MME as calculation.py, AMBER)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  llava-avc score pope --answers-file runs/pope-avc --question-file coco_pope_random.json\n"
               "  llava-avc score mme --answers-file runs/mme-avc --question-file MME_Benchmark_release_version\n"
               "  llava-avc score amber --answers-file runs/amber-avc --annotation-dir AMBER/data\n"
               "  llava-avc score pope --compare runs/pope-none runs/pope-avc --chart pope.png")
    parser.add_argument("benchmark", help=BENCHMARK_HELP)
    runs = parser.add_mutually_exclusive_group(required=True)
    runs.add_argument("--answers-file", metavar="A", help="answers .jsonl or a run folder")
    runs.add_argument("--compare", nargs="+", metavar="A", help="several answers files / run folders side by side")
    parser.add_argument("--question-file", default=None, help="the question file (POPE) or MME folder")
    parser.add_argument("--annotation-dir", default=None,
                        help="POPE: folder of coco_pope_<category>.json; AMBER: folder of annotations.json, "
                             "relation.json, safe_words.txt")
    parser.add_argument("--rule", choices=("llava", "paper"), default=None,
                        help="yes/no rule: llava = upstream eval_pope.py, paper = AvisC recorder "
                             "(default: the protocol the answers were made with)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--chart", default=None, metavar="PNG", help="write a bar chart of the headline metrics")
    parser.add_argument("--labels", nargs="+", default=None, help="names of the --compare runs")
    parser.set_defaults(handler=run_score_command)


def _add_merge(subparsers) -> None:
    parser = subparsers.add_parser("merge", help="join answers.chunk<I>of<K>.jsonl into answers.jsonl")
    parser.add_argument("--out", required=True, metavar="DIR", help="the run folder the chunks wrote into")
    parser.add_argument("--force", action="store_true", help="overwrite an existing answers.jsonl")
    parser.set_defaults(handler=run_merge_command)


def register(subparsers) -> None:
    """Add `eval`, `score` and `merge` to an argparse subparsers object (each sets `handler`)."""
    _add_eval(subparsers)
    _add_score(subparsers)
    _add_merge(subparsers)


def run_eval_command(args, argv) -> int:
    """Handler of `llava-avc eval`."""
    from .flags import config_from_args
    from ..eval.benchmarks import get_benchmark
    from ..eval.runner import EvalOptions, run_eval

    benchmark = get_benchmark(args.benchmark).name
    options = EvalOptions(
        benchmark=benchmark, model_path=args.model_path, out=args.out, image_folder=args.image_folder,
        question_file=args.question_file, config=config_from_args(args), protocol=args.protocol,
        batch_size=args.batch_size, seed=args.seed, num_chunks=args.num_chunks, chunk_idx=args.chunk_idx,
        limit=args.limit, device=args.device, max_new_tokens=args.max_new_tokens, conv_mode=args.conv_mode,
        model_base=args.model_base, load_4bit=args.load_4bit, load_8bit=args.load_8bit, progress=args.progress)
    summary = run_eval(options)
    print(f"{summary.new} new answers, {summary.skipped} already there, {summary.total} questions "
          f"-> {summary.answers_file} (config {summary.config_hash}, {summary.seconds:.1f} s)")
    if options.num_chunks > 1:
        print(f"when every chunk is done: llava-avc merge --out {args.out}")
    else:
        print(f"next: llava-avc score {benchmark} --answers-file {args.out}")
    return 0


def _scorer(benchmark: str):
    """(score(records, args, rule) -> result, report(result), public(result), headline(result))."""
    from ..eval import score_amber, score_mme, score_pope

    def pope(records, args, rule):
        return score_pope.score_pope(records, args.question_file, args.annotation_dir, rule)

    def mme(records, args, rule):
        return score_mme.score_mme(records, args.question_file, rule)

    def amber(records, args, rule):
        if not args.annotation_dir:
            raise ValueError("score amber needs --annotation-dir (AMBER's data/ folder with annotations.json, "
                             "relation.json, safe_words.txt).")
        return score_amber.score_amber(records, score_amber.load_references(args.annotation_dir), rule)

    return {
        "pope": (pope, score_pope.report, score_pope.public, score_pope.headline),
        "mme": (mme, lambda r, rule: score_mme.report(r), lambda r: r, score_mme.headline),
        "amber": (amber, lambda r, rule: score_amber.report(r), lambda r: r, score_amber.headline),
    }[benchmark]


def _score_file(benchmark: str, path, args) -> tuple:
    from ..eval.answers import read_answers
    from ..eval.compare import resolve_answers
    from ..eval.rules import default_rule

    records = read_answers(resolve_answers(path))
    if not records:
        raise ValueError(f"{path}: no answers to score.")
    rule = args.rule or default_rule(records)
    return _scorer(benchmark)[0](records, args, rule), rule


def run_score_command(args, argv) -> int:
    """Handler of `llava-avc score`."""
    from ..eval import compare as cmp
    from ..eval.benchmarks import get_benchmark

    benchmark = get_benchmark(args.benchmark).name
    _, report, public, headline = _scorer(benchmark)
    if args.compare:
        names, rows = cmp.compare(args.compare, lambda p: headline(_score_file(benchmark, p, args)[0]), args.labels)
        print(json.dumps({"runs": names, "metrics": rows}, indent=2) if args.json else cmp.table(names, rows))
    else:
        result, rule = _score_file(benchmark, args.answers_file, args)
        print(json.dumps(public(result), indent=2) if args.json else report(result, rule))
        names, rows = [cmp.run_label(cmp.resolve_answers(args.answers_file))], \
            {k: [v] for k, v in headline(result).items()}
    if args.chart:
        path = cmp.bar_chart(names, rows, args.chart, f"{benchmark.upper()}")
        print(f"chart: {path}", file=sys.stderr)
    return 0


def run_merge_command(args, argv) -> int:
    """Handler of `llava-avc merge`."""
    from ..eval.answers import read_answers
    from ..eval.runner import merge_chunks

    target = merge_chunks(args.out, force=args.force)
    print(f"merged {len(read_answers(target))} answers -> {target}")
    return 0
