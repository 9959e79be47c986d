"""Decoding protocols of the benchmark runner: the AvisC paper's and LLaVA's own.

``paper`` (the official AvisC scripts; sources in docs/evaluation.md):
    conversation ``llava_v1``, the question as given (MME: its first line only,
    ``text.split('\\n')[0]``, as MME's ``first_line_under`` says), multinomial sampling with
    temperature 1, top-p 1 and no top-k,
    at most 64 new tokens, ``torch.manual_seed(seed)`` once at the start, and the image
    resized + center-cropped by the CLIP processor (no pad-to-square) for LLaVA-1.5 ("pad")
    checkpoints. Answers are read with the paper's ``recorder`` rule.

``llava`` (LLaVA's ``scripts/v1_5/eval/{pope,mme}.sh``):
    conversation ``vicuna_v1``, greedy decoding, yes/no questions get
    ``"\\nAnswer the question using a single word or phrase."`` appended, at most 128 new
    tokens, LLaVA's ``process_images`` (pad to square). Answers are read with upstream
    ``llava/eval/eval_pope.py``'s rule. AMBER's generative "Describe this image." items get no
    suffix (a one-word caption would make CHAIR meaningless).
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from ..errors import UserError

#: LLaVA-1.5's short-answer instruction (its POPE / MME question files end with it).
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class Protocol:
    """Prompting and decoding settings shared by every method of one protocol."""

    name: str
    conv_mode: str
    do_sample: bool
    temperature: Optional[float]
    top_p: Optional[float]
    max_new_tokens: int
    suffix: Optional[str]
    center_crop: bool
    answer_rule: str

    def settings(self, max_new_tokens: Optional[int] = None, conv_mode: Optional[str] = None,
                 first_line_only: Sequence[str] = ()) -> dict:
        """The JSON-able generation settings (part of the run's configuration hash); `first_line_only`
        names the benchmarks whose questions this protocol cuts to their first line (kept in the settings,
        so in the hash, in the place and form run folders of earlier releases have it)."""
        values = asdict(self)
        values["first_line_only"] = list(first_line_only)
        if max_new_tokens is not None:
            values["max_new_tokens"] = max_new_tokens
        if conv_mode is not None:
            values["conv_mode"] = conv_mode
        return values


PROTOCOLS = {
    "paper": Protocol("paper", "llava_v1", True, 1.0, 1.0, 64, None, True, "paper"),
    "llava": Protocol("llava", "vicuna_v1", False, None, None, 128, SHORT_ANSWER_SUFFIX, False, "llava"),
}


def get_protocol(name: str) -> Protocol:
    """The protocol called `name`.

    Raises:
        ValueError: unknown name (the message suggests the nearest one).
    """
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    close = difflib.get_close_matches(name, PROTOCOLS, n=1, cutoff=0.3)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}.{hint}")


def generation_kwargs(settings: dict) -> dict:
    """`model.generate` keyword arguments for the settings of `Protocol.settings`."""
    kwargs = {"max_new_tokens": settings["max_new_tokens"], "do_sample": settings["do_sample"], "num_beams": 1}
    if settings["do_sample"]:
        # top_k=None as the official scripts pass it: no top-k warper at all.
        kwargs.update(temperature=settings["temperature"], top_p=settings["top_p"], top_k=None)
    return kwargs
