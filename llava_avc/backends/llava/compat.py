"""The transformers range LLaVA 1.2.2 (llava-torch 1.2.2.post1) runs on with llava-avc: 4.37.2 (its own
pin) and 4.38 - 4.57 through the patch. Every other fact about transformers' internals is in
`llava_avc.backends.transformers_compat`, shared with the llava-hf backend."""

from __future__ import annotations

import transformers

from ...errors import UserError
from ..transformers_compat import VERSION as TRANSFORMERS_VERSION
from .versions import MAX_TRANSFORMERS_EXCLUSIVE, MIN_TRANSFORMERS


def check_transformers_supported() -> None:
    """Raise a UserError when the installed transformers is outside the supported range."""
    if not (MIN_TRANSFORMERS <= TRANSFORMERS_VERSION < MAX_TRANSFORMERS_EXCLUSIVE):
        raise UserError(
            f"llava-avc supports transformers >= 4.37 and < 4.58; found {transformers.__version__}. "
            "Install LLaVA's pin with `pip install transformers==4.37.2 tokenizers==0.15.2`."
        )
