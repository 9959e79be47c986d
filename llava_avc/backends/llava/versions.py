"""The supported transformers range and version parsing, importable without transformers itself
(`llava-avc doctor` classifies a version even when transformers is broken)."""

from __future__ import annotations

import re

#: Oldest transformers release llava-avc is tested with (LLaVA 1.2.2's own pin).
MIN_TRANSFORMERS = (4, 37, 0)
#: First transformers release that is NOT supported (5.x changed the tokenizer and cache APIs).
MAX_TRANSFORMERS_EXCLUSIVE = (4, 58, 0)
#: First release whose generate passes `cache_position`, which LLaVA 1.2.2's forward rejects.
FIRST_NEEDING_PATCH = (4, 38, 0)


def version_tuple(version: str) -> tuple[int, int, int]:
    """'4.37.2' -> (4, 37, 2); pre-release suffixes ('4.38.0.dev0', '4.57.1rc1') are ignored."""
    numbers = [int(part) for part in re.findall(r"\d+", version)[:3]]
    while len(numbers) < 3:
        numbers.append(0)
    return tuple(numbers)  # type: ignore[return-value]
