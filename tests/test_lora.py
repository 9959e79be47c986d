"""LoRA checkpoints (base + adapter + non_lora_trainables, merged through peft by LLaVA's loader)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from llava_avc.backends.llava.loading import load_model  # noqa: E402

from helpers import LEAD, avc_generate  # noqa: E402
from test_quantized import CPU_QUANTIZATION  # noqa: E402


def _reference_merge(base_dir, lora_dir):
    """Base weights + peft's own merge of the adapter + the projector from non_lora_trainables."""
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from peft import PeftModel

    model = LlavaLlamaForCausalLM.from_pretrained(str(base_dir), torch_dtype=torch.float32)
    trainables = torch.load(lora_dir / "non_lora_trainables.bin", map_location="cpu")
    model.load_state_dict({key[len("base_model.model."):]: value for key, value in trainables.items()}, strict=False)
    return PeftModel.from_pretrained(model, str(lora_dir)).merge_and_unload().eval()


def test_lora_checkpoint_loads_merged_like_peft(tiny_llava_dir, tiny_lora_dir, sample_image):
    tokenizer, model, image_processor, _ = load_model(str(tiny_lora_dir), str(tiny_llava_dir), device="cpu")
    reference = _reference_merge(tiny_llava_dir, tiny_lora_dir)
    _, base, _, _ = load_model(str(tiny_llava_dir), device="cpu")
    state, expected, before = model.state_dict(), reference.state_dict(), base.state_dict()
    layer = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(state[layer], expected[layer].to(state[layer].dtype), atol=2e-3, rtol=0)
    # The merge added exactly W += (lora_alpha / r) * B @ A, computed here from the adapter's own files.
    adapter = load_file(str(tiny_lora_dir / "adapter_model.safetensors"))
    settings = json.loads((tiny_lora_dir / "adapter_config.json").read_text())
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    delta = settings["lora_alpha"] / settings["r"] * (adapter[f"{prefix}.lora_B.weight"].float()
                                                      @ adapter[f"{prefix}.lora_A.weight"].float())
    assert float(delta.abs().max()) > 0.05  # the adapter's B is non-zero: the merge is visible
    torch.testing.assert_close(state[layer] - before[layer], delta.to(state[layer].dtype), atol=2e-3, rtol=0)
    projector = "model.mm_projector.0.weight"
    torch.testing.assert_close(state[projector], expected[projector].to(state[projector].dtype), atol=2e-3, rtol=0)


@pytest.mark.parametrize("loading", ["fp32", "fp16", "4bit"])
def test_avc_runs_on_a_lora_checkpoint(tiny_llava_dir, tiny_lora_dir, sample_image, loading):
    quantized = loading == "4bit"
    if quantized and not CPU_QUANTIZATION:
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            load_model(str(tiny_lora_dir), str(tiny_llava_dir), device="cpu", load_4bit=True)
        return
    dtype = torch.float16 if loading == "fp16" else None
    loaded = load_model(str(tiny_lora_dir), str(tiny_llava_dir), device="cpu", load_4bit=quantized, dtype=dtype)
    model = loaded[1]
    if loading == "fp16":
        assert {parameter.dtype for parameter in model.parameters()} == {torch.float16}
        reference = _reference_merge(tiny_llava_dir, tiny_lora_dir).state_dict()
        layer = "model.layers.0.self_attn.q_proj.weight"
        torch.testing.assert_close(model.state_dict()[layer], reference[layer].half(), atol=2e-3, rtol=0)
    out = avc_generate(loaded, sample_image)
    assert out.sequences.shape == (1, LEAD + 4)
    assert 0 < out.blind_tokens[0].num_blind < 576
