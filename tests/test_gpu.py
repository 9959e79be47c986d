"""The CUDA path: fp16, 4-bit and 8-bit loading onto the GPU (LoRA checkpoints too), and AVC / VCD /
M3ID generation there.

Marked `gpu` and skipped, with the reason, where torch finds no CUDA GPU. On a lent GPU
`scripts/gpu_check.sh` runs them first (`pytest -m gpu`), before the 7B-shape benchmark. The photo
is `bench.bench_image()` because lent GPU machines have no matplotlib (a drawn image there).
"""

from __future__ import annotations

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import llava_avc  # noqa: E402
from llava_avc import AVCConfig, M3IDConfig, VCDConfig  # noqa: E402
from decode_benchmark import bench_image  # noqa: E402
from llava_avc.backends.llava.loading import load_model  # noqa: E402

from helpers import LEAD, QUESTIONS, avc_generate, images_for, left_padded, no_eos, prompt_ids  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"),
]

DEVICE = "cuda"
LOADINGS = {"fp16": {"dtype": torch.float16}, "4bit": {"load_4bit": True}, "8bit": {"load_8bit": True}}
NEW_TOKENS = 8
#: the tiny checkpoint's greedy answer to this question has top-1 margins >= 0.6 (fp32), far above
#: fp16 rounding, so "same tokens" is a fair test across batch shapes on the GPU
CLEAR_QUESTION = QUESTIONS[1]


@pytest.fixture(scope="module", params=list(LOADINGS))
def on_cuda(request, tiny_llava_dir):
    """(kind, (tokenizer, model, image_processor, context_len)) loaded onto the GPU."""
    loaded = load_model(str(tiny_llava_dir), device=DEVICE, **LOADINGS[request.param])
    yield request.param, loaded
    del loaded
    torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def photo():
    return bench_image()


def _quantized_linears(model) -> dict:
    import bitsandbytes as bnb

    kinds = {"4bit": bnb.nn.Linear4bit, "8bit": bnb.nn.Linear8bitLt}
    return {kind: [name for name, module in model.named_modules() if isinstance(module, cls)]
            for kind, cls in kinds.items()}


def test_model_is_on_the_gpu_and_quantized_as_asked(on_cuda):
    kind, (_, model, _, _) = on_cuda
    assert {parameter.device.type for parameter in model.parameters()} == {DEVICE}
    tower = model.get_vision_tower().vision_tower
    assert tower.dtype == torch.float16 and next(tower.parameters()).device.type == DEVICE
    assert model.lm_head.weight.dtype == torch.float16
    projector = model.get_model().mm_projector
    assert {parameter.dtype for parameter in projector.parameters()} == {torch.float16}
    linears = _quantized_linears(model)
    layers = model.config.num_hidden_layers
    for name, found in linears.items():
        expected = 7 * layers if name == kind else 0  # q k v o gate up down in every decoder layer
        assert len(found) == expected, (name, found)
        assert all(item.startswith("model.layers.") for item in found)


@pytest.mark.parametrize("config", [AVCConfig(), VCDConfig(), M3IDConfig(lam=0.5)], ids=["avc", "vcd", "m3id"])
def test_each_method_generates_a_left_padded_batch_on_the_gpu(on_cuda, photo, config):
    kind, (tokenizer, model, image_processor, _) = on_cuda
    ids, mask = left_padded([prompt_ids(tokenizer, question) for question in QUESTIONS[:2]])
    pil_images = [photo, photo.transpose(Image.FLIP_LEFT_RIGHT)]
    images = images_for(model, image_processor, pil_images)
    assert images.device.type == DEVICE and images.dtype == torch.float16
    with llava_avc.patched():
        out = model.generate(ids.to(DEVICE), attention_mask=mask.to(DEVICE), images=images,
                             image_sizes=[image.size for image in pil_images], do_sample=False,
                             max_new_tokens=NEW_TOKENS, logits_processor=no_eos(tokenizer),
                             return_dict_in_generate=True, output_scores=True, **{config.method: config})
    assert out.sequences.shape == (2, LEAD + NEW_TOKENS)
    new = out.sequences[:, LEAD:]
    assert int(new.min()) >= 0 and int(new.max()) < model.config.vocab_size
    assert all(torch.isfinite(scores.max(dim=-1).values).all() for scores in out.scores)
    if config.method == "avc":
        for record in out.blind_tokens:
            assert record.image_span[1] - record.image_span[0] == 576
            assert 0 < record.num_blind < 576


@pytest.mark.filterwarnings("ignore:AVCConfig.*no-op")
def test_zero_strength_avc_reproduces_upstream_greedy_on_the_gpu(on_cuda, photo):
    kind, (tokenizer, model, image_processor, _) = on_cuda
    ids = prompt_ids(tokenizer, CLEAR_QUESTION).unsqueeze(0).to(DEVICE)
    images = images_for(model, image_processor, [photo])
    kwargs = dict(images=images, image_sizes=[photo.size], do_sample=False, max_new_tokens=NEW_TOKENS,
                  logits_processor=no_eos(tokenizer))
    with llava_avc.patched():
        upstream = model.generate(ids, **kwargs)
        ours = model.generate(ids, avc=AVCConfig(alpha=0.0), **kwargs)
    assert ours.tolist() == upstream.tolist(), kind


@pytest.mark.parametrize("loading", ["fp16", "4bit"])
def test_avc_runs_on_a_lora_checkpoint_on_the_gpu(tiny_llava_dir, tiny_lora_dir, photo, loading):
    loaded = load_model(str(tiny_lora_dir), str(tiny_llava_dir), device=DEVICE, **LOADINGS[loading])
    model = loaded[1]
    assert {parameter.device.type for parameter in model.parameters()} == {DEVICE}
    assert len(_quantized_linears(model)["4bit"]) == (7 * model.config.num_hidden_layers if loading == "4bit" else 0)
    out = avc_generate(loaded, photo)
    assert out.sequences.shape == (1, LEAD + 4)
    assert 0 < out.blind_tokens[0].num_blind < 576
