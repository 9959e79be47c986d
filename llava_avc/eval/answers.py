"""Answer files: crash-safe appends, resumption, the run's configuration hash, run.json, chunks.

An answers file is LLaVA's JSONL (``question_id, prompt, text, answer_id, model_id, metadata``),
one answer per line. Each line is written with ONE ``os.write`` of the complete line on an
``O_APPEND`` descriptor, then ``fsync``: a killed run leaves complete lines plus at most one
partial last line, which the next run drops. ``metadata.config_hash`` ties each answer to the
configuration that made it; a rerun with another configuration is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Optional

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
        raise ValueError(f"--chunk-idx (={k}) must be in 0..{n - 1} for --num-chunks {n}.")
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
            raise ValueError(f"another run is writing {self.path}; wait for it or use another --out / "
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


def drop_partial_line(path) -> bool:
    """Truncate a trailing partial line (left by a killed run). Returns whether one was dropped."""
    path = Path(path)
    if not path.is_file():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    os.truncate(path, data.rfind(b"\n") + 1)
    return True


def read_answers(path) -> list:
    """The answer records of a JSONL file; a partial last line is ignored.

    Raises:
        ValueError: a complete line that is not a JSON object with a question_id (names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"answers file {str(path)!r} does not exist.")
    records = []
    lines = path.read_bytes().split(b"\n")
    for lineno, raw in enumerate(lines[:-1], 1):  # the part after the last newline is partial
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {lineno}: not a JSON answer ({error.msg}).") from error
        if not isinstance(record, dict) or "question_id" not in record:
            raise ValueError(f"{path}, line {lineno}: an answer needs a question_id.")
        records.append(record)
    return records


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


def mismatch_error(out, old: Optional[str], new: str, settings: dict) -> ValueError:
    """The refusal raised when existing answers were made with another configuration."""
    return ValueError(f"answers in {out} were made with a different configuration (hash {old or 'unknown'} != "
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


def chunk_files(out) -> dict:
    """{chunk index: path} of the chunk answer files in `out`, with their common chunk count.

    Raises:
        ValueError: no chunk files, or files of different chunk counts.
    """
    found = {}
    for path in Path(out).iterdir():
        match = _CHUNK_RE.match(path.name)
        if match:
            found[(int(match.group(1)), int(match.group(2)))] = path
    counts = {count for _, count in found}
    if not counts:
        raise FileNotFoundError(f"no chunk answer files (answers.chunk<I>of<K>.jsonl) in {out}.")
    if len(counts) > 1:
        raise ValueError(f"{out} holds chunk files of different --num-chunks ({sorted(counts)}); keep one set.")
    count = counts.pop()
    return {"num_chunks": count, "files": {index: path for (index, _), path in found.items()}}
