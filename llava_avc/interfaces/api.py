"""The Python API that works on any supported model: `generate`, `contrastive_generate`,
`find_blind_tokens`. Each dispatches on the model's class to its backend (whose entry points translate a
broken transformers contract on an untested release: `transformers_compat.guarded`); `find_blind_tokens`
runs the loop's prefill directly, under the same guard."""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import UserError
from ..algorithm.config import AVCConfig
from ..backends import adapter_for, backend_module
from ..backends.transformers_compat import guarded
from ..decode import loop
from ..decode.methods import pop_method


def generate(model, input_ids: Optional[torch.Tensor] = None, **kwargs):
    """Generate with a registered method (`avc=AVCConfig()`, `vcd=VCDConfig()`, `m3id=M3IDConfig()` or one
    registered with `llava_avc.register_method`; at most one), or, with none, the model's own `generate`.

    One function for both backends, dispatched on the model's class:

    - original LLaVA (`LlavaLlamaForCausalLM`): `generate(model, input_ids, images=..., image_sizes=...,
      avc=AVCConfig(), ...)`; without a method, upstream decoding (through the patch's compatibility
      fixes on transformers >= 4.38);
    - llava-hf (`LlavaForConditionalGeneration`, `LlavaNextForConditionalGeneration`):
      `generate(model, **processor(images=image, text=prompt, return_tensors="pt"), avc=AVCConfig(), ...)`;
      without a method, `model.generate(**inputs)` untouched.

    Args:
        model: a model some backend serves.
        input_ids: (B, T) prompt ids with one image per row (or inside `kwargs`).
        kwargs: `<method>=config` (none or None = the model's own `generate`), and what the model's
            `generate` takes (images / pixel_values, max_new_tokens, do_sample, temperature, top_p, streamer,
            return_dict_in_generate, ...).
    Returns:
        What the model's own `generate` returns for the same call (plus `blind_tokens` in the dict
        output of AVC).
    """
    config = pop_method(kwargs)
    return backend_module(model).generate(model, input_ids, config, **kwargs)


def contrastive_generate(model, input_ids: torch.Tensor, *, images=None, image_sizes=None, config,
                         sequential: bool = False, **generate_kwargs):
    """`config`'s method (required) in the package's decode loop, on any supported model; the output is
    what the model's own `generate` returns (see `llava_avc.decode.loop.contrastive_generate`).

    Args:
        images: original LLaVA's image tensor(s), or a llava-hf processor's `pixel_values`.
        sequential: the two branches as two forwards with two caches (the official code's structure).
    """
    return backend_module(model).contrastive_generate(model, input_ids, images, image_sizes, config,
                                                      sequential=sequential, **generate_kwargs)


def lean_generate(model, input_ids: torch.Tensor, *, images=None, image_sizes=None, **generate_kwargs):
    """The package's own one-branch decode loop on any supported model (the benchmarks' baseline);
    greedy, it equals the model's own `generate`."""
    return backend_module(model).lean_generate(model, input_ids, images, image_sizes, **generate_kwargs)


@guarded
def find_blind_tokens(model, input_ids, images=None, image_sizes=None, config: Optional[AVCConfig] = None,
                      attention_mask=None, pixel_values=None, image_grid_thw=None, qformer_input_ids=None,
                      qformer_attention_mask=None, mm_token_type_ids=None, batch_num_images=None) -> list:
    """The blind tokens AVC would use for each row: the decoder's own code path (prefill + probe).

    Args:
        model: a model some backend serves.
        input_ids, attention_mask: the prompt ids, as for generate.
        images: original LLaVA's image tensor(s); `pixel_values`: the llava-hf processor's (pass one).
        image_sizes: as for generate (LLaVA-1.6 / LLaVA-NeXT / LLaVA-OneVision).
        image_grid_thw (Qwen2.5-VL, Qwen3-VL), qformer_input_ids and qformer_attention_mask (InstructBLIP),
            mm_token_type_ids (Qwen) and batch_num_images (LLaVA-OneVision; both read from the ids instead): the
            processor's other outputs, so that `find_blind_tokens(model, **inputs)` takes a batch as it is.
        config: the AVCConfig (gamma, lam); default AVCConfig().
    Returns:
        One BlindTokens per row: `image_span` (start, end) in the merged, left-aligned sequence,
        `layers` (selected layer indices), `scores` (N floats) and `blind` (N booleans).
    """
    if config is not None and not isinstance(config, AVCConfig):
        raise TypeError(f"find_blind_tokens: config (={type(config).__name__}) must be an AVCConfig: blind tokens are "
                        "AVC's (its gamma and lam select them); pass AVCConfig(gamma=..., lam=...) or no config.")
    if images is not None and pixel_values is not None:
        raise UserError("find_blind_tokens: got both images= and pixel_values=; pass the image once (images= for "
                        "original LLaVA, pixel_values= from a llava-hf processor).")
    images = images if images is not None else pixel_values
    extra = {"image_grid_thw": image_grid_thw, "qformer_input_ids": qformer_input_ids,
             "qformer_attention_mask": qformer_attention_mask}
    images, image_sizes = backend_module(model).image_inputs(model, images, image_sizes, extra)
    return loop.find_blind_tokens(adapter_for(model), input_ids, images, image_sizes, config, attention_mask)
