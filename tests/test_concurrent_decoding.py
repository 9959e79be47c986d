"""Patch once, never per call: the pipelines of `ask` and `eval` call their backend directly, so threads that
decode at once with different methods (and a thread that patches and unpatches LLaVA meanwhile) each get
exactly their single-threaded answers, token for token."""

from __future__ import annotations

import importlib.util
import threading

import pytest
import torch

import llava_avc
from llava_avc import AVCConfig, M3IDConfig, VCDConfig
from llava_avc.backends import load_pipeline

HAS_LLAVA = importlib.util.find_spec("llava") is not None
ROUNDS = 3
METHODS = {"none": None, "avc": AVCConfig(), "vcd": VCDConfig(), "m3id": M3IDConfig()}
QUESTIONS = ["Is there a dog?", "What is in the image?"]


@pytest.fixture(params=["llava", "hf"])
def pipeline(request):
    if request.param == "llava" and not HAS_LLAVA:
        pytest.skip("needs llava-torch (the original backend)")
    if request.param == "hf":
        from llava_avc.backends.versions import HF_OLDEST, version_tuple
        import transformers

        if version_tuple(transformers.__version__) < HF_OLDEST:
            pytest.skip("needs the llava-hf backend's transformers")
    checkpoint = request.getfixturevalue("tiny_llava_dir" if request.param == "llava" else "tiny_hf_dir")
    return load_pipeline(str(checkpoint), device="cpu")


def _answer(pipeline, inputs, config) -> torch.Tensor:
    return pipeline.generate(inputs, config, row_seeds=[7, 8], max_new_tokens=5, do_sample=False)


def test_threads_decoding_at_once_with_different_methods_get_their_single_threaded_answers(pipeline, sample_image):
    inputs = pipeline.inputs(QUESTIONS, [sample_image, sample_image.rotate(90)])
    alone = {name: _answer(pipeline, inputs, config) for name, config in METHODS.items()}
    assert len({tuple(tokens.flatten().tolist()) for tokens in alone.values()}) > 1  # the methods differ here

    start = threading.Barrier(len(METHODS) + (1 if HAS_LLAVA else 0))
    results, errors, done = {}, [], threading.Event()

    def decode(name, config):
        try:
            start.wait()
            results[name] = [_answer(pipeline, inputs, config) for _ in range(ROUNDS)]
        except BaseException as error:  # noqa: B036 - reported by the main thread below
            errors.append((name, error))

    def patch_and_unpatch():  # what a user's script may do meanwhile: the pipelines must not care
        start.wait()
        while not done.is_set():
            with llava_avc.patched():
                pass

    threads = [threading.Thread(target=decode, args=item) for item in METHODS.items()]
    threads += [threading.Thread(target=patch_and_unpatch)] if HAS_LLAVA else []
    for thread in threads:
        thread.start()
    for thread in threads[:len(METHODS)]:
        thread.join(timeout=600)
    done.set()
    for thread in threads[len(METHODS):]:
        thread.join(timeout=60)
    assert not errors, errors
    for name, expected in alone.items():
        for tokens in results[name]:
            assert torch.equal(tokens, expected), name
