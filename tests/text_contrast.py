"""A fourth decoding method defined OUTSIDE the package, as a contributor would write one: "text contrast",
the original branch against the prompt without its image, z = (1 + alpha) * l - alpha * l_text under the
plausibility cutoff (tests/test_method_registry.py registers it and runs it on both backends).

    python tests/text_contrast.py COMMAND ARGS...   # the llava-avc command with the method registered
"""

import sys
from dataclasses import dataclass, field
from typing import ClassVar

import torch

import llava_avc
from llava_avc.decode.prefill import text_only_branch


@dataclass(frozen=True)
class TextContrastConfig(llava_avc.MethodConfig):
    method: ClassVar[str] = "textcd"

    alpha: float = field(default=1.0, metadata={"help": "contrast strength against the text-only branch",
                                                "constraint": ">= 0"})
    beta: float = field(default=0.1, metadata={"help": "plausibility cutoff of the original branch",
                                               "constraint": "in (0, 1]"})

    def validate(self) -> None:
        if not self.alpha >= 0:
            raise ValueError(f"`alpha` (={self.alpha}) must be >= 0; e.g. alpha=1.0.")
        if not 0 < self.beta <= 1:
            raise ValueError(f"`beta` (={self.beta}) must be in (0, 1]; e.g. beta=0.1.")


def prefill(adapter, request, config):
    return text_only_branch(adapter, request), None


def combine(config, logits, text_logits, step):
    logits, text_logits = logits.float(), text_logits.float()
    scores = (1 + config.alpha) * logits - config.alpha * text_logits
    cutoff = torch.log(torch.tensor(config.beta)) + logits.max(dim=-1, keepdim=True).values
    return scores.masked_fill(logits < cutoff, float("-inf"))


METHOD = llava_avc.Method("textcd", TextContrastConfig, prefill, combine, "contrast with the prompt without its image")


if __name__ == "__main__":
    llava_avc.register_method(METHOD)
    from llava_avc.interfaces.cli import main

    sys.exit(main(sys.argv[1:]))
