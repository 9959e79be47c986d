"""The library's AVC greedy decoding equals an independent reference written from the equations
(tests/reference_avc.py: full forwards without cache, eager attention maps, plain torch ops)."""

from __future__ import annotations

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import torch  # noqa: E402

import llava_avc  # noqa: E402

from helpers import LEAD, QUESTIONS, images_for, no_eos, prompt_ids  # noqa: E402
from reference_avc import reference_avc_greedy, reference_prefill  # noqa: E402

NEW_TOKENS = 8
CASES = {
    "defaults": (0, {}),
    "defaults-question-2": (1, {}),
    "alpha1-lam0.5-gamma0.3": (0, dict(alpha=1.0, lam=0.5, gamma=0.3)),
    "masking-ones": (0, dict(masking="ones")),
    "masking-noise-question-2": (1, dict(masking="noise")),
}


@pytest.fixture(scope="module")
def reference(tiny_llava, sample_image):
    """reference(question_index, **config) -> (ids, images, sizes, ReferenceRun), memoised."""
    tokenizer, model, image_processor, _ = tiny_llava
    images, sizes = images_for(model, image_processor, [sample_image]), [sample_image.size]
    runs = {}

    def run(question: int, **config):
        key = (question, tuple(sorted(config.items())))
        if key not in runs:
            ids = prompt_ids(tokenizer, QUESTIONS[question]).unsqueeze(0)
            runs[key] = ids, images, sizes, reference_avc_greedy(
                model, ids, images, sizes, NEW_TOKENS, eos_token_id=tokenizer.eos_token_id, **config)
        return runs[key]

    return run


@pytest.mark.smoke
@pytest.mark.parametrize("question, config", CASES.values(), ids=CASES.keys())
def test_library_avc_equals_the_reference_tokens_and_blind_mask(tiny_llava, reference, question, config):
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes, ref = reference(question, **config)
    with llava_avc.patched():
        out = model.generate(ids, images=images, image_sizes=sizes, do_sample=False, max_new_tokens=NEW_TOKENS,
                             logits_processor=no_eos(tokenizer), avc=llava_avc.AVCConfig(**config),
                             return_dict_in_generate=True)
    record = out.blind_tokens[0]
    assert out.sequences[0, LEAD:].tolist() == ref.tokens
    assert torch.equal(record.blind.cpu(), ref.blind)
    assert record.image_span == ref.span and record.layers == ref.layers
    assert 0 < int(ref.blind.sum()) < len(ref.blind)  # some tokens blind, not all: the masking matters


def test_reference_at_zero_alpha_is_plain_greedy(tiny_llava, reference):
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes, ref = reference(1, alpha=0.0)
    with llava_avc.patched():
        plain = model.generate(ids, images=images, image_sizes=sizes, do_sample=False, max_new_tokens=NEW_TOKENS,
                               logits_processor=no_eos(tokenizer))
    assert plain[0, LEAD:].tolist() == ref.tokens


def test_reference_contrast_changes_the_tokens(reference):
    """The comparison has teeth: at alpha = 2.5 the reference decodes other tokens than at alpha = 0."""
    *_, avc = reference(1)
    *_, plain = reference(1, alpha=0.0)
    assert avc.tokens != plain.tokens
    # step 0: the same prefix, different scores; argmax moves
    assert avc.tokens[0] != plain.tokens[0]
    torch.testing.assert_close(avc.logits[0], plain.logits[0], rtol=0, atol=0)


def test_blind_threshold_uses_the_unbiased_std(tiny_llava, reference):
    """lam is put between the thresholds of the population and the unbiased std for one token: that
    token is blind with std(N) and not blind with std(N - 1), in the reference and in the library."""
    tokenizer, model, _, _ = tiny_llava
    ids, images, sizes, _ = reference(0)
    scores = reference_prefill(model, ids, images, sizes).scores  # (N,) float64, independent of lam
    n = len(scores)
    ratios = (scores - scores.mean()) / scores.std(correction=1)
    token = int(torch.argmin((ratios - 1.0).abs()))  # the token about one std above the mean
    lam = float(ratios[token]) * (1 + 0.5 * ((n / (n - 1)) ** 0.5 - 1))
    ref = reference_prefill(model, ids, images, sizes, lam=lam).blind
    assert not ref[token] and scores[token] >= scores.mean() + lam * scores.std(correction=0)
    with llava_avc.patched():
        out = model.generate(ids, images=images, image_sizes=sizes, do_sample=False, max_new_tokens=1,
                             avc=llava_avc.AVCConfig(lam=lam), return_dict_in_generate=True)
    assert torch.equal(out.blind_tokens[0].blind.cpu(), ref)
