"""Several runs side by side: a text table and a grouped bar chart (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from .answers import ANSWERS_FILE, RUN_FILE


def resolve_answers(path) -> Path:
    """An answers file, or a run directory's answers.jsonl.

    Raises:
        FileNotFoundError: nothing there (or only chunk files: the message says to merge them).
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / ANSWERS_FILE).is_file():
            return path / ANSWERS_FILE
        if any(path.glob("answers.chunk*of*.jsonl")):
            raise FileNotFoundError(f"{path} holds chunk answers only; run `llava-avc merge --out {path}` first.")
    raise FileNotFoundError(f"no answers at {str(path)!r} (an answers .jsonl file or a run directory).")


def run_label(answers_file: Path) -> str:
    """`<directory>` plus the method and protocol of its run.json when present."""
    folder = answers_file.parent
    name = folder.name if answers_file.name == ANSWERS_FILE else answers_file.stem
    try:
        run = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return name
    return f"{name} ({run.get('method')}, {run.get('protocol')})"


def _unique(labels: list) -> list:
    seen: dict = {}
    result = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        result.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return result


def compare(paths: list, score: Callable[[Path], dict], labels: Optional[list] = None) -> tuple:
    """Score every run: (labels, {metric: [value per run]}) in the order the metrics first appear."""
    files = [resolve_answers(path) for path in paths]
    if labels and len(labels) != len(files):
        raise ValueError(f"--labels has {len(labels)} names for {len(files)} runs.")
    names = _unique(labels or [run_label(path) for path in files])
    headlines = [score(path) for path in files]
    metrics: list = []
    for headline in headlines:
        metrics += [key for key in headline if key not in metrics]
    return names, {metric: [headline.get(metric) for headline in headlines] for metric in metrics}


def table(names: list, rows: dict) -> str:
    """Metrics as rows, runs as columns."""
    width = max([len(metric) for metric in rows] + [6]) + 2
    columns = [max(len(name), 8) + 2 for name in names]
    lines = ["".ljust(width) + "".join(name.rjust(size) for name, size in zip(names, columns))]
    for metric, values in rows.items():
        cells = ["n/a" if value is None else f"{value:.2f}" for value in values]
        lines.append(metric.ljust(width) + "".join(cell.rjust(size) for cell, size in zip(cells, columns)))
    return "\n".join(lines)


def bar_chart(names: list, rows: dict, path, title: str) -> Path:
    """A grouped bar chart (one group per metric, one bar per run) saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(rows)
    width = 0.8 / max(len(names), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(metrics) * max(1, len(names)) / 2), 4.5))
    for index, name in enumerate(names):
        values = [rows[metric][index] or 0.0 for metric in metrics]
        positions = [m + (index - (len(names) - 1) / 2) * width for m in range(len(metrics))]
        axes.bar(positions, values, width, label=name)
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
