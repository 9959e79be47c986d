"""The `llava-avc` command: ask, method flags (with the official scripts' aliases), errors."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from llava_avc import AVCConfig, M3IDConfig, VCDConfig
from llava_avc.interfaces.flags import add_method_arguments, config_from_args


def parse(*argv, default="avc"):
    parser = argparse.ArgumentParser()
    add_method_arguments(parser, default_method=default)
    return config_from_args(parser.parse_args(list(argv)))


def run_cli(*argv, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "llava_avc", *argv], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.mark.parametrize("argv, expected", [
    ((), AVCConfig()),
    (("--method", "avc", "--avc-alpha", "1.0", "--avc-gamma", "0.3"), AVCConfig(alpha=1.0, gamma=0.3)),
    (("--use_avisc", "--cd_alpha", "1.0", "--cd_beta", "0.2", "--layer_gamma", "0.4", "--lamb", "0.5",
      "--masking_scheme", "noise"), AVCConfig(alpha=1.0, beta=0.2, gamma=0.4, lam=0.5, masking="noise")),
    (("--use-cd", "--noise-step", "300", "--cd-alpha", "0.5"), VCDConfig(alpha=0.5, noise_step=300)),
    (("--method", "vcd", "--vcd-alpha", "2.0"), VCDConfig(alpha=2.0)),
    (("--use_m3id", "--m3id-lambda", "0.1", "--cd_beta", "0.05"), M3IDConfig(lam=0.1, beta=0.05)),
    (("--method", "none"), None),
])
def test_method_flags_and_official_aliases_build_the_config(argv, expected):
    assert parse(*argv) == expected


@pytest.mark.parametrize("argv, message", [
    (("--method", "avc", "--use_cd"), "conflicting method flags"),
    (("--use_avisc", "--use_m3id"), "conflicting method flags"),
    (("--method", "vcd", "--avc-gamma", "0.3"), "--avc-gamma applies to avc"),
    (("--avc-alpha", "1.0", "--cd_alpha", "2.0"), "contradicts"),
    (("--avc-beta", "1.5"), r"`beta` \(=1.5\) must be in \(0, 1\]"),
])
def test_bad_method_flags_are_clear_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        parse(*argv)


def test_ask_prints_an_answer_and_the_blind_tokens(tiny_llava_dir, tmp_path, sample_image):
    image = tmp_path / "photo.jpg"
    sample_image.save(image)
    proc = run_cli("ask", "--model-path", str(tiny_llava_dir), "--image", str(image), "--query",
                   "What is in the image?", "--max-new-tokens", "6", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()
    assert "method: avc" in proc.stderr
    assert "blind tokens:" in proc.stderr and "of 576 image tokens" in proc.stderr


@pytest.mark.parametrize("extra, message", [
    (("--image", "missing.jpg"), "image file 'missing.jpg' does not exist"),
    (("--image", __file__, "--method", "avc", "--use_cd"), "conflicting method flags"),
    (("--image", __file__, "--avc-masking", "stripes"), "masking"),
])
def test_ask_errors_are_one_line_without_traceback(tiny_llava_dir, extra, message):
    proc = run_cli("ask", "--model-path", str(tiny_llava_dir), "--query", "q", *extra)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("llava-avc ask: error:") and message in lines[-1]


def test_ask_on_a_path_that_is_not_a_llava_checkpoint(tmp_path, sample_image):
    image = tmp_path / "photo.jpg"
    sample_image.save(image)
    proc = run_cli("ask", "--model-path", str(tmp_path), "--image", str(image), "--query", "q")
    assert proc.returncode == 2 and "config.json is missing" in proc.stderr


def test_ask_heatmap_writes_a_png_of_the_image_size_with_blind_tokens_marked(tiny_llava_dir, tmp_path,
                                                                              sample_image):
    from PIL import Image

    image, picture = tmp_path / "photo.jpg", tmp_path / "blind.png"
    sample_image.save(image)
    proc = run_cli("ask", "--model-path", str(tiny_llava_dir), "--image", str(image), "--query",
                   "What is in the image?", "--max-new-tokens", "2", "--device", "cpu", "--method", "vcd",
                   "--heatmap", str(picture))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"heatmap: {picture}" in proc.stderr and "selected layers" in proc.stderr
    drawn = Image.open(picture).convert("RGB")
    assert drawn.size == sample_image.size
    pixels = drawn.load()
    magenta = sum(1 for x in range(0, drawn.width, 2) for y in range(0, drawn.height, 2)
                  if pixels[x, y][0] > 200 and pixels[x, y][2] > 200 and pixels[x, y][1] < 80)
    assert magenta > 50  # blind cells are outlined in magenta (llava_avc.interfaces.heatmap.OUTLINE)
