"""transformers' image-text-to-text families as a backend (`llava_avc.backends.families`): LLaVA-1.5 and
LLaVA-1.6 in llava-hf form (`LlavaForConditionalGeneration`, `LlavaNextForConditionalGeneration`; transformers
4.57 and 5.x), LLaVA-OneVision and Qwen2.5-VL (transformers 5.x). Imports neither `llava` nor anything of the
original LLaVA backend.

    llava_avc.generate(model, **inputs, avc=AVCConfig(), max_new_tokens=64)
    model.generate(**inputs, custom_generate=llava_avc.hf.contrastive_decoding, avc=AVCConfig())
"""

from ..transformers_compat import guarded
from .generation import contrastive_decoding  # noqa: F401  (llava_avc.hf.contrastive_decoding)
from .self_check import self_check_cases  # noqa: F401  (llava-avc doctor)


def model_adapter(model):
    """The decode loop's view of a llava-hf model."""
    from .adapter import HFAdapter

    return HFAdapter(model)


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
    return generate_with(model, contrastive_decoding, kwargs, **{config.method: config})


@guarded
def contrastive_generate(model, input_ids, images, image_sizes, config, sequential: bool = False, **kwargs):
    """`config`'s method on images given as `images` (the processor's pixel_values); `sequential=True`
    runs the two branches as two forwards (the official code's structure, for benchmarks)."""
    kwargs.update(_image_kwargs(model, images, image_sizes), input_ids=input_ids)
    return generate_with(model, contrastive_decoding, kwargs, sequential=sequential, **{config.method: config})


@guarded
def lean_generate(model, input_ids, images, image_sizes, **kwargs):
    """The package's own one-branch loop (the benchmarks' baseline): greedy equals `model.generate`."""
    from .generation import lean_decoding

    kwargs.update(_image_kwargs(model, images, image_sizes), input_ids=input_ids)
    return generate_with(model, lean_decoding, kwargs)


def image_inputs(model, pixel_values, image_sizes, extra: dict) -> tuple:
    """(images, image_sizes) as the decode loop takes them, from the processor's image outputs (`extra`: the
    family's other ones, e.g. `image_grid_thw`, `qformer_input_ids`)."""
    from .adapter import HFAdapter

    adapter = HFAdapter(model)
    outputs = {"pixel_values": pixel_values, "image_sizes": image_sizes, **extra}
    return adapter.image_rows(*adapter.family.take_image_inputs(outputs))


def _image_kwargs(model, images, image_sizes) -> dict:
    """`generate` kwargs of the processor's image inputs (`image_sizes`: the family's image info)."""
    from ..families import family_of

    info = family_of(model).image_info
    return {"pixel_values": images} if info is None else {"pixel_values": images, info: image_sizes}


def generate_with(model, decoding, kwargs: dict, **method_kwargs):
    """`model.generate(custom_generate=decoding)` (InstructBLIP: its language model's, with the model beside it
    as `image_model`); the streamer also goes as `token_streamer` (see `generation.contrastive_decoding`:
    transformers does not hand it to a callable with parameters)."""
    from ..families import family_of

    if kwargs.get("streamer") is not None:
        kwargs["token_streamer"] = kwargs["streamer"]
    generating = family_of(model).generating_model(model)
    if generating is not model:
        kwargs["image_model"] = model
    return generating.generate(custom_generate=decoding, **method_kwargs, **kwargs)

