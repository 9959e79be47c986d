"""Answers that depend only on (seed, question): with one seed per row, a row's sampled tokens and its
VCD / AVC noise are the same in any batch, on both backends (original LLaVA; llava-hf where it runs)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import transformers

from llava_avc import AVCConfig, M3IDConfig, VCDConfig
from llava_avc.algorithm.seeds import question_seed
from llava_avc.backends.versions import HF_OLDEST, version_tuple

from helpers import QUESTIONS, variant_images

SAMPLING = dict(do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=8)
CONFIGS = [AVCConfig(beta=1e-3, masking="noise"), VCDConfig(beta=1e-3), M3IDConfig(beta=1e-3), None]
IDS = ["avc-noise", "vcd", "m3id", "none"]


def _pipelines(request):
    if request.param == "llava":
        if importlib.util.find_spec("llava") is None:
            pytest.skip("the original-LLaVA backend (llava-torch) is not installed on this profile")
        from llava_avc.backends.llava.pipeline import LlavaPipeline

        return LlavaPipeline(*request.getfixturevalue("tiny_llava"))
    if version_tuple(transformers.__version__) < HF_OLDEST:
        pytest.skip(f"transformers {transformers.__version__} has no llava-hf backend (4.57+)")
    from llava_avc.backends.hf.pipeline import HFPipeline

    return HFPipeline.load(str(request.getfixturevalue("tiny_hf_dir")), device="cpu")


@pytest.fixture(scope="module", params=["llava", "hf"])
def pipeline(request):
    return _pipelines(request)


def _answers(pipeline, questions, images, config, seeds, **kwargs):
    inputs = pipeline.inputs(questions, images, "llava_v1")
    return pipeline.decode(pipeline.generate(inputs, config, row_seeds=seeds, **kwargs), inputs)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_a_rows_sampled_answer_does_not_depend_on_its_batch(pipeline, sample_image, config):
    images, seeds = variant_images(sample_image), [question_seed(42, qid) for qid in range(3)]
    torch.manual_seed(0)
    batch = _answers(pipeline, QUESTIONS, images, config, seeds, **SAMPLING)
    for row in range(3):
        torch.manual_seed(100 + row)  # the global RNG does not matter any more
        assert _answers(pipeline, QUESTIONS[row:row + 1], images[row:row + 1], config, seeds[row:row + 1],
                        **SAMPLING) == batch[row:row + 1], row
    reseeded = _answers(pipeline, QUESTIONS, images, config, [question_seed(43, qid) for qid in range(3)], **SAMPLING)
    assert reseeded != batch  # the run's seed still decides


def test_vcd_noise_follows_the_question_seed_under_greedy_decoding(pipeline, sample_image):
    """Greedy VCD draws no tokens at random, but its noised image is the question's own draw."""
    images = variant_images(sample_image)[:1]
    config = VCDConfig(beta=1e-3, alpha=3.0)
    answers = {seed: _answers(pipeline, QUESTIONS[:1], images, config, [seed], do_sample=False, max_new_tokens=8)
               for seed in (question_seed(42, 0), question_seed(42, 0), question_seed(42, 1), question_seed(42, 2))}
    assert len(answers) == 3 and len(set(map(tuple, answers.values()))) > 1


def test_bad_row_seeds_are_one_clear_error(pipeline, sample_image):
    with pytest.raises(ValueError, match=r"`row_seeds` \(=\[1\]\) must be 2 non-negative ints, one per prompt row"):
        _answers(pipeline, QUESTIONS[:2], variant_images(sample_image)[:2], AVCConfig(), [1], **SAMPLING)
