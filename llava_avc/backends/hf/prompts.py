"""Prompts of the llava-hf backend: the checkpoint's own chat template, or one of LLaVA's conversation
templates rendered exactly as the original LLaVA renders one image and one question, so the benchmark
protocols (`llava_v1`, `vicuna_v1`) mean the same prompt on both backends.

The system messages and the layout ("<system> USER: <image>\\n<question> ASSISTANT:") are those of
`conv_templates` in haotian-liu/LLaVA `llava/conversation.py` (Apache-2.0; SeparatorStyle.TWO, sep " ").
"""

from __future__ import annotations

from typing import Optional

from ...errors import UserError

#: `--conv-mode` value naming the checkpoint's own chat template (the default of `ask` on llava-hf).
CHAT_TEMPLATE = "chat-template"
#: LLaVA's conversation templates this backend renders: name -> system message.
LLAVA_CONVERSATIONS = {
    "llava_v1": ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions."),
    "vicuna_v1": ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions."),
}


def check_conv_mode(conv_mode: Optional[str]) -> None:
    """Refuse a `--conv-mode` this backend cannot render (None: the checkpoint's chat template).

    Raises:
        ValueError: the value, what is available and where the default comes from.
    """
    if conv_mode is None or conv_mode == CHAT_TEMPLATE or conv_mode in LLAVA_CONVERSATIONS:
        return
    raise UserError(f"--conv-mode (={conv_mode!r}) is not available for llava-hf checkpoints; choose "
                    f"{CHAT_TEMPLATE!r} (the checkpoint's own chat template, the default of ask) or one of LLaVA's "
                    f"{', '.join(repr(name) for name in LLAVA_CONVERSATIONS)}.")


def llava_conversation(conv_mode: str, question: str, image_token: str) -> str:
    """One image and one question in LLaVA's `conv_mode` template, ready for the answer."""
    return f"{LLAVA_CONVERSATIONS[conv_mode]} USER: {image_token}\n{question} ASSISTANT:"


def describe(conv_mode: Optional[str]) -> str:
    """What a `--conv-mode` value makes the prompt, for run records."""
    if conv_mode is None or conv_mode == CHAT_TEMPLATE:
        return "the checkpoint's chat template"
    return f"LLaVA conversation template {conv_mode!r}"
