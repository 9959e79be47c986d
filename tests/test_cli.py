"""The `llava-avc` command: ask, method flags (with the official scripts' aliases), errors."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")

from llava_avc import AVCConfig, M3IDConfig, VCDConfig  # noqa: E402
from llava_avc.interfaces.flags import add_method_arguments, config_from_args  # noqa: E402


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


ASK_QUERY = "What is in the image?"
#: Greedy AVC (defaults, 6 new tokens) of the `tiny` checkpoint (seed 0) on ASK_QUERY about the JPEG of
#: sample_image; the same on transformers 4.37.2 and 4.57.6. A change means the pipeline's behaviour changed.
GOLDEN_ASK_TOKEN_IDS = [463, 2218, 2218, 2218, 2218, 2218]


@pytest.fixture(scope="module")
def ask_photo(tmp_path_factory, sample_image):
    image = tmp_path_factory.mktemp("ask") / "photo.jpg"
    sample_image.save(image)
    return image


@pytest.fixture(scope="module")
def ask_cli(tiny_llava_dir, ask_photo):
    """`llava-avc ask` on the tiny checkpoint, default method (avc), 6 new tokens."""
    return run_cli("ask", "--model-path", str(tiny_llava_dir), "--image", str(ask_photo), "--query", ASK_QUERY,
                   "--max-new-tokens", "6", "--device", "cpu")


@pytest.fixture(scope="module")
def ask_in_process(tiny_llava_dir, ask_photo):
    """The same question in this process: answer, new token ids, blind-token records, tokenizer."""
    import torch
    from PIL import Image

    import llava_avc
    from llava_avc.backends.llava.loading import load_model
    from llava_avc.backends.llava.prompts import build_prompt, prepare_images, prompt_ids

    from helpers import LEAD

    tokenizer, model, image_processor, _ = load_model(str(tiny_llava_dir), device="cpu")
    image = Image.open(ask_photo).convert("RGB")
    ids = prompt_ids(tokenizer, build_prompt(ASK_QUERY, "llava_v1", model.config)).unsqueeze(0)
    images = prepare_images([image], image_processor, model)
    torch.manual_seed(42)
    with llava_avc.patched():
        sequences = model.generate(ids, images=images, image_sizes=[image.size], do_sample=False, max_new_tokens=6,
                                   avc=AVCConfig())
    answer = tokenizer.batch_decode(sequences, skip_special_tokens=True)[0].strip()
    records = llava_avc.find_blind_tokens(model, ids, images, [image.size], AVCConfig())
    return argparse.Namespace(answer=answer, token_ids=sequences[0, LEAD:].tolist(), records=records,
                              tokenizer=tokenizer)


def test_ask_prints_the_in_process_answer_and_blind_tokens(ask_cli, ask_in_process):
    assert ask_cli.returncode == 0, ask_cli.stderr[-2000:]
    assert ask_cli.stdout == ask_in_process.answer + "\n"
    assert "method: avc" in ask_cli.stderr
    match = re.search(r"blind tokens: (\d+) of (\d+) image tokens \(span (\d+)\.\.(\d+)\), selected layers (\[.*\])",
                      ask_cli.stderr)
    assert match, ask_cli.stderr[-2000:]
    record = ask_in_process.records[0]
    assert [int(group) for group in match.groups()[:4]] == [record.num_blind, 576, *record.image_span]
    assert match.group(5) == str(record.layers)
    assert 0 < record.num_blind < 576


def test_ask_golden_token_ids_on_the_tiny_checkpoint(ask_cli, ask_in_process):
    assert ask_in_process.token_ids == GOLDEN_ASK_TOKEN_IDS
    golden_answer = ask_in_process.tokenizer.decode(GOLDEN_ASK_TOKEN_IDS, skip_special_tokens=True).strip()
    assert ask_cli.stdout == golden_answer + "\n"


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
    assert proc.returncode == 2 and "is not a checkpoint folder: it has no config.json" in proc.stderr


def test_ask_heatmap_writes_a_png_of_the_image_size_with_blind_tokens_marked(tiny_llava_dir, tmp_path,
                                                                              sample_image):
    from PIL import Image

    image, picture = tmp_path / "photo.jpg", tmp_path / "blind.png"
    sample_image.save(image)
    proc = run_cli("ask", "--model-path", str(tiny_llava_dir), "--image", str(image), "--query",
                   "What is in the image?", "--max-new-tokens", "2", "--device", "cpu", "--method", "vcd",
                   "--heatmap", str(picture))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"heatmap: {picture} (the blind tokens AVC would use for this image; vcd itself uses none)" in proc.stderr
    assert "blind tokens:" not in proc.stderr  # VCD has no blind tokens: no such line for it
    drawn = Image.open(picture).convert("RGB")
    assert drawn.size == sample_image.size
    pixels = drawn.load()
    magenta = sum(1 for x in range(0, drawn.width, 2) for y in range(0, drawn.height, 2)
                  if pixels[x, y][0] > 200 and pixels[x, y][2] > 200 and pixels[x, y][1] < 80)
    assert magenta > 50  # blind cells are outlined in magenta (llava_avc.interfaces.heatmap.OUTLINE)
