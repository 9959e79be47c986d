"""Shared by the tests of the llava-hf families (tests/test_families.py, tests/test_family_processors.py): the
families, their transformers classes (independent of llava-avc's own table), the questions and images, and
the command line in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

FAMILIES = ["llava_onevision", "qwen2_5_vl", "qwen3_vl", "instructblip"]
#: The transformers model class of each family.
CLASSES = {"llava_onevision": "LlavaOnevisionForConditionalGeneration",
           "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen3_vl": "Qwen3VLForConditionalGeneration",
           "instructblip": "InstructBlipForConditionalGeneration"}
QUESTIONS = ["Is there a dog in the image?", "What color is the car?"]
NEW_TOKENS = 6


def family_images(sample_image) -> list:
    """Two different small images (sizes that give different tile/grid counts)."""
    first = sample_image.resize((96, 112))
    second = sample_image.rotate(90, expand=True).resize((120, 80))
    return [first, second]


def run_cli(*argv):
    """`python -m llava_avc ARGV...` offline, one thread: the finished process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "llava_avc", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=600)
