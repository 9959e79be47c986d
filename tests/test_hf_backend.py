"""AVC / VCD / M3ID on Hugging Face-native LLaVA (llava-hf) and LLaVA-NeXT, through transformers' own
`generate`, on tiny random llava-hf checkpoints loaded with `from_pretrained` (CPU).

Runs where transformers has custom_generate callables and llava-hf's model layout (4.57+: the 4.57
and hf profiles); on LLaVA's own pin (4.37) the module is skipped with that reason.
"""

from __future__ import annotations

import threading

import pytest
import torch
import transformers

from llava_avc.backends.versions import HF_OLDEST, version_tuple

if version_tuple(transformers.__version__) < HF_OLDEST:
    pytest.skip(f"transformers {transformers.__version__} predates llava-hf's current layout and custom_generate "
                "callables (4.57+); the hf backend runs on the 4.57 and hf profiles", allow_module_level=True)

from transformers import (AutoProcessor, LlamaConfig, LlamaForCausalLM, LlavaForConditionalGeneration,  # noqa: E402
                          LlavaNextForConditionalGeneration, TextIteratorStreamer)

import llava_avc  # noqa: E402
from llava_avc import AVCConfig, M3IDConfig, VCDConfig  # noqa: E402
from llava_avc.backends.hf.adapter import HFAdapter, image_token_id  # noqa: E402

from helpers import QUESTIONS, variant_images  # noqa: E402

NEW_TOKENS = 6
METHODS = [AVCConfig(), VCDConfig(), M3IDConfig(lam=0.5)]


def _load(path, cls, dtype=torch.float32):
    model = cls.from_pretrained(str(path), dtype=dtype).eval()
    return AutoProcessor.from_pretrained(str(path)), model


@pytest.fixture(scope="module")
def llava15(tiny_hf_dir):
    return _load(tiny_hf_dir, LlavaForConditionalGeneration)


@pytest.fixture(scope="module")
def llava_next(tiny_hf_next_dir):
    return _load(tiny_hf_next_dir, LlavaNextForConditionalGeneration)


@pytest.fixture(params=["llava-1.5", "llava-next"])
def loaded(request, llava15, llava_next):
    return llava15 if request.param == "llava-1.5" else llava_next


def prompt(processor, question: str) -> str:
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


def inputs_for(processor, questions: list, images: list) -> dict:
    """Processor outputs of a left-padded batch (one image per prompt)."""
    processor.tokenizer.padding_side = "left"
    return dict(processor(images=images, text=[prompt(processor, q) for q in questions], return_tensors="pt",
                          padding=True))


def greedy(model, inputs, **kwargs):
    kwargs.setdefault("max_new_tokens", NEW_TOKENS)
    kwargs.setdefault("do_sample", False)
    kwargs.setdefault("suppress_tokens", [model.generation_config.eos_token_id])  # every row runs to the end
    return llava_avc.generate(model, **inputs, **kwargs)


# ---------------------------------------------------------------- equivalence with transformers' generate


@pytest.mark.parametrize("config", [AVCConfig(alpha=0.0), VCDConfig(alpha=0.0), M3IDConfig(lam=0.0)],
                         ids=["avc", "vcd", "m3id"])
def test_zero_strength_equals_transformers_greedy_generate(loaded, sample_image, config):
    processor, model = loaded
    inputs = inputs_for(processor, QUESTIONS[:2], variant_images(sample_image)[:2])
    theirs = greedy(model, inputs)
    ours = greedy(model, inputs, **{config.method: config})
    assert ours.tolist() == theirs.tolist()
    assert ours.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS  # prompt ids, then the new tokens


def test_without_a_method_it_is_the_models_own_generate(llava15, sample_image):
    processor, model = llava15
    inputs = inputs_for(processor, QUESTIONS[:1], [sample_image])
    kwargs = dict(max_new_tokens=NEW_TOKENS, do_sample=False, return_dict_in_generate=True, output_scores=True)
    theirs, ours = model.generate(**inputs, **kwargs), llava_avc.generate(model, **inputs, **kwargs)
    assert type(ours) is type(theirs) and not hasattr(ours, "blind_tokens")
    assert ours.sequences.tolist() == theirs.sequences.tolist()
    for a, b in zip(ours.scores, theirs.scores):
        assert torch.equal(a, b)


@pytest.mark.parametrize("config", METHODS, ids=["avc", "vcd", "m3id"])
def test_a_left_padded_batch_equals_one_prompt_at_a_time(loaded, sample_image, config):
    processor, model = loaded
    questions, images = QUESTIONS, variant_images(sample_image)
    batch = greedy(model, inputs_for(processor, questions, images), **{config.method: config})
    new = batch[:, -NEW_TOKENS:]
    for row, (question, image) in enumerate(zip(questions, images)):
        alone = greedy(model, inputs_for(processor, [question], [image]), **{config.method: config})
        assert alone[0, -NEW_TOKENS:].tolist() == new[row].tolist(), row


def test_custom_generate_the_transformers_way_equals_llava_avc_generate(llava15, sample_image):
    processor, model = llava15
    inputs = inputs_for(processor, QUESTIONS[:2], variant_images(sample_image)[:2])
    ours = greedy(model, inputs, avc=AVCConfig())
    native = model.generate(**inputs, custom_generate=llava_avc.hf.contrastive_decoding, avc=AVCConfig(),
                            max_new_tokens=NEW_TOKENS, do_sample=False,
                            suppress_tokens=[model.generation_config.eos_token_id])
    assert native.tolist() == ours.tolist()
    plain = greedy(model, inputs)
    assert plain.tolist() != ours.tolist()  # AVC (alpha 2.5) changes the answer here


def test_the_dict_output_has_transformers_fields_and_the_blind_tokens(loaded, sample_image):
    processor, model = loaded
    inputs = inputs_for(processor, QUESTIONS[:2], variant_images(sample_image)[:2])
    output = greedy(model, inputs, avc=AVCConfig(), return_dict_in_generate=True, output_scores=True)
    assert len(output.scores) == NEW_TOKENS and output.scores[0].shape == (2, model.config.text_config.vocab_size)
    assert output.past_key_values.get_seq_length() == output.sequences.shape[1] - 1
    records = llava_avc.find_blind_tokens(model, **inputs, config=AVCConfig())
    token = image_token_id(model)
    for row, (record, again) in enumerate(zip(output.blind_tokens, records)):
        ids = inputs["input_ids"][row]
        positions = torch.nonzero(ids == token).flatten()
        assert record.image_span == (int(positions[0]), int(positions[-1]) + 1)  # the processor's run (left-padded)
        assert record.blind.shape == (positions.numel(),) and 0 < record.num_blind < positions.numel()
        assert record.layers == again.layers and torch.equal(record.blind, again.blind)


def test_llava_next_spans_follow_each_images_size(llava_next, sample_image):
    """Anyres: the number of image tokens (base + tiles + newline rows) differs between images of
    different shapes, and each row's span is its own."""
    processor, model = llava_next
    images = variant_images(sample_image)
    records = llava_avc.find_blind_tokens(model, **inputs_for(processor, QUESTIONS, images), config=AVCConfig())
    sizes = [record.image_span[1] - record.image_span[0] for record in records]
    alone = [processor(images=[image], text=[prompt(processor, "q")], return_tensors="pt")["input_ids"] for image in images]
    assert sizes == [int((ids == image_token_id(model)).sum()) for ids in alone]
    assert len(set(sizes)) > 1


# ---------------------------------------------------------------- the probe keeps sdpa


def test_the_probe_equals_eager_attentions_last_row_with_sdpa(loaded, sample_image):
    processor, model = loaded
    assert model.config._attn_implementation == "sdpa"
    adapter = HFAdapter(model)
    inputs = inputs_for(processor, QUESTIONS[:2], variant_images(sample_image)[:2])
    merged = adapter.merge_image(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                                 inputs.get("image_sizes"))
    with adapter.last_query_probe(merged.attention_mask) as probe:
        adapter.forward_last_logits(merged.embeds, merged.attention_mask, merged.position_ids, adapter.new_cache())
    language_model = model.model.language_model
    language_model.config._attn_implementation = "eager"
    try:
        eager = language_model(inputs_embeds=merged.embeds, attention_mask=merged.attention_mask.long(),
                               position_ids=merged.position_ids, output_attentions=True).attentions
    finally:
        language_model.config._attn_implementation = "sdpa"
    expected = torch.stack([layer[:, :, -1, :].float() for layer in eager])  # (layers, B, H, L)
    assert float((torch.stack(probe.attentions) - expected).abs().max()) <= 1e-5


# ---------------------------------------------------------------- sampling, streaming, dtypes, 4-bit


def test_sampling_is_reproducible_and_follows_the_seed(llava15, sample_image):
    processor, model = llava15
    inputs = inputs_for(processor, QUESTIONS[:1], [sample_image])
    config = AVCConfig(beta=1e-3)  # a wide plausible set, so that the draw matters

    def sample(seed: int) -> list:
        torch.manual_seed(seed)
        return greedy(model, inputs, avc=config, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=12).tolist()

    first = sample(0)
    assert sample(0) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


def test_a_streamer_in_a_thread_gives_the_answer(llava15, sample_image):
    processor, model = llava15
    inputs = inputs_for(processor, QUESTIONS[:1], [sample_image])
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
    thread = threading.Thread(target=greedy, args=(model, inputs), kwargs=dict(avc=AVCConfig(), streamer=streamer))
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    ids = greedy(model, inputs, avc=AVCConfig())
    answer = processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert streamed.strip() == answer.strip() and answer.strip()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_decode_with_avc(tiny_hf_dir, sample_image, dtype):
    processor, model = _load(tiny_hf_dir, LlavaForConditionalGeneration, dtype)
    inputs = inputs_for(processor, QUESTIONS[:1], [sample_image])
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    output = greedy(model, inputs, avc=AVCConfig(), return_dict_in_generate=True)
    assert output.sequences.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS
    assert 0 < output.blind_tokens[0].num_blind < 576


@pytest.mark.parametrize("bits", [4, 8])
def test_bitsandbytes_keeps_the_tower_projector_and_lm_head_and_decodes(tiny_hf_dir, sample_image, bits):
    """llava-avc's BitsAndBytesConfig (the CLI's --load-4bit / --load-8bit) on transformers' loader."""
    import bitsandbytes as bnb

    from llava_avc.backends.hf.pipeline import HFPipeline

    pipeline = HFPipeline.load(str(tiny_hf_dir), device="cpu", load_4bit=bits == 4, load_8bit=bits == 8)
    layer_class = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    quantized = [name for name, module in pipeline.model.named_modules() if isinstance(module, layer_class)]
    assert len(quantized) == 7 * pipeline.model.config.text_config.num_hidden_layers
    assert all(name.startswith("model.language_model.layers.") for name in quantized)
    inputs = pipeline.inputs(QUESTIONS[:1], [sample_image])
    output = pipeline.generate(inputs, AVCConfig(), max_new_tokens=NEW_TOKENS, do_sample=False,
                               return_dict_in_generate=True)
    assert output.sequences.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS
    assert 0 < output.blind_tokens[0].num_blind < 576


# ---------------------------------------------------------------- bad input: one clear error each


def test_a_model_that_is_not_llava_is_refused(llava15):
    processor, _ = llava15
    text_only = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, vocab_size=64)).eval()
    with pytest.raises(TypeError, match="LlamaForCausalLM.*is not a model llava-avc can decode"):
        llava_avc.generate(text_only, input_ids=torch.tensor([[1, 2, 3]]), avc=AVCConfig())


def test_inputs_without_pixel_values_are_refused(llava15, sample_image):
    processor, model = llava15
    inputs = inputs_for(processor, QUESTIONS[:1], [sample_image])
    inputs.pop("pixel_values")
    with pytest.raises(ValueError, match="avc= needs an image: .* the processor's pixel_values= for llava-hf"):
        greedy(model, inputs, avc=AVCConfig())


def test_two_images_in_one_prompt_are_refused(llava15, sample_image):
    processor, model = llava15
    text = prompt(processor, "Compare them.").replace("<image>", "<image><image> and <image>", 1)
    inputs = dict(processor(images=[sample_image] * 3, text=[text], return_tensors="pt"))
    with pytest.raises(ValueError, match="more than one image"):
        greedy(model, inputs, avc=AVCConfig())


def test_beam_search_is_refused(llava15, sample_image):
    processor, model = llava15
    inputs = inputs_for(processor, QUESTIONS[:1], [sample_image])
    with pytest.raises(ValueError, match=r"`num_beams` \(=2\) must be 1 with avc="):
        greedy(model, inputs, avc=AVCConfig(), num_beams=2)


def test_a_config_under_the_wrong_keyword_is_refused(llava15, sample_image):
    processor, model = llava15
    inputs = inputs_for(processor, QUESTIONS[:1], [sample_image])
    with pytest.raises(TypeError, match="pass this config as `vcd=`"):
        greedy(model, inputs, avc=VCDConfig())
    with pytest.raises(ValueError, match="needs a method"):
        model.generate(**inputs, custom_generate=llava_avc.hf.contrastive_decoding, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"model_kwargs.*\['avcc'\]"):  # a misspelt method keyword
        greedy(model, inputs, avcc=AVCConfig())
