"""Seeds that depend only on (run seed, question, purpose): the same answer whatever the batch, the
number of processes or the resumes that produced it.

A run's seed and a question's id give the question's seed; each random draw of that question
(VCD's diffusion noise, AVC's `noise` masking, the sampling of its tokens) gets a seed derived from
it for its purpose, so two draws never share a stream. Pure Python: no torch import.
"""

from __future__ import annotations

import hashlib
import numbers

_SEED_BITS = 63  # torch.Generator.manual_seed takes any int in [0, 2**64); stay clear of the sign bit


def _digest(*parts) -> int:
    text = "\x1f".join(str(part) for part in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> (64 - _SEED_BITS)


def question_seed(run_seed: int, question_id) -> int:
    """The seed of one question in a run: a hash of the run's seed and the question's id.

    Raises:
        TypeError: `run_seed` is not an int.
    """
    if isinstance(run_seed, bool) or not isinstance(run_seed, numbers.Integral):
        raise TypeError(f"`run_seed` (={run_seed!r}) must be an int, e.g. 42.")
    return _digest("question", int(run_seed), question_id)


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose ("sample", "noise:<config seed>", ...) of a row whose seed is `seed`."""
    return _digest(purpose, int(seed))
