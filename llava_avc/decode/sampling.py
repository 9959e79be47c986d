"""The checks of the sampling settings, in ONE place for the command line and for
`generate(..., avc=...)` on every backend.

The rules are those transformers applies when it builds its generation config and sampling warpers
(`GenerationConfig.validate`, `TemperatureLogitsWarper`, `TopPLogitsWarper`, `TopKLogitsWarper`),
made strict where transformers is silent or lets a value through that cannot mean anything:

- `max_new_tokens` is an int >= 1 (transformers 4.37 generates one token for 0 or -1);
- `temperature` is a finite number >= 0, and > 0 when sampling (transformers lets `inf` through to
  `torch.multinomial`, which then fails; the command line read NaN and negative values as greedy);
- `top_p` is a finite number in (0, 1] (transformers skips the warper for values > 1 and keeps one
  token for 0, i.e. silently decodes greedily);
- `top_k` is an int >= 0 (0 = off, as in transformers).

Pure Python: no torch, no transformers.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

from ..errors import UserError

#: How a setting is named in messages: the keyword of `generate`, or the command line's flag.
KEYWORDS = {"max_new_tokens": "`max_new_tokens`", "temperature": "`temperature`", "top_p": "`top_p`",
            "top_k": "`top_k`"}
FLAGS = {"max_new_tokens": "--max-new-tokens", "temperature": "--temperature", "top_p": "--top-p",
         "top_k": "--top-k"}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_sampling(*, max_new_tokens=None, do_sample: Optional[bool] = None, temperature=None, top_p=None,
                   top_k=None, names: Optional[dict] = None) -> None:
    """Raise ValueError (what, the value, the constraint, the fix) for a sampling setting that
    transformers would refuse or silently ignore. None means "not given" for every setting.

    Args:
        max_new_tokens, temperature, top_p, top_k: the settings.
        do_sample: whether the call samples (temperature 0 is then an error); None = unknown.
        names: how each setting is named in messages (`KEYWORDS`, the default, or `FLAGS`).
    """
    names = names or KEYWORDS
    if max_new_tokens is not None and (not _is_int(max_new_tokens) or max_new_tokens < 1):
        raise UserError(f"{names['max_new_tokens']} (={max_new_tokens!r}) must be an integer >= 1 (the number of "
                        "tokens to generate); e.g. 64.")
    if temperature is not None:
        if not _is_number(temperature) or not math.isfinite(temperature) or temperature < 0:
            raise UserError(f"{names['temperature']} (={temperature!r}) must be a finite number >= 0 "
                            "(0 = greedy decoding, 1 = the model's own distribution); e.g. 1.0.")
        if do_sample and temperature == 0:
            raise UserError(f"{names['temperature']} (=0) must be > 0 when sampling (do_sample=True); set a "
                            "temperature such as 1.0, or do_sample=False for greedy decoding.")
    if top_p is not None and (not _is_number(top_p) or not math.isfinite(top_p) or not 0 < top_p <= 1):
        raise UserError(f"{names['top_p']} (={top_p!r}) must be in (0, 1] (the probability mass sampled from; "
                        "1 = all tokens); e.g. 0.9.")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise UserError(f"{names['top_k']} (={top_k!r}) must be an integer >= 0 (0 = no top-k filtering); e.g. 50.")


def check_generation_config(config) -> None:
    """`check_sampling` on a transformers-style generation config (attributes `max_new_tokens`,
    `do_sample`, `temperature`, `top_p`, `top_k`; missing ones are not checked)."""
    check_sampling(max_new_tokens=getattr(config, "max_new_tokens", None),
                   do_sample=bool(getattr(config, "do_sample", False)),
                   temperature=getattr(config, "temperature", None), top_p=getattr(config, "top_p", None),
                   top_k=getattr(config, "top_k", None))
