"""Runs to score and how they are shown: a run folder (one answers file, or one per seed), the mean and
sample std over seeds, text tables and a grouped bar chart (matplotlib, Agg backend).

A run is an answers ``.jsonl`` file, a run folder holding ``answers.jsonl`` (with its ``run.json``),
or a folder of seeds: ``<out>/seed<S>/answers.jsonl``, one normal run folder per seed (what
``llava-avc eval --seeds`` writes). Every metric of a folder of seeds is reported as the mean and the
sample standard deviation (n - 1) over its seeds.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..errors import UserError
from .answers import ANSWERS_FILE, run_record

_SEED_DIR = re.compile(r"^seed(-?\d+)$")


@dataclass(frozen=True)
class Run:
    """What one `--answers-file` / `--compare` argument names.

    Attributes:
        path: the path as given.
        files: (seed name, answers file) pairs: one pair with name "" for a plain run, else one per
            ``seed<S>`` folder, in seed order.
    """

    path: Path
    files: tuple

    @property
    def seeded(self) -> bool:
        return bool(self.files[0][0])


@dataclass(frozen=True)
class Stat:
    """One metric over a run's seeds: mean, sample std (None for fewer than two values), count."""

    mean: float
    std: Optional[float]
    n: int

    def text(self, digits: int = 2) -> str:
        return mean_std_text(self.mean, self.std, digits)


def mean_std_text(mean: float, std: Optional[float], digits: int = 2) -> str:
    """"87.93 ± 0.41", or "87.93" without a std."""
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def resolve_answers(path) -> Path:
    """An answers file, or a run directory's answers.jsonl.

    Raises:
        UserError: nothing there (or only chunk files: the message says to merge them).
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / ANSWERS_FILE).is_file():
            return path / ANSWERS_FILE
        if any(path.glob("answers.chunk*of*.jsonl")):
            raise UserError(f"{path} holds chunk answers only; run `llava-avc merge --out {path}` first.")
    raise UserError(f"no answers at {str(path)!r} (an answers .jsonl file, a run directory or a folder of "
                    "seed<S>/ run directories).")


def seed_folders(path) -> list:
    """The ``seed<S>`` sub-folders of `path`, in seed order."""
    path = Path(path)
    if not path.is_dir():
        return []
    found = [(int(_SEED_DIR.match(p.name).group(1)), p) for p in path.iterdir()
             if p.is_dir() and _SEED_DIR.match(p.name)]
    return [folder for _, folder in sorted(found)]


def resolve_run(path) -> Run:
    """The answers file(s) `path` names: a file, a run folder, or a folder of seed<S>/ run folders.

    Raises:
        UserError: nothing to score, a seed folder without answers, or a folder
            holding both answers.jsonl and seed folders.
    """
    path = Path(path)
    seeds = seed_folders(path)
    if not seeds:
        return Run(path, (("", resolve_answers(path)),))
    if (path / ANSWERS_FILE).is_file():
        raise UserError(f"{path} holds both {ANSWERS_FILE} and seed folders ({seeds[0].name}, ...); pass one of them: "
                        f"{path / ANSWERS_FILE} or the folder of seeds without it.")
    return Run(path, tuple((folder.name, resolve_answers(folder)) for folder in seeds))


def check_same_configuration(run: Run) -> None:
    """Refuse a folder of seeds whose run.json settings differ in anything but the seed.

    Raises:
        ValueError: names the two seed folders and the settings that differ.
    """
    settings = [(name, {k: v for k, v in run_record(path).get("settings", {}).items() if k != "seed"})
                for name, path in run.files]
    settings = [(name, values) for name, values in settings if values]
    for name, values in settings[1:]:
        first_name, first = settings[0]
        if values != first:
            keys = sorted(key for key in set(first) | set(values) if first.get(key) != values.get(key))
            raise UserError(f"{run.path}: {first_name} and {name} were made with different settings "
                            f"({', '.join(keys)}); a folder of seeds must differ only in the seed.")


def run_label(answers_file: Path) -> str:
    """`<directory>` plus the method and protocol of its run.json when present."""
    folder = answers_file.parent
    name = folder.name if answers_file.name == ANSWERS_FILE else answers_file.stem
    run = run_record(answers_file)
    return f"{name} ({run.get('method')}, {run.get('protocol')})" if run else name


def label_of(run: Run) -> str:
    """A run's label: its folder (and method, protocol), with the number of seeds when it has seeds."""
    if not run.seeded:
        return run_label(run.files[0][1])
    record = run_record(run.files[0][1])
    details = [str(record.get(key)) for key in ("method", "protocol") if record.get(key)]
    return f"{run.path.name} ({', '.join(details + [f'{len(run.files)} seeds'])})"


def aggregate(headlines: list) -> dict:
    """{metric: Stat} over several runs' headline dicts (metrics in first-seen order; None values skipped).

    The std is the sample standard deviation (n - 1), None with fewer than two values.
    """
    stats = {}
    for metric in _first_seen_keys(headlines):
        values = [h[metric] for h in headlines if h.get(metric) is not None]
        if values:
            std = statistics.stdev(values) if len(values) > 1 else None
            stats[metric] = Stat(statistics.fmean(values), std, len(values))
    return stats


def _unique(labels: list) -> list:
    seen: dict = {}
    result = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        result.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return result


def compare(paths: list, score: Callable[[Path], dict], labels: Optional[list] = None) -> tuple:
    """Score every run (each seed of a folder of seeds): (labels, {metric: [Stat or None per run]})."""
    runs = [resolve_run(path) for path in paths]
    if labels and len(labels) != len(runs):
        raise UserError(f"--labels has {len(labels)} names for {len(runs)} runs.")
    for run in runs:
        check_same_configuration(run)
    names = _unique(labels or [label_of(run) for run in runs])
    stats = [aggregate([score(path) for _, path in run.files]) for run in runs]
    return names, {metric: [summary.get(metric) for summary in stats] for metric in _first_seen_keys(stats)}


def _first_seen_keys(dicts: list) -> list:
    """The keys of several dicts, each once, in the order they first appear."""
    return list(dict.fromkeys(key for mapping in dicts for key in mapping))


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, Stat):
        return value.text()
    return f"{value:.2f}"


def table(names: list, rows: dict) -> str:
    """Metrics as rows, runs as columns (a Stat with a std prints as mean ± std)."""
    width = max([len(metric) for metric in rows] + [6]) + 2
    cells = {metric: [_cell(value) for value in values] for metric, values in rows.items()}
    columns = [max([len(name), 8] + [len(cells[m][i]) for m in rows]) + 2 for i, name in enumerate(names)]
    lines = ["".ljust(width) + "".join(name.rjust(size) for name, size in zip(names, columns))]
    for metric in rows:
        lines.append(metric.ljust(width) + "".join(cell.rjust(size) for cell, size in zip(cells[metric], columns)))
    return "\n".join(lines)


def _mean_and_error(value) -> tuple:
    if value is None:
        return 0.0, 0.0
    if isinstance(value, Stat):
        return value.mean, value.std or 0.0
    if isinstance(value, (tuple, list)):
        return value[0], value[1] or 0.0
    return float(value), 0.0


def bar_chart(names: list, rows: dict, path, title: str) -> Path:
    """A grouped bar chart (one group per metric, one bar per run) saved as PNG; a Stat's std (or a
    (value, std) pair's) is drawn as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(rows)
    width = 0.8 / max(len(names), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(metrics) * max(1, len(names)) / 2), 4.5))
    for index, name in enumerate(names):
        values = [_mean_and_error(rows[metric][index]) for metric in metrics]
        positions = [m + (index - (len(names) - 1) / 2) * width for m in range(len(metrics))]
        errors = [error for _, error in values]
        axes.bar(positions, [mean for mean, _ in values], width, label=name,
                 yerr=errors if any(e > 0 and math.isfinite(e) for e in errors) else None, capsize=2)
    axes.set_xticks(range(len(metrics)))
    axes.set_xticklabels(metrics, rotation=30, ha="right")
    axes.set_title(title)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
