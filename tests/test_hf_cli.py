"""The command line on llava-hf checkpoints (hf and 4.57 profiles): `llava-avc ask` and `llava-avc eval`
detect the checkpoint's format and use the llava-hf backend; the doctor names the backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers

from llava_avc.backends import checkpoint_backend
from llava_avc.backends.versions import HF_OLDEST, version_tuple

HF_BACKEND = version_tuple(transformers.__version__) >= HF_OLDEST
needs_hf = pytest.mark.skipif(not HF_BACKEND, reason=f"transformers {transformers.__version__} has no llava-hf "
                              "backend (4.57+: the 4.57 and hf profiles)")
QUERY = "What is in the image?"


def run_cli(*argv, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "llava_avc", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=cwd)


def test_the_checkpoint_format_decides_the_backend(tmp_path):
    for name, config, expected in (
        ("orig", {"model_type": "llava_llama", "mm_vision_tower": "openai/clip-vit-large-patch14-336"}, "llava"),
        ("hf15", {"model_type": "llava"}, "hf"),
        ("hf16", {"model_type": "llava_next"}, "hf"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        assert checkpoint_backend(str(tmp_path / name)) == expected, name
    assert checkpoint_backend("llava-hf/llava-1.5-7b-hf") == "hf"  # not in the local cache: by name
    assert checkpoint_backend("liuhaotian/llava-v1.5-7b") == "llava"
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="is a 'bert' checkpoint; llava-avc serves original LLaVA"):
        checkpoint_backend(str(tmp_path / "bert"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"config.json is damaged \(not valid JSON: .* line 1 column 2\).*download"):
        checkpoint_backend(str(tmp_path / "broken"))


def test_the_doctor_names_the_backends_this_environment_serves():
    import importlib.util

    proc = run_cli("doctor", "--json")
    checks = {check["name"]: check for check in json.loads(proc.stdout)["checks"]}
    llava = importlib.util.find_spec("llava") is not None
    expected = (f"original LLaVA (llava-torch): {'yes' if llava else 'no'}; "
                f"llava-hf (transformers-native): {'yes' if HF_BACKEND else 'no'}")
    assert checks["backends"]["detail"] == expected and checks["backends"]["ok"]
    assert checks["backend-hf"]["ok"] == HF_BACKEND
    assert proc.returncode == 0, proc.stdout


@needs_hf
def test_ask_on_a_llava_hf_checkpoint_answers_like_llava_avc_generate(tiny_hf_dir, tmp_path, sample_image):
    from llava_avc import AVCConfig
    from llava_avc.backends.hf.pipeline import HFPipeline

    image = tmp_path / "photo.png"
    sample_image.save(image)
    proc = run_cli("ask", "--model-path", tiny_hf_dir, "--image", image, "--query", QUERY, "--max-new-tokens", 6,
                   "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    pipeline = HFPipeline.load(str(tiny_hf_dir), device="cpu")
    from PIL import Image

    inputs = pipeline.inputs([QUERY], [Image.open(image).convert("RGB")])
    torch.manual_seed(42)
    output = pipeline.generate(inputs, AVCConfig(), max_new_tokens=6, do_sample=False)
    assert proc.stdout == pipeline.decode(output, inputs)[0] + "\n"
    record = pipeline.find_blind_tokens(inputs, AVCConfig())[0]
    assert (f"blind tokens: {record.num_blind} of 576 image tokens (span {record.image_span[0]}.."
            f"{record.image_span[1]}), selected layers {record.layers}") in proc.stderr


@needs_hf
def test_eval_pope_on_a_llava_hf_checkpoint_writes_and_resumes(tiny_hf_dir, tmp_path, sample_image):
    from helpers import BENCHMARKS

    lines = (BENCHMARKS / "pope" / "coco_pope_random.json").read_text().splitlines()[:4]
    (tmp_path / "q.json").write_text("\n".join(lines) + "\n")
    (tmp_path / "images").mkdir()
    for name in {json.loads(line)["image"] for line in lines}:
        sample_image.save(tmp_path / "images" / name)
    argv = ["eval", "pope", "--model-path", tiny_hf_dir, "--question-file", tmp_path / "q.json", "--image-folder",
            tmp_path / "images", "--out", tmp_path / "run", "--max-new-tokens", 4, "--device", "cpu", "--batch-size", 2]
    first = run_cli(*argv)
    assert first.returncode == 0, first.stderr[-3000:]
    answers = [json.loads(line) for line in (tmp_path / "run" / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [json.loads(line)["question_id"] for line in lines]
    assert {a["model_id"] for a in answers} == {tiny_hf_dir.name} and all(a["text"] for a in answers)
    again = run_cli(*argv)
    assert again.returncode == 0 and "0 new answers, 4 already there" in again.stdout
