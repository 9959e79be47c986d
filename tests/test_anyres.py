"""LLaVA-1.6 (anyres, spatial_unpad, image-newline rows): variable image spans per sample."""

from __future__ import annotations

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import torch  # noqa: E402

import llava_avc  # noqa: E402
from llava_avc import AVCConfig, M3IDConfig, VCDConfig  # noqa: E402
from llava_avc.backends.llava.adapter import LlavaAdapter  # noqa: E402

from helpers import QUESTIONS, images_for, left_padded, no_eos, prompt_ids, variant_images  # noqa: E402


@pytest.fixture(autouse=True)
def _patched():
    with llava_avc.patched():
        yield


def image_feature_count(model, images, sizes, row):
    """How many embeddings LLaVA's merge puts in place of row `row`'s image (from a text-free merge)."""
    placeholder_only = torch.tensor([[1, -200]])
    _, _, _, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
        placeholder_only, None, None, None, None, images[row:row + 1], [sizes[row]])
    return embeds.shape[1] - 1


@pytest.fixture(scope="module")
def batch(tiny_anyres, sample_image):
    """Three questions about three photos of different aspect ratios, left-padded."""
    tokenizer, model, image_processor, _ = tiny_anyres
    pil_images = variant_images(sample_image)
    rows = [prompt_ids(tokenizer, question) for question in QUESTIONS]
    ids, mask = left_padded(rows)
    return (tokenizer, model, images_for(model, image_processor, pil_images), [im.size for im in pil_images],
            rows, ids, mask)


def test_anyres_spans_are_what_the_merge_produced_per_sample(batch):
    tokenizer, model, images, sizes, rows, ids, mask = batch
    records = llava_avc.find_blind_tokens(model, ids, images, sizes, AVCConfig(), attention_mask=mask)
    counts = [image_feature_count(model, images, sizes, row) for row in range(3)]
    assert len(set(counts)) > 1, "the three photos must give different numbers of anyres features"
    for row, record in enumerate(records):
        start, end = record.image_span
        assert end - start == counts[row] == len(record.scores)
    merged = LlavaAdapter(model).merge_image(ids, mask, images, sizes)
    # the newline embedding appears inside each span, never outside it
    newline = model.get_model().image_newline
    for row, (start, end) in enumerate(merged.image_spans):
        is_newline = (merged.embeds[row] == newline).all(-1)
        assert bool(is_newline[start:end].any()) and not bool(is_newline[:start].any() or is_newline[end:].any())


@pytest.mark.parametrize("config", [AVCConfig(), VCDConfig(), M3IDConfig(lam=0.5)], ids=["avc", "vcd", "m3id"])
def test_anyres_batch_matches_one_prompt_at_a_time(batch, config):
    tokenizer, model, images, sizes, rows, ids, mask = batch
    common = dict(do_sample=False, max_new_tokens=5, logits_processor=no_eos(tokenizer))
    batch = model.generate(ids, attention_mask=mask, images=images, image_sizes=sizes, **common,
                           **{config.method: config})
    for row in range(3):
        alone = model.generate(rows[row].unsqueeze(0), images=[images[row]], image_sizes=[sizes[row]], **common,
                               **{config.method: config})
        assert batch[row].tolist() == alone[0].tolist(), f"row {row}"


def test_anyres_zero_alpha_reproduces_upstream(tiny_anyres, sample_image):
    tokenizer, model, image_processor, _ = tiny_anyres
    images = images_for(model, image_processor, [sample_image])
    ids = prompt_ids(tokenizer, QUESTIONS[0]).unsqueeze(0)
    common = dict(images=images, image_sizes=[sample_image.size], do_sample=False, max_new_tokens=8,
                  logits_processor=no_eos(tokenizer))
    assert model.generate(ids, avc=AVCConfig(alpha=0.0), **common).tolist() == model.generate(ids, **common).tolist()
