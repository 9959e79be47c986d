"""Shared helpers for the integration tests: prompts, images and batches for real LLaVA models."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers.generation import LogitsProcessor, LogitsProcessorList, SuppressTokensLogitsProcessor

from llava_avc.backends.llava import prompts
from llava_avc.backends.transformers_compat import VERSION, generate_returns_leading_bos

#: Small excerpts of the benchmarks' reference files (POPE, AMBER, with their licences), kept in the
#: repository; fixtures/benchmarks/README.md says where they come from and how they were cut.
BENCHMARKS = Path(__file__).resolve().parent / "fixtures" / "benchmarks"


#: columns before the new tokens in generate's output (transformers 4.37: a BOS column; 4.38+: none)
LEAD = 1 if generate_returns_leading_bos() else 0

QUESTIONS = [
    "Is there a person in the image?",
    "Describe this image.",
    "What color is the jacket of the person in the picture? Answer briefly please.",
]


def prompt_ids(tokenizer, question: str, conv_mode: str = "llava_v1") -> torch.Tensor:
    """(T,) llava_v1 prompt ids with one IMAGE_TOKEN_INDEX placeholder."""
    return prompts.prompt_ids(tokenizer, prompts.build_prompt(question, conv_mode, model_config=None))


def left_padded(rows: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D id tensors into (B, T) ids and a (B, T) attention mask."""
    return prompts.left_padded_ids(rows, pad_id)


def images_for(model, image_processor, pil_images: list):
    """process_images as LLaVA's scripts do, on the model's device and dtype."""
    return prompts.prepare_images(pil_images, image_processor, model)


def variant_images(base: Image.Image) -> list:
    """Three different real-photo variants (crop, flip, rotate) of different aspect ratios."""
    width, height = base.size
    return [
        base,
        base.crop((0, 0, width, height // 2)).transpose(Image.FLIP_LEFT_RIGHT),
        base.rotate(90, expand=True),
    ]


class ForceTokens(LogitsProcessor):
    """Make greedy decoding emit the given tokens, one per step (replays a generated answer)."""

    def __init__(self, tokens: torch.Tensor, start_length: int):
        self.tokens = tokens  # (B, T)
        self.start_length = start_length

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.start_length
        forced = torch.full_like(scores, -float("inf"))
        forced.scatter_(1, self.tokens[:, step:step + 1], 0.0)
        return forced


def no_eos(tokenizer) -> LogitsProcessorList:
    """Forbid EOS so every run generates exactly max_new_tokens tokens."""
    return LogitsProcessorList([SuppressTokensLogitsProcessor([tokenizer.eos_token_id])])


def avc_generate(loaded, image, new_tokens: int = 4):
    """Greedy AVC (default config, EOS forbidden) on QUESTIONS[0] about one image, on the model's
    device; `loaded` is load_model's 4-tuple. Returns generate's dict output (with blind_tokens)."""
    import llava_avc

    tokenizer, model, image_processor, _ = loaded
    ids = prompt_ids(tokenizer, QUESTIONS[0]).unsqueeze(0).to(model.device)
    with llava_avc.patched():
        return model.generate(ids, images=images_for(model, image_processor, [image]), image_sizes=[image.size],
                              do_sample=False, max_new_tokens=new_tokens, logits_processor=no_eos(tokenizer),
                              avc=llava_avc.AVCConfig(), return_dict_in_generate=True)


def set_attention_implementation(model, name: str) -> str:
    """Switch the attention kernel of a loaded Llama-family model (to ask it for attention maps); returns
    the previous name. From transformers 4.48 the kernel is looked up per call from
    `config._attn_implementation`, so switching is enough; 4.37 builds one module class per implementation
    at init, where `output_attentions=True` on sdpa falls back to eager by itself."""
    previous = model.config._attn_implementation
    if VERSION >= (4, 48, 0):
        model.config._attn_implementation = name
    return previous
