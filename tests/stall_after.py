"""Run `llava-avc` (its real `main`) so that it stops for good right after its N-th answer is on disk: the
kill-and-resume tests kill it there, at a known point instead of a race.

    python tests/stall_after.py N MARKER_PREFIX -- eval pope ...

After writing N answers the process writes its pid into ``<MARKER_PREFIX><rank>`` (rank from the
launcher's RANK, 0 without one) and sleeps until it is killed (launchers may start ranks in sessions of
their own: kill the pid). Only `AnswerWriter.write` is wrapped; everything else runs
as `python -m llava_avc` does.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from llava_avc.eval import answers
from llava_avc.interfaces.cli import main

STALL_SECONDS = 3600


def _stalling_write(write, after: int, marker: Path):
    written = []

    def stalling(self, record):
        write(self, record)
        written.append(record["question_id"])
        if len(written) == after:
            marker.write_text(f"{os.getpid()}\n")
            time.sleep(STALL_SECONDS)  # until killed

    return stalling


if __name__ == "__main__":
    after, prefix, separator, *argv = sys.argv[1:]
    assert separator == "--", "usage: stall_after.py N MARKER_PREFIX -- llava-avc arguments"
    marker = Path(f"{prefix}{os.environ.get('RANK', '0')}")
    answers.AnswerWriter.write = _stalling_write(answers.AnswerWriter.write, int(after), marker)
    sys.exit(main(argv))
