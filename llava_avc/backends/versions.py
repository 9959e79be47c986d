"""The transformers releases llava-avc is tested with, and version parsing; importable without
transformers itself (`llava-avc doctor` and the pre-load checks read them even when it is broken)."""

from __future__ import annotations

import re


def version_tuple(version: str) -> tuple[int, int, int]:
    """'4.37.2' -> (4, 37, 2); pre-release suffixes ('5.26.0.dev0', '4.57.1rc1') are ignored."""
    numbers = [int(part) for part in re.findall(r"\d+", version)[:3]]
    return tuple((numbers + [0, 0, 0])[:3])  # type: ignore[return-value]


#: The transformers releases the test suite runs on: the profiles of requirements/pins-*.txt
#: (4.37 and 4.57: the original backend, 4.57 the llava-hf one too; hf: the llava-hf backend).
TESTED_TRANSFORMERS = ("4.37.2", "4.57.6", "5.25.0")
#: The newest release tested; a newer one is untested until `bash scripts/test.sh --newest` passed on it.
NEWEST_TESTED = TESTED_TRANSFORMERS[-1]
#: The oldest release the llava-hf backend supports (tested on 4.57.6): LlavaForConditionalGeneration's
#: `model.language_model` layout and `generate(custom_generate=callable)`.
HF_OLDEST = (4, 57, 0)


def is_newer_than_tested(version: str) -> bool:
    return version_tuple(version) > version_tuple(NEWEST_TESTED)


def dotted(version: tuple) -> str:
    return ".".join(str(part) for part in version)
