"""Published results set beside yours: ``llava-avc score BENCH --answers-file RUN --reference avisc-paper``.

A reference is a JSON file in ``data/references/`` with its source, the protocol its numbers were
produced with, and per benchmark a table of rows (one per method, named as ``--method`` names them:
none, vcd, m3id, avc) and columns (the metric names of the scorers' headlines). ``avisc-paper``: the
LLaVA-1.5-7B results of the AvisC paper (arXiv 2405.17820), and its InstructBLIP results
(``avisc-paper-instructblip``, picked for runs of an InstructBLIP checkpoint): POPE (MS-COCO, A-OKVQA, GQA x random,
popular, adversarial: accuracy, precision, recall, F1), MME-Hallucination (existence, count,
position, color, total; mean and std over runs) and AMBER (CHAIR, Cover, Hal, Cog, accuracy,
precision, recall, F1, AMBER score; mean and std over runs).

"Within your spread": with several seeds, whether the published value lies within your mean ± one
sample standard deviation.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Optional

from ..errors import UserError
from .answers import run_record
from .benchmarks import benchmark_names, get_benchmark
from .compare import Stat, mean_std_text
from .questions import DATA_DIR, pope_dataset

REFERENCE_DIR = DATA_DIR / "references"


@dataclass(frozen=True)
class Reference:
    """One published set of results (see the module docstring for the file layout)."""

    name: str
    title: str
    source: str
    model: str
    protocol: dict
    methods: dict
    tables: dict
    model_types: tuple = ()  # the config.json model_types of the published model's checkpoints


@dataclass(frozen=True)
class Row:
    """One metric, yours beside the reference's: the difference is yours minus theirs."""

    metric: str
    ours: Stat
    paper: float
    paper_std: Optional[float]

    @property
    def diff(self) -> float:
        return self.ours.mean - self.paper

    @property
    def within(self) -> Optional[bool]:
        """Whether the published value lies within your mean ± std (None without a spread)."""
        if self.ours.std is None:
            return None
        return abs(self.diff) <= self.ours.std


@dataclass(frozen=True)
class Comparison:
    """Your run beside a reference: the method's row, the metrics both have, and what to keep in mind."""

    reference: Reference
    method: str
    rows: list
    notes: list


def available() -> list:
    """The names of the shipped references."""
    return sorted(path.stem for path in REFERENCE_DIR.glob("*.json"))


def load_reference(name: str, model_type: Optional[str] = None) -> Reference:
    """The reference called `name`; for a run of a `model_type` that has a table of its own under that name
    (`<name>-<model_type>.json`, e.g. avisc-paper-instructblip), that table.

    Raises:
        ValueError: unknown name (the message lists the shipped ones and the nearest).
    """
    path = REFERENCE_DIR / f"{name}.json"
    if model_type and (REFERENCE_DIR / f"{name}-{model_type}.json").is_file():
        path = REFERENCE_DIR / f"{name}-{model_type}.json"
    if not path.is_file():
        close = difflib.get_close_matches(name, available(), n=1, cutoff=0.3)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown --reference {name!r}; choose one of {', '.join(available())}.{hint}")
    data = json.loads(path.read_text(encoding="utf-8"))
    tables = {key: data[key] for key in benchmark_names() if key in data}
    return Reference(data["name"], data["title"], data["source"], data["model"], data["protocol"], data["methods"],
                     tables, tuple(data.get("model_types", ())))


def _cells(columns: list, values: list) -> dict:
    """{column: (value, std or None)} of one table row; a cell is a value or [value, std]."""
    return {column: tuple(cell) if isinstance(cell, list) else (cell, None) for column, cell in zip(columns, values)}


def published(reference: Reference, benchmark: str, method: str, dataset: Optional[str] = None) -> dict:
    """{metric: (value, std or None)} the reference gives for `method` on `benchmark`, under the metric
    names of the scorers' headlines (POPE: "<category> <metric>" of `dataset`).

    Raises:
        ValueError: no table for the benchmark, no row for the method, or (POPE) an unknown dataset.
    """
    if benchmark not in reference.tables:
        raise UserError(f"--reference {reference.name} has no {benchmark} results; it has "
                        f"{', '.join(reference.tables)}.")
    table = reference.tables[benchmark]
    if not get_benchmark(benchmark).reference_by_dataset:
        return _cells(table["columns"], _row(reference, table["rows"], method, benchmark))
    if dataset not in table["rows"]:
        raise UserError(f"--reference {reference.name}: cannot tell which POPE dataset these answers are from "
                        f"(found {dataset!r}; {', '.join(table['rows'])} are published); pass --question-file with "
                        "the question set, e.g. --question-file coco_pope_random.")
    values = {}
    for category, rows in table["rows"][dataset].items():
        for column, cell in _cells(table["columns"], _row(reference, rows, method, benchmark)).items():
            values[f"{category} {column}"] = cell
    return values


def _row(reference: Reference, rows: dict, method: str, benchmark: str) -> list:
    if method not in rows:
        known = ", ".join(f"{key} ({reference.methods.get(key, key)})" for key in rows)
        raise UserError(f"--reference {reference.name} has no {benchmark} row for method {method!r}; it has {known}.")
    return rows[method]


def rows_beside(ours: dict, paper: dict) -> list:
    """`Row`s for the metrics both sides have, in the reference's order."""
    return [Row(metric, ours[metric], value, std) for metric, (value, std) in paper.items() if metric in ours]


def _within_text(row: Row) -> str:
    return "n/a" if row.within is None else ("yes" if row.within else "no")


def table(rows: list, label: str) -> str:
    """Yours, the reference's, the difference and (with seeds) whether theirs lies within your spread."""
    seeded = any(row.ours.std is not None for row in rows)
    header = ["metric", label, "paper", "diff"] + (["within ±std"] if seeded else [])
    body = []
    for row in rows:
        cells = [row.metric, row.ours.text(), mean_std_text(row.paper, row.paper_std), f"{row.diff:+.2f}"]
        body.append(cells + ([_within_text(row)] if seeded else []))
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    return "\n".join("  ".join([line[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(line[1:], widths[1:])])
                     for line in [header] + body)


def notes(reference: Reference, benchmark: str, method: str, protocol: Optional[str], seeds: int,
          model_type: Optional[str] = None) -> list:
    """What to keep in mind when reading the comparison: source, method row, model, protocol, seeds."""
    lines = [f"reference: {reference.title}, {reference.methods.get(method, method)} row; {reference.source}.",
             f"their protocol: {reference.protocol.get('decoding')}; {reference.protocol.get('seeds')}."]
    if model_type and reference.model_types and model_type not in reference.model_types:
        lines.append(f"note: your answers come from a {model_type} checkpoint, the reference's from {reference.model}: "
                     "different models.")
    if protocol != reference.protocol.get("name"):
        lines.append(f"note: your answers were made with protocol {protocol or 'unknown'}, the reference's with "
                     f"protocol {reference.protocol.get('name')}: the numbers are not produced the same way.")
    if seeds < 2:
        lines.append("note: one run of yours, so no spread to compare against; run several seeds "
                     "(llava-avc eval ... --seeds 42,43,44) for mean ± std.")
    return lines


def as_json(comparison: Comparison) -> dict:
    """The comparison as JSON-able data."""
    return {"name": comparison.reference.name, "source": comparison.reference.source, "method": comparison.method,
            "rows": [{"metric": row.metric, "ours": row.ours.mean, "ours_std": row.ours.std, "seeds": row.ours.n,
                      "paper": row.paper, "paper_std": row.paper_std, "diff": row.diff, "within": row.within}
                     for row in comparison.rows]}


def run_facts(answers_file, records: list, question_file: Optional[str] = None) -> dict:
    """The method, protocol and (POPE) dataset of a run: its run.json, else the answers' metadata; the
    dataset from the question file's name (`question_file`, else the run's)."""
    run = run_record(answers_file)
    metadata = next((r["metadata"] for r in records if isinstance(r.get("metadata"), dict)), {})
    source = question_file or run.get("question_file")
    return {"method": run.get("method") or metadata.get("method"),
            "protocol": run.get("protocol") or metadata.get("protocol"),
            "dataset": pope_dataset(source) if source else None,
            "model_type": (run.get("preprocessing") or {}).get("model_type")}
