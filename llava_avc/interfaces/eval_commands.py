"""The `eval`, `score` and `merge` subcommands of `llava-avc` (see `llava_avc.eval` for the workflow).

`register(subparsers)` adds them to the main CLI (`llava_avc.interfaces.cli`), whose error handling
they share: a user error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserError
from .flags import add_method_arguments, add_model_arguments


def _benchmark_help() -> str:
    """The registered benchmarks, for the help text (a benchmark registered later is still accepted)."""
    from ..eval.benchmarks import benchmark_names

    return f"a registered benchmark: {', '.join(benchmark_names())}"


def _add_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="answer a benchmark's questions (resumable, chunkable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  llava-avc eval pope --model-path liuhaotian/llava-v1.5-7b --image-folder val2014 \\\n"
               "      --question-file coco_pope_random.json --out runs/pope-avc --method avc\n"
               "many GPUs: torchrun --nproc-per-node 8 -m llava_avc eval pope ... (or accelerate launch, srun):\n"
               "  each rank answers its shard on its own GPU; rank 0 merges and scores.")
    parser.add_argument("benchmark", help=_benchmark_help())
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
    seeds = decoding.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=42,
                       help="the run's seed; each question's sampling and noise come from hash(seed, question id), "
                       "so answers do not depend on batch size, processes or resumes (default 42)")
    seeds.add_argument("--seeds", type=_seed_list, default=None, metavar="S1,S2,...",
                       help="several runs, one per seed, into <out>/seed<S>/ (score reports mean +- std)")
    decoding.add_argument("--shard-timeout", type=float, default=7 * 24 * 3600.0, metavar="SECONDS",
                          help="under a launcher, how long rank 0 waits for the other shards (default 7 days)")
    decoding.add_argument("--batch-size", type=int, default=1, help="questions per generate call (left-padded)")
    parser.add_argument("--progress", dest="progress", action="store_true", default=None,
                        help="always show the progress bar (default: only on a terminal)")
    parser.set_defaults(handler=run_eval_command, on_interrupt=_saved_answers)


def _add_score(subparsers) -> None:
    parser = subparsers.add_parser(
        "score", help="score answers (POPE as upstream eval_pope.py, MME as calculation.py, AMBER)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  llava-avc score pope --answers-file runs/pope-avc\n"
               "  llava-avc score pope --answers-file runs/pope-avc --reference avisc-paper --chart pope.png\n"
               "  llava-avc score mme --answers-file runs/mme-avc --question-file MME_Benchmark_release_version\n"
               "  llava-avc score amber --answers-file runs/amber-avc --strict\n"
               "  llava-avc score pope --compare runs/pope-none runs/pope-avc --chart pope.png\n"
               "a run folder holding seed<S>/ run folders (eval --seeds) is scored per seed, reported as mean ± std.")
    parser.add_argument("benchmark", help=_benchmark_help())
    runs = parser.add_mutually_exclusive_group(required=True)
    runs.add_argument("--answers-file", metavar="A", help="answers .jsonl, a run folder, or a folder of seed<S>/ runs")
    runs.add_argument("--compare", nargs="+", metavar="A", help="several answers files / run folders side by side")
    parser.add_argument("--question-file", default=None, metavar="F",
                        help="the question set: a packaged name (coco_pope_random, query_all, ...) or your file "
                             "(MME: the MME folder); every question must have an answer (default: the run's own)")
    parser.add_argument("--annotation-dir", default=None,
                        help="POPE: folder of coco_pope_<category>.json (positional matching, as upstream); AMBER: "
                             "folder of annotations.json, relation.json, safe_words.txt (default: the packaged copy)")
    parser.add_argument("--rule", choices=("llava", "paper"), default=None,
                        help="yes/no rule: llava = upstream eval_pope.py, paper = AvisC recorder "
                             "(default: the protocol the answers were made with)")
    parser.add_argument("--reference", default=None, metavar="NAME",
                        help="set published numbers beside yours, with the difference: avisc-paper (the AvisC "
                             "paper's LLaVA-1.5-7B results, same method)")
    parser.add_argument("--strict", action="store_true",
                        help="fail on any problem in the answers (partial line, unreadable or duplicate answers, "
                             "missing answers, mixed configurations) instead of counting it")
    parser.add_argument("--amber-nouns", choices=("auto", "official", "fallback"), default="auto",
                        help="AMBER nouns: official (NLTK + spaCy en_core_web_lg, as AMBER's evaluator), fallback "
                             "(documented word matching), auto = official where installed (default)")
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


def _seed_list(text: str) -> list:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 42,43,44, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("expected at least one seed, e.g. --seeds 42,43,44")
    return seeds


def _saved_answers(args) -> str:
    """What an interrupted `eval` kept: complete answers in the run folder's answers*.jsonl files
    (every answer is on disk the moment it is made), and how to resume."""
    from pathlib import Path

    files = sorted(Path(args.out).expanduser().rglob("answers*.jsonl")) if Path(args.out).expanduser().is_dir() else []
    count = 0
    for file in files:
        try:
            count += file.read_bytes().count(b"\n")  # complete lines; a partial last one is dropped on resume
        except OSError:
            pass
    where = f" in {files[0]}" if len(files) == 1 else f" in {args.out}" if files else ""
    return f"{count} answer{'s are' if count != 1 else ' is'} saved{where}; rerun the same command to resume"


def run_eval_command(args, argv) -> int:
    """Handler of `llava-avc eval`: one process, or one rank of torchrun / accelerate launch / srun."""
    from .flags import config_from_args
    from ..eval.benchmarks import get_benchmark
    from ..eval.distributed import launch_context
    from ..eval.inputs import check_output_folder
    from ..eval.runner import EvalOptions, run_sharded, seed_runs

    benchmark = get_benchmark(args.benchmark).name
    check_output_folder(args.out, "--out")
    options = EvalOptions(
        benchmark=benchmark, model_path=args.model_path, out=args.out, image_folder=args.image_folder,
        question_file=args.question_file, config=config_from_args(args), protocol=args.protocol,
        batch_size=args.batch_size, seed=args.seed, num_chunks=args.num_chunks, chunk_idx=args.chunk_idx,
        limit=args.limit, device=args.device, max_new_tokens=args.max_new_tokens, conv_mode=args.conv_mode,
        model_base=args.model_base, load_4bit=args.load_4bit, load_8bit=args.load_8bit, progress=args.progress)
    context = launch_context()
    where = f"rank {context.rank}/{context.world_size}: " if context.is_distributed else ""
    pipeline = None  # loaded by the first seed that has questions to answer, then answers every seed
    for run in seed_runs(options, args.seeds):
        result = run_sharded(run, context, pipeline, args.shard_timeout,
                             log=lambda message: print(f"{where}{message}", file=sys.stderr, flush=True))
        shard = result.shard
        pipeline = shard.pipeline
        print(f"{where}{shard.new} new answers, {shard.skipped} already there, {shard.total} questions "
              f"from {shard.question_file} -> {shard.answers_file} (config {shard.config_hash}, "
              f"{shard.seconds:.1f} s)", flush=True)
        if result.merged is not None:
            print(f"merged {context.world_size} shards -> {result.merged}", flush=True)
    if context.rank != 0:
        return 0
    if run.num_chunks > 1:
        print(f"when every chunk is done: llava-avc merge --out {run.out}")
        return 0
    if context.is_distributed:  # rank 0 of a launcher run scores what the shards answered together
        print(f"score ({benchmark}, {args.out}):", flush=True)
        if args.main(["score", benchmark, "--answers-file", args.out]) != 0:  # the CLI's own main
            print(f"scoring needs more (see the line above); then: llava-avc score {benchmark} --answers-file {args.out}")
        return 0
    print(f"next: llava-avc score {benchmark} --answers-file {args.out}")
    return 0


def _options(args):
    """What `Benchmark.score` gets from the command line besides the answers."""
    from ..eval.benchmarks import ScoreOptions

    return ScoreOptions(question_file=args.question_file, annotation_dir=args.annotation_dir,
                        amber_nouns=args.amber_nouns)


def _score_file(benchmark, path, args) -> tuple:
    """(result, rule, AnswerFile) of one answers file, after the checks of the answers themselves."""
    from ..eval import answers as ans
    from ..eval.benchmarks import expected_questions, missing_answers
    from ..eval.rules import default_rule

    answers = ans.load_answer_file(path)
    ans.check_benchmark(answers, benchmark.name)
    questions = expected_questions(benchmark, args.question_file, path)
    if questions is not None:
        answers.expected = len(questions)
        answers.missing = missing_answers(benchmark, questions, answers.records)
    if not answers.records:
        raise UserError(f"{path}: no answers to score ({answers.summary()}).")
    if args.strict:
        _strict(answers)
    rule = args.rule or default_rule(answers.records)
    return benchmark.score(answers.records, _options(args), rule), rule, answers


def _strict(answers) -> None:
    problems = answers.issues() + (["missing answers cannot be checked (no question file known: pass "
                                    "--question-file)"] if answers.expected is None else [])
    if problems:
        raise UserError(f"--strict: {answers.path}: {'; '.join(problems)}.")


def _score_run(benchmark, args) -> tuple:
    """Score every answers file of one run: (Run, [(seed name, result, rule, AnswerFile)])."""
    from ..eval import compare as cmp

    run = cmp.resolve_run(args.answers_file)
    cmp.check_same_configuration(run)
    return run, [(name, *_score_file(benchmark, path, args)) for name, path in run.files]


def _reference_rows(benchmark, args, run, scored: list, stats: dict):
    """The `Comparison` with the published numbers that --reference names."""
    from ..eval import references as refs

    facts = refs.run_facts(run.files[0][1], scored[0][3].records, args.question_file)
    reference = refs.load_reference(args.reference, facts["model_type"])
    if not facts["method"]:
        raise UserError(f"--reference needs the method the answers were made with; {run.path} has no run.json and "
                        "its answers no metadata.method.")
    paper = refs.published(reference, benchmark.name, facts["method"], facts["dataset"])
    rows = refs.rows_beside(stats, paper)
    if not rows:
        raise UserError(f"--reference {reference.name}: none of your metrics ({', '.join(stats) or 'none'}) is among "
                        f"the published ones ({', '.join(paper)}).")
    notes = refs.notes(reference, benchmark.name, facts["method"], facts["protocol"], len(scored), facts["model_type"])
    return refs.Comparison(reference, facts["method"], rows, notes)


def _print_run(benchmark, args, run, scored: list, stats: dict, compared) -> None:
    from ..eval import compare as cmp
    from ..eval import references as refs

    report, public, unit = benchmark.report, benchmark.public, benchmark.unit
    summaries = {name or str(answers.path): answers.summary() for name, _, _, answers in scored}
    if args.json:
        plain = not run.seeded and compared is None
        data = public(scored[0][1]) if plain else {
            "unit": unit,
            "runs": {name or cmp.label_of(run): public(result) for name, result, _, _ in scored},
            "metrics": {metric: {"mean": s.mean, "std": s.std, "n": s.n} for metric, s in stats.items()},
            "answers": summaries}
        if compared is not None:
            data["reference"] = refs.as_json(compared)
        print(json.dumps(data, indent=2))
        for name, summary in summaries.items():
            print(f"{name}: {summary}", file=sys.stderr)
        return
    if run.seeded:
        print(f"{benchmark.title} ({unit}), {len(scored)} seeds (mean ± sample std), answer rule: {scored[0][2]}")
        rows = {metric: [benchmark.headline(result).get(metric) for _, result, _, _ in scored] + [stat]
                for metric, stat in stats.items()}
        print(cmp.table([name for name, *_ in scored] + ["mean ± std"], rows))
    else:
        print(report(scored[0][1], scored[0][2]))
    for name, summary in summaries.items():
        print(f"{name}: {summary}" if run.seeded else summary)
    if compared is not None:
        print()
        print(f"{benchmark.title} beside {compared.reference.name} ({unit}):")
        print(refs.table(compared.rows, "yours"))
        print("\n".join(compared.notes))


def _score_one(benchmark, args) -> tuple:
    """`score --answers-file`: print the report; return (chart labels, chart rows)."""
    from ..eval import compare as cmp

    run, scored = _score_run(benchmark, args)
    stats = cmp.aggregate([benchmark.headline(result) for _, result, _, _ in scored])
    compared = _reference_rows(benchmark, args, run, scored, stats) if args.reference else None
    _print_run(benchmark, args, run, scored, stats, compared)
    if compared is None:
        return [cmp.label_of(run)], {metric: [stat] for metric, stat in stats.items()}
    rows = {row.metric: [row.ours, (row.paper, row.paper_std)] for row in compared.rows}
    return [cmp.label_of(run), f"{compared.reference.name} ({compared.method})"], rows


def _score_compare(benchmark, args) -> tuple:
    """`score --compare`: print the table (and each file's answer summary); return (labels, rows)."""
    from ..eval import compare as cmp

    if args.reference:
        raise UserError("--reference goes with --answers-file (one run, or one folder of seeds), not --compare.")
    summaries = []

    def headline(path):
        result, _, answers = _score_file(benchmark, path, args)
        summaries.append(f"{path}: {answers.summary()}")
        return benchmark.headline(result)

    names, rows = cmp.compare(args.compare, headline, args.labels)
    if args.json:
        print(json.dumps({"unit": benchmark.unit, "runs": names,
                          "metrics": {metric: [None if v is None else v.mean for v in values]
                                                     for metric, values in rows.items()},
                          "std": {metric: [None if v is None else v.std for v in values]
                                  for metric, values in rows.items()}}, indent=2))
    else:
        print(f"{benchmark.title} ({benchmark.unit}):")
        print(cmp.table(names, rows))
    print("\n".join(summaries), file=sys.stderr if args.json else sys.stdout)
    return names, rows


def run_score_command(args, argv) -> int:
    """Handler of `llava-avc score`."""
    from ..eval import compare as cmp
    from ..eval.benchmarks import get_benchmark
    from ..eval.inputs import check_png_file

    benchmark = get_benchmark(args.benchmark)
    if args.labels and not args.compare:
        raise UserError(f"--labels (={' '.join(args.labels)}) names the runs of --compare; with --answers-file drop it "
                        "(the run is named after its folder).")
    if args.chart:
        check_png_file(args.chart, "--chart")
    names, rows = _score_compare(benchmark, args) if args.compare else _score_one(benchmark, args)
    if args.chart:
        path = cmp.bar_chart(names, rows, args.chart, benchmark.title)
        print(f"chart: {path}", file=sys.stderr)
    return 0


def run_merge_command(args, argv) -> int:
    """Handler of `llava-avc merge`."""
    from pathlib import Path

    from ..eval.answers import read_answers
    from ..eval.inputs import check_output_folder
    from ..eval.runner import merge_chunks

    check_output_folder(args.out, "--out")
    if not Path(args.out).expanduser().is_dir():
        raise UserError(f"--out (={args.out!r}) does not exist; give the run folder that `llava-avc eval "
                        "--num-chunks K --chunk-idx I` wrote the chunks into.")
    target = merge_chunks(args.out, force=args.force)
    print(f"merged {len(read_answers(target))} answers -> {target}")
    return 0
