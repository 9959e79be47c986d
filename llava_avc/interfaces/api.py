"""The Python API that works on any supported model: `generate`, `contrastive_generate`,
`find_blind_tokens`. Each dispatches on the model's class to its backend's adapter."""

from __future__ import annotations

from typing import Optional

import torch

from ..algorithm.config import AVCConfig, M3IDConfig, VCDConfig, resolve_method
from ..backends import adapter_for, backend_module
from ..decode import loop


def generate(model, input_ids: torch.Tensor, *, avc: Optional[AVCConfig] = None, vcd: Optional[VCDConfig] = None,
             m3id: Optional[M3IDConfig] = None, images=None, image_sizes=None, **generate_kwargs):
    """Generate with AVC, VCD or M3ID (at most one), or, with none of them, the model's own `generate`.

    Args:
        model: a model some backend serves (today: LLaVA's LlavaLlamaForCausalLM).
        input_ids: (B, T) prompt ids with one image placeholder per row.
        avc, vcd, m3id: the method's config; all None = the model's own `generate` (for LLaVA:
            upstream decoding, through the patch's compatibility fixes on transformers >= 4.38).
        images, image_sizes: the model's image inputs, as its own `generate` takes them.
        generate_kwargs: what the model's `generate` takes (max_new_tokens, do_sample, ...).
    Returns:
        What the model's own `generate` returns for the same call (plus `blind_tokens` in the
        dict output of AVC).
    """
    config = resolve_method(avc=avc, vcd=vcd, m3id=m3id)
    return backend_module(model).generate(model, input_ids, config, images=images, image_sizes=image_sizes,
                                          **generate_kwargs)


def contrastive_generate(model, input_ids: torch.Tensor, *, images=None, image_sizes=None, config,
                         sequential: bool = False, **generate_kwargs):
    """`llava_avc.decode.loop.contrastive_generate` on `model` (see there); `config` is required."""
    return loop.contrastive_generate(adapter_for(model), input_ids, images=images, image_sizes=image_sizes,
                                     config=config, sequential=sequential, **generate_kwargs)


def lean_generate(model, input_ids: torch.Tensor, *, images=None, image_sizes=None, **generate_kwargs):
    """The package's own one-branch decode loop on `model` (the benchmarks' baseline)."""
    return loop.lean_generate(adapter_for(model), input_ids, images=images, image_sizes=image_sizes,
                              **generate_kwargs)


def find_blind_tokens(model, input_ids, images, image_sizes=None, config: Optional[AVCConfig] = None,
                      attention_mask=None) -> list:
    """The blind tokens AVC would use for each row: the decoder's own code path (prefill + probe).

    Returns:
        One BlindTokens per row: `image_span` (start, end) in the merged, left-aligned sequence,
        `layers` (selected layer indices), `scores` (N floats) and `blind` (N booleans).
    """
    return loop.find_blind_tokens(adapter_for(model), input_ids, images, image_sizes, config, attention_mask)
