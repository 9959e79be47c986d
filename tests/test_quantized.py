"""4-bit / 8-bit loading: the fixed path, its errors, and AVC/VCD/M3ID on quantized models.

transformers >= 4.53 with bitsandbytes >= 0.48 quantize on the CPU, so on the 4.57 profile the
quantized path runs for real here; on 4.37.2 transformers refuses quantization without a GPU, so
that profile checks the error. The CUDA path is tested in test_gpu.py (marked `gpu`).
"""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import torch  # noqa: E402

import llava_avc  # noqa: E402
from llava_avc import AVCConfig, M3IDConfig, VCDConfig  # noqa: E402
from llava_avc.backends import devices  # noqa: E402
from llava_avc.backends.llava.loading import NotALlavaCheckpointError, load_model  # noqa: E402
from llava_avc.backends.llava import compat  # noqa: E402

from helpers import LEAD, QUESTIONS, images_for, left_padded, no_eos, prompt_ids, variant_images  # noqa: E402

CPU_QUANTIZATION = compat.TRANSFORMERS_VERSION >= devices.MIN_TRANSFORMERS_CPU_QUANT
CPU_ERROR = "4-bit loading needs a CUDA GPU; found none; drop --load-4bit to run in fp32 on the CPU"
needs_cpu_quantization = pytest.mark.skipif(
    not CPU_QUANTIZATION, reason="transformers < 4.53 quantizes only on a GPU (tested by the error tests)")


def _quantized_linear_names(model):
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return {name for name, module in model.named_modules() if isinstance(module, kinds)}


@pytest.fixture(scope="module", params=["4bit", "8bit"])
def quantized(request, tiny_llava_dir):
    if not CPU_QUANTIZATION:
        pytest.skip("transformers < 4.53 quantizes only on a GPU")
    flags = {"load_4bit": request.param == "4bit", "load_8bit": request.param == "8bit"}
    return request.param, load_model(str(tiny_llava_dir), device="cpu", **flags)


def test_both_flags_is_an_error(tiny_llava_dir):
    with pytest.raises(ValueError, match="exclusive"):
        load_model(str(tiny_llava_dir), load_4bit=True, load_8bit=True, device="cpu")


def test_4bit_on_cpu_with_llavas_transformers_pin_says_what_to_do(tiny_llava_dir, monkeypatch):

    real = devices._version
    monkeypatch.setattr(devices, "_version", lambda name: (4, 37, 2) if name == "transformers" else real(name))
    with pytest.raises(ValueError, match=CPU_ERROR):
        load_model(str(tiny_llava_dir), load_4bit=True, device="cpu")


def test_cuda_requested_without_a_gpu_says_what_to_do(tiny_llava_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="needs a CUDA GPU; found none; drop --load-8bit"):
        load_model(str(tiny_llava_dir), load_8bit=True, device="cuda")


@pytest.mark.parametrize("installed, message", [(None, "not installed"), ((0, 40, 0), "too old")])
def test_missing_or_old_bitsandbytes_is_refused(tiny_llava_dir, monkeypatch, installed, message):

    monkeypatch.setattr(devices, "_version", lambda name: (4, 57, 6) if name == "transformers" else installed)
    with pytest.raises(ValueError, match=message):
        load_model(str(tiny_llava_dir), load_4bit=True, device="cpu")


def test_not_a_llava_checkpoint_names_what_is_missing(tiny_llava_dir, tmp_path):
    with pytest.raises(NotALlavaCheckpointError, match="does not exist"):
        load_model(str(tmp_path / "nowhere" / "llava-x"), device="cpu")
    empty = tmp_path / "llava-empty"
    empty.mkdir()
    with pytest.raises(NotALlavaCheckpointError, match="config.json is missing"):
        load_model(str(empty), device="cpu")
    plain = tmp_path / "llava-plain-llama"
    shutil.copytree(tiny_llava_dir, plain)
    config = json.loads((plain / "config.json").read_text())
    del config["mm_vision_tower"]
    (plain / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotALlavaCheckpointError, match="lacks mm_vision_tower"):
        load_model(str(plain), device="cpu")
    renamed = tmp_path / "tiny-model"
    shutil.copytree(tiny_llava_dir, renamed)
    with pytest.raises(NotALlavaCheckpointError, match="must contain 'llava'"):
        load_model(str(renamed), device="cpu")


def test_llava_loader_with_load_4bit_takes_the_fixed_path_while_patched(tiny_llava_dir):
    from llava.model import builder

    path = str(tiny_llava_dir)
    if CPU_QUANTIZATION:  # upstream passes load_in_4bit AND quantization_config: rejected from 4.38
        with pytest.raises(ValueError, match="quantization_config"):
            builder.load_pretrained_model(path, None, "llava-tiny", load_4bit=True, device_map="cpu", device="cpu")
        with llava_avc.patched():
            _, model, _, _ = builder.load_pretrained_model(path, None, "llava-tiny", load_4bit=True,
                                                           device_map="cpu", device="cpu")
        names = _quantized_linear_names(model)
        assert any(name.endswith("q_proj") for name in names)
        assert not any("mm_projector" in name or name == "lm_head" for name in names)
    else:  # 4.37: transformers' own GPU check, then ours with a fix
        with pytest.raises(RuntimeError, match="No GPU found"):
            builder.load_pretrained_model(path, None, "llava-tiny", load_4bit=True, device_map="cpu", device="cpu")
        with llava_avc.patched(), pytest.raises(ValueError, match=CPU_ERROR):
            builder.load_pretrained_model(path, None, "llava-tiny", load_4bit=True, device_map="cpu", device="cpu")


@needs_cpu_quantization
def test_quantized_model_keeps_projector_lm_head_and_tower_unquantized(quantized):
    kind, (_, model, _, _) = quantized
    names = _quantized_linear_names(model)
    layers = model.config.num_hidden_layers
    assert len([name for name in names if name.startswith("model.layers.")]) == 7 * layers  # q k v o gate up down
    assert not any("mm_projector" in name or name == "lm_head" or "vision_tower" in name for name in names)
    assert model.lm_head.weight.dtype == torch.float16
    assert model.get_vision_tower().vision_tower.dtype == torch.float16


@needs_cpu_quantization
@pytest.mark.parametrize("config", [AVCConfig(), VCDConfig(), M3IDConfig(lam=0.5)], ids=["avc", "vcd", "m3id"])
def test_quantized_generation_with_each_method(quantized, sample_image, config):
    kind, (tokenizer, model, image_processor, _) = quantized
    images = images_for(model, image_processor, [sample_image])
    ids = prompt_ids(tokenizer, QUESTIONS[0]).unsqueeze(0)
    with llava_avc.patched():
        out = model.generate(ids, images=images, image_sizes=[sample_image.size], do_sample=False,
                             max_new_tokens=4, logits_processor=no_eos(tokenizer), return_dict_in_generate=True,
                             **{config.method: config})
    assert out.sequences.shape == (1, LEAD + 4)
    assert int(out.sequences[0, LEAD:].min()) >= 0
    if config.method == "avc":
        assert 0 < out.blind_tokens[0].num_blind <= 576


@needs_cpu_quantization
def test_quantized_batch_runs_row_by_row(quantized, sample_image):
    kind, (tokenizer, model, image_processor, _) = quantized
    rows = [prompt_ids(tokenizer, question) for question in QUESTIONS]
    pil_images = variant_images(sample_image)
    ids, mask = left_padded(rows)
    images = images_for(model, image_processor, pil_images)
    with llava_avc.patched():
        out = model.generate(ids, attention_mask=mask, images=images, image_sizes=[im.size for im in pil_images],
                             do_sample=False, max_new_tokens=3, logits_processor=no_eos(tokenizer),
                             avc=AVCConfig(), return_dict_in_generate=True)
    assert out.sequences.shape == (3, LEAD + 3)
    assert [record.image_span[1] - record.image_span[0] for record in out.blind_tokens] == [576] * 3

