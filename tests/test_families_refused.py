"""On transformers 4.57 (the 4.57 profile) the llava-hf backend serves LLaVA-1.5 and LLaVA-NeXT only: a model of
the other families (LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL, InstructBLIP), which transformers 4.57 can load, is
refused in one line naming the release it needs (tests/test_families.py tests them on transformers 5)."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")
major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
if not (4, 57) <= (major, minor) < (5, 0):
    pytest.skip("the refusal is for transformers 4.57 (the 4.57 profile)", allow_module_level=True)

import torch  # noqa: E402

import llava_avc  # noqa: E402
from llava_avc import AVCConfig  # noqa: E402
from llava_avc.errors import UserError  # noqa: E402


def test_a_qwen_model_on_transformers_4_57_is_one_line(tmp_path):
    from llava_avc.testing.tiny_families import make_tiny_family

    directory = make_tiny_family(tmp_path / "tiny-qwen2_5_vl", "qwen2_5_vl", seed=0)
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(directory).eval()
    inputs = {"input_ids": torch.tensor([[1, 2, 3]]), "pixel_values": torch.zeros(4, 1176),
              "image_grid_thw": torch.tensor([[1, 2, 2]])}
    with pytest.raises(UserError, match=r"^Qwen2_5_VLForConditionalGeneration needs transformers >= 5.0 with "
                                        r"llava-avc \(this environment has 4\.57") as error:
        llava_avc.generate(model, **inputs, avc=AVCConfig(), max_new_tokens=2)
    assert "\n" not in str(error.value)
