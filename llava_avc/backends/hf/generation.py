"""AVC, VCD and M3ID as a transformers decoding method: `contrastive_decoding` for
`model.generate(..., custom_generate=contrastive_decoding, avc=AVCConfig())`.

transformers' `generate` (4.57+ and 5.x) prepares everything (generation config, logits processors
with the sampling warpers, stopping criteria, max_length from the processor's ids) and then calls a
callable `custom_generate` in place of its own `_sample`; the callable's parameters that `_sample`
lacks (`avc`, `vcd`, `m3id`, `pixel_values` and the families' image inputs, `mm_token_type_ids` (Qwen's text / image
token types) and `batch_num_images` (OneVision's images per prompt), both of which the adapter reads from the
ids, `image_model`, `token_streamer`) are taken out of generate's keyword arguments and handed to it, so that
transformers never validates a processor output of another family as a model kwarg of this one. Taking `pixel_values` this way keeps the pixels
(VCD noises them) instead of letting `generate` encode them in advance.

What `generate` hands over besides those (the model kwargs, whose names changed in 5.25) is read by
`llava_avc.backends.transformers_compat.decoding_kwargs`, the one place that knows that contract.

One quirk of transformers (4.57 - 5.25): when a custom callable has parameters of its own,
`generate` does not hand it the `streamer` (only its own prompt-ids `put` happens). Streaming
therefore takes `token_streamer=` (the same object as `streamer=`); `llava_avc.generate` passes both.
"""

from __future__ import annotations

import functools
import inspect

import torch

from ...errors import UserError
from ...decode import loop
from ...decode.methods import get_method, method_names, pop_method
from ...decode.adapter import GenerationSetup
from ...decode.sampling import check_generation_config
from .. import transformers_compat as compat
from ..base import ContrastiveGenerateOutput, check_one_sequence_per_prompt, contrastive_output
from ..families import is_served
from .adapter import HFAdapter, MergedEmbedsAdapter


def generation_setup(input_ids: torch.Tensor, kwargs: dict, method: str) -> GenerationSetup:
    """The GenerationSetup of what `generate` handed to `contrastive_decoding`.

    Raises:
        ValueError: beam search or several return sequences (generate would have expanded the batch).
    """
    config = kwargs["generation_config"]
    check_generation_config(config)  # the command line's rules, the same message on every backend
    check_one_sequence_per_prompt(config, method)
    eos = getattr(config, "_eos_token_tensor", None)
    pad = getattr(config, "_pad_token_tensor", None)
    return GenerationSetup(
        config=config,
        logits_processor=kwargs["logits_processor"],  # includes the sampling warpers (transformers >= 4.45)
        logits_warper=None,
        stopping_criteria=kwargs["stopping_criteria"],
        initial_ids=input_ids,  # generate returns the prompt ids followed by the new tokens
        eos_token_ids=None if eos is None else eos.reshape(-1).to(input_ids.device),
        attention_mask=kwargs.get("attention_mask"),
        streamer=kwargs.get("streamer"),
        prompt_streamed=True,  # generate itself put the prompt ids into the streamer
        pad_token_id=None if pad is None else int(pad.reshape(-1)[0]),
    )


class HFFrontEnd:
    """The llava-hf backend's `GenerationFrontEnd`: what transformers' `generate` already prepared and
    handed to the custom decoding function, and generate's output layout."""

    def prepare(self, input_ids: torch.Tensor, generate_kwargs: dict, method: str) -> GenerationSetup:
        return generation_setup(input_ids, generate_kwargs, method)

    def bind_prompt_length(self, setup: GenerationSetup, prompt_length: int) -> None:
        """Nothing to do: `generate` counted the processor's expanded ids, which ARE the merged positions."""

    def make_output(self, sequences, scores, past_key_values, blind_tokens) -> ContrastiveGenerateOutput:
        """The original branch's rows as a DynamicCache, as generate returns them."""
        return contrastive_output(sequences, scores, compat.cache_from_layers(past_key_values), blind_tokens)


class _WithMethodKeywords:
    """A transformers decoding method whose signature also names every registered method's keyword.

    transformers hands a `custom_generate` callable the keyword arguments its signature names and checks
    the rest as model kwargs ("model_kwargs are not used"); the signature is read from the method registry
    each time, so a method registered with `llava_avc.register_method` is a keyword of `generate` too.
    """

    def __init__(self, function):
        functools.update_wrapper(self, function)
        self._function = function

    @property
    def __signature__(self) -> inspect.Signature:
        signature = inspect.signature(self._function)
        kinds = inspect.Parameter
        named = [p for p in signature.parameters.values() if p.kind is not kinds.VAR_KEYWORD]
        rest = [p for p in signature.parameters.values() if p.kind is kinds.VAR_KEYWORD]
        keywords = [kinds(name, kinds.KEYWORD_ONLY, default=None) for name in method_names()
                    if name not in signature.parameters]
        return signature.replace(parameters=named + keywords + rest)

    def __call__(self, *args, **kwargs):
        return self._function(*args, **kwargs)


@_WithMethodKeywords
@compat.guarded
def contrastive_decoding(model, input_ids, logits_processor, stopping_criteria, generation_config,
                         synced_gpus=False, streamer=None, pixel_values=None, image_sizes=None, image_grid_thw=None,
                         qformer_input_ids=None, qformer_attention_mask=None, mm_token_type_ids=None, batch_num_images=None,
                         image_model=None,
                         token_streamer=None, sequential: bool = False, row_seeds=None, **model_kwargs):
    """A transformers decoding method: `model.generate(**inputs, custom_generate=contrastive_decoding,
    avc=AVCConfig(), max_new_tokens=64)` (or `vcd=` / `m3id=` / a registered method's keyword).

    `sequential=True` runs the two branches as two forwards with two caches (the official code's
    structure), for benchmarks. `row_seeds` (one int per row) make each row's noise and sampling
    independent of the batch (see `llava_avc.decode.loop.contrastive_generate`). Returns what `generate` returns: (B, T + new) ids (prompt first), or a
    `ContrastiveGenerateOutput` with `return_dict_in_generate=True`.

    Raises:
        ValueError: no method, two methods, no pixel_values, not one image per prompt, beam search.
    """
    config = pop_method(model_kwargs)
    if config is None:
        raise UserError(
            "custom_generate=contrastive_decoding needs a method: pass avc=AVCConfig(), vcd=VCDConfig() or "
            "m3id=M3IDConfig() (or a registered method's keyword); for plain decoding call model.generate without "
            "custom_generate."
        )
    image_inputs = {"pixel_values": pixel_values, "image_sizes": image_sizes, "image_grid_thw": image_grid_thw,
                    "qformer_input_ids": qformer_input_ids, "qformer_attention_mask": qformer_attention_mask}
    return _decode(image_model or model, input_ids, config, sequential, image_inputs,
                   dict(logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                        generation_config=generation_config, streamer=token_streamer or streamer,
                        row_seeds=row_seeds),
                   synced_gpus, model_kwargs)


@compat.guarded
def lean_decoding(model, input_ids, logits_processor, stopping_criteria, generation_config,
                  synced_gpus=False, streamer=None, pixel_values=None, image_sizes=None, image_grid_thw=None,
                  qformer_input_ids=None, qformer_attention_mask=None, mm_token_type_ids=None, batch_num_images=None,
                  image_model=None,
                  token_streamer=None, row_seeds=None, **model_kwargs):
    """The package's own loop with one branch and no contrast, as a transformers decoding method
    (the benchmarks' apples-to-apples baseline); equals greedy `generate` token for token."""
    image_inputs = {"pixel_values": pixel_values, "image_sizes": image_sizes, "image_grid_thw": image_grid_thw,
                    "qformer_input_ids": qformer_input_ids, "qformer_attention_mask": qformer_attention_mask}
    return _decode(image_model or model, input_ids, None, False, image_inputs,
                   dict(logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                        generation_config=generation_config, streamer=token_streamer or streamer,
                        row_seeds=row_seeds),
                   synced_gpus, model_kwargs)


def _decode(model, input_ids, config, sequential, image_inputs: dict, prepared: dict, synced_gpus,
            model_kwargs: dict):
    """Check what generate handed over, then run the loop on the model's adapter. `image_inputs`: the
    processor's image outputs this function takes as parameters (so that `generate` neither encodes the
    pixels in advance nor drops the image grids); the model's family reads its own."""
    if synced_gpus:
        raise UserError("synced_gpus (DeepSpeed ZeRO-3 / FSDP generation) is not supported by contrastive decoding; "
                        "generate on one process per model copy instead.")
    model_kwargs = dict(model_kwargs)
    if "inputs_embeds" in model_kwargs and not is_served(model):
        adapter = _merged_embeds_adapter(model, model_kwargs.pop("inputs_embeds"), config, image_inputs)
        images = image_sizes = None
    else:
        adapter = HFAdapter(model)
        images, image_sizes = adapter.image_rows(*adapter.family.take_image_inputs(image_inputs))
    front_end = HFFrontEnd()
    attention_mask, encoder_outputs = compat.decoding_kwargs(model_kwargs)
    if encoder_outputs:
        raise UserError("precomputed image features (mm_encoder_outputs) are not supported: pass pixel_values.")
    if config is None:
        return loop.lean_generate(adapter, front_end, input_ids, images=images, image_sizes=image_sizes,
                                  attention_mask=attention_mask, **prepared)
    return loop.contrastive_generate(adapter, front_end, input_ids, images=images, image_sizes=image_sizes, config=config,
                                     sequential=sequential, attention_mask=attention_mask, **prepared)


def _merged_embeds_adapter(model, inputs_embeds, config, image_inputs: dict) -> MergedEmbedsAdapter:
    """The adapter of a causal language model called with the image already merged into `inputs_embeds`
    (InstructBLIP's own `generate`: AVC and M3ID run on its merged prompt).

    Raises:
        UserError: a method that needs the pixels (VCD), or image inputs beside the merged prompt.
    """
    if config is not None and get_method(config.method).needs_pixels:
        method = config.method
        raise UserError(f"{method} noises the image's pixels, but {type(model).__name__}.generate got the image "
                        "already merged into inputs_embeds (InstructBLIP's own generate encodes it first): call "
                        f"llava_avc.generate(model, **inputs, {method}=...) on the image model instead.")
    given = sorted(name for name, value in image_inputs.items() if value is not None)
    if given:
        raise UserError(f"{type(model).__name__}.generate got inputs_embeds with the image merged AND image inputs "
                        f"({', '.join(given)}): pass one of them.")
    return MergedEmbedsAdapter(model, inputs_embeds)
