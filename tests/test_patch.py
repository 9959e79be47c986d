"""The monkey-patch of LlavaLlamaForCausalLM: reversible, idempotent, checked before it mutates."""

from __future__ import annotations

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import torch  # noqa: E402
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM  # noqa: E402

import llava_avc  # noqa: E402
from llava_avc import AVCConfig  # noqa: E402
from llava_avc.backends import transformers_compat  # noqa: E402
from llava_avc.backends.llava import compat  # noqa: E402
from llava_avc.errors import UserError  # noqa: E402

from helpers import LEAD, QUESTIONS, images_for, no_eos, prompt_ids  # noqa: E402

ORIGINAL_GENERATE = LlavaLlamaForCausalLM.__dict__["generate"]
ORIGINAL_FORWARD = LlavaLlamaForCausalLM.__dict__["forward"]


@pytest.fixture(autouse=True)
def _restore():
    yield
    llava_avc.unpatch_llava()


def _class_state():
    return dict(vars(LlavaLlamaForCausalLM))


def test_patch_then_unpatch_restores_the_original_function_objects():
    before = _class_state()
    llava_avc.patch_llava()
    assert LlavaLlamaForCausalLM.generate is not ORIGINAL_GENERATE
    assert llava_avc.is_patched()
    llava_avc.unpatch_llava()
    assert LlavaLlamaForCausalLM.__dict__["generate"] is ORIGINAL_GENERATE
    assert LlavaLlamaForCausalLM.__dict__["forward"] is ORIGINAL_FORWARD
    assert _class_state() == before
    assert not llava_avc.is_patched()


def test_second_patch_is_a_no_op():
    llava_avc.patch_llava()
    patched_generate = LlavaLlamaForCausalLM.__dict__["generate"]
    llava_avc.patch_llava()
    assert LlavaLlamaForCausalLM.__dict__["generate"] is patched_generate
    llava_avc.unpatch_llava()
    assert LlavaLlamaForCausalLM.__dict__["generate"] is ORIGINAL_GENERATE


def test_patched_context_restores_on_exit_even_after_an_error():
    with pytest.raises(KeyError):
        with llava_avc.patched():
            assert llava_avc.is_patched()
            raise KeyError("boom")
    assert LlavaLlamaForCausalLM.__dict__["generate"] is ORIGINAL_GENERATE


def test_patched_context_keeps_a_patch_made_outside_it():
    llava_avc.patch_llava()
    with llava_avc.patched():
        pass
    assert llava_avc.is_patched()


def test_unsupported_transformers_refuses_and_mutates_nothing(monkeypatch):
    before = _class_state()
    monkeypatch.setattr(compat, "TRANSFORMERS_VERSION", (5, 0, 0))
    with pytest.raises(UserError, match="transformers >= 4.37 and < 4.58"):
        llava_avc.patch_llava()
    assert _class_state() == before


def _upstream_kwargs(model, tokenizer, image_processor, sample_image):
    ids = prompt_ids(tokenizer, QUESTIONS[1]).unsqueeze(0)
    images = images_for(model, image_processor, [sample_image])
    return ids, dict(images=images, image_sizes=[sample_image.size], do_sample=False, max_new_tokens=8,
                     logits_processor=no_eos(tokenizer), return_dict_in_generate=True, output_scores=True)


def test_without_method_keywords_the_upstream_path_runs(tiny_llava, sample_image):
    """transformers 4.37: the upstream path runs bit for bit. 4.38+: LLaVA 1.2.2 alone fails
    (forward rejects cache_position) and the patch makes it run, equal to our lean loop."""
    from llava_avc.interfaces.api import lean_generate

    tokenizer, model, image_processor, _ = tiny_llava
    ids, kwargs = _upstream_kwargs(model, tokenizer, image_processor, sample_image)
    forward_kwargs = dict(input_ids=ids, images=kwargs["images"], image_sizes=kwargs["image_sizes"])
    if transformers_compat.needs_explicit_attention_mask():
        with pytest.raises((TypeError, AttributeError)):
            model.generate(ids, **kwargs)
        with llava_avc.patched():
            patched = model.generate(ids, **kwargs)
        reference = lean_generate(model, ids, **kwargs)
        assert patched.sequences.tolist() == reference.sequences.tolist()
        for theirs, ours in zip(reference.scores, patched.scores):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        return
    upstream = model.generate(ids, **kwargs)
    upstream_forward = model(**forward_kwargs).logits
    with llava_avc.patched():
        patched = model.generate(ids, **kwargs)
        patched_forward = model(**forward_kwargs).logits
    assert torch.equal(patched.sequences, upstream.sequences)
    for theirs, ours in zip(upstream.scores, patched.scores):
        assert torch.equal(theirs, ours)
    assert torch.equal(patched_forward, upstream_forward)


def _assert_only_the_patch_drops_cache_position(model, text_ids) -> None:
    with pytest.raises(TypeError, match="cache_position"):
        model(input_ids=text_ids, cache_position=torch.arange(text_ids.shape[1]))
    with llava_avc.patched():
        logits = model(input_ids=text_ids, cache_position=torch.arange(text_ids.shape[1])).logits
    assert logits.shape[:2] == text_ids.shape


def test_patched_forward_drops_cache_position_that_llava_rejects(tiny_llava, sample_image):
    tokenizer, model, _, _ = tiny_llava
    ids = prompt_ids(tokenizer, "Hello there").unsqueeze(0)
    _assert_only_the_patch_drops_cache_position(model, ids[ids != -200].unsqueeze(0))


def test_upstream_decoding_without_the_patch_leaves_the_model_as_it_was(tiny_llava, sample_image):
    """llava_avc.generate without a method runs LLaVA's own generate on any supported transformers without
    patching a class; afterwards the model's forward still rejects cache_position by itself, and a later
    patch still applies to it."""
    tokenizer, model, image_processor, _ = tiny_llava
    ids = prompt_ids(tokenizer, QUESTIONS[0]).unsqueeze(0)
    images = images_for(model, image_processor, [sample_image])
    assert not llava_avc.is_patched()
    out = llava_avc.generate(model, ids, images=images, image_sizes=[sample_image.size], do_sample=False,
                             max_new_tokens=3, logits_processor=no_eos(tokenizer))
    assert out.shape[0] == 1 and not llava_avc.is_patched()
    _assert_only_the_patch_drops_cache_position(model, ids[ids != -200].unsqueeze(0))


def test_avc_keyword_works_only_while_patched(tiny_llava, sample_image):
    tokenizer, model, image_processor, _ = tiny_llava
    ids = prompt_ids(tokenizer, QUESTIONS[0]).unsqueeze(0)
    images = images_for(model, image_processor, [sample_image])
    with pytest.raises(ValueError, match="avc"):
        model.generate(ids, images=images, image_sizes=[sample_image.size], avc=AVCConfig(), max_new_tokens=2)
    with llava_avc.patched():
        out = model.generate(ids, images=images, image_sizes=[sample_image.size], avc=AVCConfig(),
                             max_new_tokens=2, logits_processor=no_eos(tokenizer))
    assert out.shape == (1, LEAD + 2)
