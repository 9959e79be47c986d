"""The transformers range the original LLaVA backend supports, importable without transformers itself
(`llava-avc doctor` classifies a version even when transformers is broken)."""

from __future__ import annotations

from ..versions import version_tuple  # noqa: F401  (the one version parser)

#: Oldest transformers release llava-avc is tested with (LLaVA 1.2.2's own pin).
MIN_TRANSFORMERS = (4, 37, 0)
#: First transformers release that is NOT supported (5.x changed the tokenizer and cache APIs).
MAX_TRANSFORMERS_EXCLUSIVE = (4, 58, 0)
#: First release whose generate passes `cache_position`, which LLaVA 1.2.2's forward rejects.
FIRST_NEEDING_PATCH = (4, 38, 0)

