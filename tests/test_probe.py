"""The last-query attention probe equals eager attention's last row (float32, <= 1e-5)."""

from __future__ import annotations

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import torch  # noqa: E402

from llava_avc.backends.llava.adapter import LlavaAdapter  # noqa: E402

from helpers import QUESTIONS, images_for, left_padded, prompt_ids, set_attention_implementation, variant_images  # noqa: E402,E501


def probe_and_eager(model, merged):
    """Probe rows (n_layers, B, H, L) and eager attention's last rows from LLaVA's own forward."""
    adapter = LlavaAdapter(model)
    with adapter.last_query_probe(merged.attention_mask) as probe:
        adapter.forward_last_logits(merged.embeds, merged.attention_mask, merged.position_ids, adapter.new_cache())
    previous = set_attention_implementation(model, "eager")  # sdpa returns no attentions on >= 4.53
    try:
        eager = model(inputs_embeds=merged.embeds, attention_mask=merged.attention_mask.long(),
                      position_ids=merged.position_ids, output_attentions=True).attentions
    finally:
        set_attention_implementation(model, previous)
    return torch.stack(probe.attentions), torch.stack([layer[:, :, -1, :].float() for layer in eager])


@pytest.mark.parametrize("question", ["Hi?", QUESTIONS[0], QUESTIONS[2] + " " + QUESTIONS[1] * 3])
def test_probe_equals_eager_last_row_at_several_prompt_lengths(tiny_llava, sample_image, question):
    tokenizer, model, image_processor, _ = tiny_llava
    ids = prompt_ids(tokenizer, question).unsqueeze(0)
    merged = LlavaAdapter(model).merge_image(ids, None, images_for(model, image_processor, [sample_image]),
                                 [sample_image.size])
    probe, eager = probe_and_eager(model, merged)
    assert probe.shape == eager.shape == (model.config.num_hidden_layers, 1, model.config.num_attention_heads,
                                          merged.embeds.shape[1])
    assert float((probe - eager).abs().max()) <= 1e-5


def test_probe_equals_eager_in_a_left_padded_batch(tiny_llava, sample_image):
    tokenizer, model, image_processor, _ = tiny_llava
    ids, mask = left_padded([prompt_ids(tokenizer, question) for question in QUESTIONS])
    pil_images = variant_images(sample_image)
    merged = LlavaAdapter(model).merge_image(ids, mask, images_for(model, image_processor, pil_images),
                                 [image.size for image in pil_images])
    probe, eager = probe_and_eager(model, merged)
    assert float((probe - eager).abs().max()) <= 1e-5
    for row, mask_row in enumerate(merged.attention_mask):
        assert bool((probe[:, row][..., ~mask_row] == 0).all())  # padding keys get exactly 0
        torch.testing.assert_close(probe[:, row].sum(-1), torch.ones(probe.shape[0], probe.shape[2]))


def test_probe_equals_eager_with_grouped_query_attention(tmp_path_factory, sample_image):
    from llava_avc.testing.tiny import load_tiny, make_tiny_llava

    path = make_tiny_llava(tmp_path_factory.mktemp("gqa") / "llava-tiny-gqa", num_key_value_heads=2)
    tokenizer, model, image_processor, _ = load_tiny(path)
    ids = prompt_ids(tokenizer, QUESTIONS[0]).unsqueeze(0)
    merged = LlavaAdapter(model).merge_image(ids, None, images_for(model, image_processor, [sample_image]),
                                 [sample_image.size])
    probe, eager = probe_and_eager(model, merged)
    assert float((probe - eager).abs().max()) <= 1e-5
