"""Hugging Face-native LLaVA (`LlavaForConditionalGeneration`, LLaVA-1.5 in llava-hf form) and LLaVA-NeXT
(`LlavaNextForConditionalGeneration`, LLaVA-1.6 anyres) as a backend, on transformers 4.57 and 5.x.
Imports neither `llava` nor anything of the original LLaVA backend.

    llava_avc.generate(model, **inputs, avc=AVCConfig(), max_new_tokens=64)
    model.generate(**inputs, custom_generate=llava_avc.hf.contrastive_decoding, avc=AVCConfig())
"""

from ..transformers_compat import guarded
from .generation import contrastive_decoding  # noqa: F401  (llava_avc.hf.contrastive_decoding)
from .self_check import self_check_cases  # noqa: F401  (llava-avc doctor)


def model_adapter(model):
    """The decode loop's view of a llava-hf model."""
    from .adapter import HFLlavaAdapter

    return HFLlavaAdapter(model)


@guarded
def generate(model, input_ids=None, config=None, **kwargs):
    """The model's own `generate`, with `config`'s method as transformers' custom decoding function.

    Without a method this IS `model.generate(input_ids=..., **kwargs)`, untouched. With one, the
    streamer (if any) is handed to the decoding function too (see `generation.contrastive_decoding`).
    """
    if input_ids is not None:
        kwargs["input_ids"] = input_ids
    if config is None:
        return model.generate(**kwargs)
    if kwargs.get("streamer") is not None:
        kwargs["token_streamer"] = kwargs["streamer"]
    return model.generate(custom_generate=contrastive_decoding, **{config.method: config}, **kwargs)
