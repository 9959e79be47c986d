"""Answer files: crash-safe appends, resumption, the run's configuration hash, run.json, chunks.

An answers file is LLaVA's JSONL (``question_id, prompt, text, answer_id, model_id, metadata``),
one answer per line. Each line is written with ONE ``os.write`` of the complete line on an
``O_APPEND`` descriptor, then ``fsync``: a killed run leaves complete lines plus at most one
partial last line, which the next run drops (only a last line that is not valid JSON is partial: a
complete answer without its final newline is kept). Scoring reads a file with `load_answer_file`,
which sets aside (and counts) unreadable answers, duplicates and a partial last line.
``metadata.config_hash`` ties each answer to the configuration that made it; a rerun with another
configuration is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import UserError

RUN_FILE = "run.json"
ANSWERS_FILE = "answers.jsonl"
_CHUNK_RE = re.compile(r"^answers\.chunk(\d+)of(\d+)\.jsonl$")


def config_hash(settings: dict) -> str:
    """A short, stable hash of the configuration dict (canonical JSON, sha256)."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def answers_path(out, num_chunks: int = 1, chunk_idx: int = 0) -> Path:
    """`<out>/answers.jsonl`, or `<out>/answers.chunk{I}of{K}.jsonl` for one of K chunks."""
    name = ANSWERS_FILE if num_chunks == 1 else f"answers.chunk{chunk_idx}of{num_chunks}.jsonl"
    return Path(out) / name


def split_list(items: list, n: int) -> list:
    """LLaVA's `model_vqa_loader.split_list`: chunks of ceil(len / n) items (fewer than n possible)."""
    if not items:
        return []
    size = math.ceil(len(items) / n)
    return [items[i:i + size] for i in range(0, len(items), size)]


def get_chunk(items: list, n: int, k: int) -> list:
    """LLaVA's `get_chunk` (chunk k of n); an index past the last non-empty chunk gives []."""
    if n < 1 or not 0 <= k < n:
        raise UserError(f"--chunk-idx (={k}) must be in 0..{n - 1} for --num-chunks {n}.")
    chunks = split_list(items, n)
    return chunks[k] if k < len(chunks) else []


class AnswerWriter:
    """Appends answer records, one atomic line each, flushed to disk (fsync) before returning."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock()

    def _lock(self) -> None:
        """Hold an exclusive lock: two runs appending to one file would duplicate answers."""
        try:
            import fcntl
        except ImportError:  # not on POSIX: no locking
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.close()
            raise UserError(f"another run is writing {self.path}; wait for it or use another --out / "
                            "--chunk-idx.") from None

    def write(self, record: dict) -> None:
        data = (json.dumps(record) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "AnswerWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:  # json.JSONDecodeError and undecodable bytes
        return False
    return True


def _lines(data: bytes) -> tuple:
    """(complete lines, whether a partial last line was left out) of an answers file's bytes.

    Only a last line that is not valid JSON is partial (a killed run wrote part of it); a complete
    answer that merely lacks its final newline counts.
    """
    lines = data.split(b"\n")
    tail = lines.pop()
    if not tail.strip():
        return lines, False
    if _is_json(tail):
        return lines + [tail], False
    return lines, True


def drop_partial_line(path) -> bool:
    """Truncate a trailing partial line (left by a killed run); a complete last answer without its
    newline gets the newline instead (so the next append starts a new line). Returns whether a line
    was dropped."""
    path = Path(path)
    if not path.is_file():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    if _lines(data)[1]:
        os.truncate(path, data.rfind(b"\n") + 1)
        return True
    with open(path, "ab") as handle:
        handle.write(b"\n")
    return False


def read_answers(path) -> list:
    """The answer records of a JSONL file; a partial last line (not valid JSON) is ignored.

    Raises:
        ValueError: a complete line that is not a JSON object with a question_id (names the line).
    """
    answers = load_answer_file(path)
    if answers.invalid:
        lineno, reason = answers.invalid[0]
        raise UserError(f"{answers.path}, line {lineno}: {reason}.")
    return [record for _, record in answers.lines]


@dataclass
class AnswerFile:
    """One answers file as scoring reads it: what is scored and what was set aside, with why.

    Attributes:
        path: the file.
        lines: (line number, record) of every readable answer, in file order (duplicates included).
        invalid: (line number, reason) of answers that cannot be scored (no question_id, text not a string).
        partial_line: a last line that is not valid JSON (an interrupted write) was left out.
        missing: question ids of the question set with no answer (None: not checked).
        expected: size of the question set checked against (None: not checked).
    """

    path: Path
    lines: list
    invalid: list
    partial_line: bool = False
    missing: Optional[list] = None
    expected: Optional[int] = None

    @property
    def records(self) -> list:
        """The answers to score: the first answer of each question (see `duplicates`)."""
        return self._first_and_repeated()[0]

    @property
    def duplicates(self) -> list:
        """(line number, question_id) of answers to a question already answered earlier in the file."""
        return self._first_and_repeated()[1]

    def _first_and_repeated(self) -> tuple:
        seen, first, repeated = set(), [], []
        for lineno, record in self.lines:
            key = answer_key(record)
            if key in seen:
                repeated.append((lineno, record["question_id"]))
            else:
                seen.add(key)
                first.append(record)
        return first, repeated

    def config_hashes(self) -> list:
        """The distinct configuration hashes of the answers (LLaVA's own answers have none)."""
        return sorted({str(answer_hash(record)) for _, record in self.lines if answer_hash(record)})

    def issues(self) -> list:
        """One short sentence per kind of problem found (empty: a clean file)."""
        found = []
        if self.partial_line:
            found.append("a partial last line (an interrupted write) was left out")
        if self.invalid:
            lineno, reason = self.invalid[0]
            found.append(f"{len(self.invalid)} unreadable answer(s) left out (first: line {lineno}, {reason})")
        duplicates = self.duplicates
        if duplicates:
            lineno, qid = duplicates[0]
            found.append(f"{len(duplicates)} duplicate answer(s) left out, the first answer of each question "
                         f"scored (first: question {qid!r}, line {lineno})")
        if self.missing:
            found.append(f"{len(self.missing)} of {self.expected} questions have no answer (first: "
                         f"{self.missing[0]!r})")
        hashes = self.config_hashes()
        if len(hashes) > 1:
            found.append(f"answers of {len(hashes)} configurations mixed in one file (config_hash "
                         f"{', '.join(hashes)})")
        return found

    def summary(self) -> str:
        """One line: how many answers are scored, and every problem found."""
        if self.expected is None:
            checked = "; missing answers not checked (no question file known: pass --question-file)"
        else:
            checked = "" if self.missing else f", every one of the {self.expected} questions answered"
        return f"answers: {len(self.records)} scored{checked}" + "".join(f"; {issue}" for issue in self.issues())


def answer_key(record: dict) -> tuple:
    """What makes two answer lines the same answer: the question id and the prompt (LLaVA's MME answers
    give both questions of an image the same id, with different prompts)."""
    return json.dumps(record["question_id"], sort_keys=True), record.get("prompt")


def _invalid_reason(record) -> Optional[str]:
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an answer object"
    if "question_id" not in record:
        return "an answer needs a question_id"
    if "text" not in record:
        return "an answer needs a text"
    if not isinstance(record["text"], str):
        found = "null" if record["text"] is None else type(record["text"]).__name__
        return f"its text is {found}, not a string"
    return None


def load_answer_file(path) -> AnswerFile:
    """Read an answers file for scoring: every answer line, with the unreadable ones and a partial last
    line set aside (`AnswerFile`).

    Raises:
        UserError: no such file.
        ValueError: a complete line (not the last) that is not JSON (names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"answers file {str(path)!r} does not exist.")
    lines, partial = _lines(path.read_bytes())
    readable, invalid = [], []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as error:
            raise UserError(f"{path}, line {lineno}: not a JSON answer ({getattr(error, 'msg', error)}); fix or "
                            "delete that line.") from error
        reason = _invalid_reason(record)
        if reason:
            invalid.append((lineno, reason))
        else:
            readable.append((lineno, record))
    return AnswerFile(path, readable, invalid, partial)


def run_record(answers_file) -> dict:
    """The run.json beside an answers file ({} when there is none or it is unreadable)."""
    try:
        record = json.loads((Path(answers_file).parent / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def check_benchmark(answers: AnswerFile, benchmark: str) -> None:
    """Refuse answers that their metadata (or their run.json) says were made for another benchmark.

    Raises:
        ValueError: names the benchmark(s) found and the command to use.
    """
    found = {str(record["metadata"]["benchmark"]) for _, record in answers.lines
             if isinstance(record.get("metadata"), dict) and record["metadata"].get("benchmark")}
    run = run_record(answers.path)
    found |= {str(run["benchmark"])} if run.get("benchmark") else set()
    other = sorted(found - {benchmark})
    if other:
        hint = f"; score them with `llava-avc score {other[0]}`" if len(found) == 1 else ""
        raise UserError(f"{answers.path} holds answers made for {', '.join(other)} (metadata.benchmark), not "
                        f"{benchmark}{hint}.")


def chunk_of(answers_file) -> Optional[tuple]:
    """(chunk index, chunk count) of an answers.chunk<I>of<K>.jsonl file, None for other names."""
    match = _CHUNK_RE.match(Path(answers_file).name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def answer_hash(record: dict) -> Optional[str]:
    metadata = record.get("metadata")
    return metadata.get("config_hash") if isinstance(metadata, dict) else None


def _differences(out: Path, settings: dict) -> str:
    try:
        old = json.loads((out / RUN_FILE).read_text()).get("settings", {})
    except (OSError, ValueError):
        return ""
    changed = [f"{key}: {json.dumps(old.get(key), default=str)} -> {json.dumps(settings.get(key), default=str)}"
               for key in sorted(set(old) | set(settings)) if old.get(key) != settings.get(key)]
    return f" Changed: {'; '.join(changed)}." if changed else ""


def mismatch_error(out, old: Optional[str], new: str, settings: dict) -> UserError:
    """The refusal raised when existing answers were made with another configuration."""
    return UserError(f"answers in {out} were made with a different configuration (hash {old or 'unknown'} != "
                     f"{new}); use a new --out or delete the file.{_differences(Path(out), settings)}")


def done_answers(path, expected_hash: str, settings: dict) -> dict:
    """{question_id: record} of the answers already in `path` (resumption).

    Drops a partial last line first (with a note on stderr).

    Raises:
        ValueError: an answer was made with another configuration hash.
    """
    path = Path(path)
    if drop_partial_line(path):
        print(f"note: dropped a partial last line of {path} (an interrupted run).", file=sys.stderr)
    if not path.is_file():
        return {}
    done: dict = {}
    for record in read_answers(path):
        if answer_hash(record) != expected_hash:
            raise mismatch_error(path.parent, answer_hash(record), expected_hash, settings)
        done.setdefault(record["question_id"], record)
    return done


def check_run_file(out, expected_hash: str, settings: dict) -> None:
    """Refuse when run.json has another hash and any answers file in `out` has answers."""
    out = Path(out)
    try:
        old = json.loads((out / RUN_FILE).read_text()).get("config_hash")
    except (OSError, ValueError):
        return
    if old == expected_hash:
        return
    if any(p.stat().st_size > 0 for p in out.glob("answers*.jsonl")):
        raise mismatch_error(out, old, expected_hash, settings)


def write_json_atomic(path, data: dict) -> None:
    """Write JSON to a temporary file and rename it over `path` (readers never see half a file)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(temporary, path)


def _chunk_paths(out) -> list:
    return [path for path in Path(out).iterdir() if _CHUNK_RE.match(path.name)]


def has_chunk_files(out) -> bool:
    """Whether the folder `out` holds chunk answer files (answers.chunk<I>of<K>.jsonl)."""
    return bool(_chunk_paths(out))


def chunk_files(out) -> dict:
    """{chunk index: path} of the chunk answer files in `out`, with their common chunk count.

    Raises:
        UserError: no chunk files, or files of different chunk counts.
    """
    found = {}
    for path in _chunk_paths(out):
        match = _CHUNK_RE.match(path.name)
        found[(int(match.group(1)), int(match.group(2)))] = path
    counts = {count for _, count in found}
    if not counts:
        raise UserError(f"no chunk answer files (answers.chunk<I>of<K>.jsonl) in {out}.")
    if len(counts) > 1:
        raise UserError(f"{out} holds chunk files of different --num-chunks ({sorted(counts)}); keep one set.")
    count = counts.pop()
    return {"num_chunks": count, "files": {index: path for (index, _), path in found.items()}}
