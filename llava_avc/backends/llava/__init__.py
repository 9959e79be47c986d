"""The original LLaVA codebase (llava-torch 1.2.2, import name `llava`) as a backend.

    adapter    `LlavaAdapter`: LlavaLlamaForCausalLM seen by the decode loop
    probe      the last-query attention probe (forward hooks on the Llama attention modules)
    generation transformers' generation front end (processors, warpers, stopping) for the loop
    compat     transformers-version facts LLaVA 1.2.2 depends on; `versions`: the supported range
    loading    fp32 / fp16 / 4-bit / 8-bit loading on top of LLaVA's own loader (one quantized path)
    prompts    LLaVA prompts and image tensors (LLaVA's public script API)
    pipeline   `LlavaPipeline`: a loaded checkpoint for `ask` and `eval`
    health     what `llava-avc doctor` checks about the `llava` package
    upstream   LLaVA's own generate (no method) on any supported transformers, without patching a class
    self_check a tiny random model in memory, on which the doctor runs the methods

The monkey-patches that make unmodified LLaVA scripts use the method live in the repository's
`patches/` folder (`llava_avc.patches`), which builds on this package; this package never imports it
and never patches a class: its entry points call the decode loop (a method) or LLaVA's own generate.
"""


def self_check_cases():
    """The in-memory tiny model `llava-avc doctor` runs the methods on (`self_check`)."""
    from .self_check import self_check_cases as cases

    return cases()


def model_adapter(model):
    """The decode loop's view of a LlavaLlamaForCausalLM."""
    from .adapter import LlavaAdapter

    return LlavaAdapter(model)


def image_inputs(model, images, image_sizes, extra: dict) -> tuple:
    """(images, image_sizes) as the decode loop takes them: original LLaVA's are already so; it takes no other
    image input.

    Raises:
        UserError: another family's image inputs (`image_grid_thw`, `qformer_input_ids`, ...).
    """
    from ...errors import UserError

    given = [name for name, value in extra.items() if value is not None]
    if given:
        raise UserError(f"{given[0]}= is not an input of original LLaVA ({type(model).__name__}); pass images= (and "
                        "image_sizes= for LLaVA-1.6) as LLaVA's process_images makes them.")
    return images, image_sizes


def front_end(model):
    """How the decode loop reads `generate`'s arguments for a LlavaLlamaForCausalLM."""
    from .generation import LlavaFrontEnd

    return LlavaFrontEnd(model)


def generate(model, input_ids, config=None, images=None, image_sizes=None, **generate_kwargs):
    """`config`'s method in the decode loop, or (None) LLaVA's own generate: what `model.generate` does
    after `llava_avc.patch_llava()`, with no class patched (`upstream`)."""
    if config is None:
        from .upstream import upstream_generate

        return upstream_generate(model, input_ids, images, image_sizes, **generate_kwargs)
    return contrastive_generate(model, input_ids, images, image_sizes, config, **generate_kwargs)


def contrastive_generate(model, input_ids, images, image_sizes, config, sequential: bool = False, **generate_kwargs):
    """`config`'s method in the package's decode loop (no patch needed); `sequential=True` runs the two
    branches as two forwards (the official code's structure, for benchmarks)."""
    from ...decode import loop

    return loop.contrastive_generate(model_adapter(model), front_end(model), input_ids, images=images,
                                     image_sizes=image_sizes, config=config, sequential=sequential, **generate_kwargs)


def lean_generate(model, input_ids, images, image_sizes, **generate_kwargs):
    """The package's own one-branch loop (the benchmarks' baseline): greedy equals upstream generate."""
    from ...decode import loop

    return loop.lean_generate(model_adapter(model), front_end(model), input_ids, images=images, image_sizes=image_sizes,
                              **generate_kwargs)
