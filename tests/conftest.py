"""Shared fixtures: offline tiny LLaVA checkpoints built once per test session (llava_avc.testing.tiny)."""

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

# The decode benchmark's logic lives beside its script (scripts/decode_benchmark.py), not in the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from llava_avc.testing import tiny  # noqa: E402


UNIT_TESTS = Path(__file__).resolve().parent / "unit"

#: A test module of the original-LLaVA backend starts with `pytest.importorskip("llava", ...)`: the hf profile
#: (transformers 5, no llava-torch by design) reports it skipped with that reason.
LLAVA_INSTALLED = importlib.util.find_spec("llava") is not None


def pytest_report_header(config):
    from llava_avc.testing.family_inputs import torchvision_importable

    lines = []
    if not LLAVA_INSTALLED:
        lines.append("llava (llava-torch) is not installed: the original-LLaVA backend's test modules are skipped")
    lines.append("the families' processors: " + ("their real AutoProcessor (torchvision imports)" if torchvision_importable()
                 else "built from tokenizer + image processor (no importable torchvision; hf-vision profile has one)"))
    return lines


def pytest_collection_modifyitems(items):
    """The fast lane (`-m "not slow"`) is tests/unit/ plus the tests marked smoke: every other test is slow."""
    for item in items:
        if UNIT_TESTS not in Path(str(item.fspath)).parents and item.get_closest_marker("smoke") is None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """Path of a ``tiny`` checkpoint (seed 0): LLaVA-1.5 layout, 576 image tokens."""
    root = tmp_path_factory.mktemp("ckpt")
    return tiny.make_tiny_llava(root / "llava-tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_anyres_dir(tmp_path_factory):
    """Path of a ``tiny-anyres`` checkpoint (seed 0): LLaVA-1.6 anyres / spatial_unpad config."""
    return tiny.make_tiny_llava(
        tmp_path_factory.mktemp("ckpt") / "llava-tiny-anyres", preset="tiny-anyres", seed=0
    )


@pytest.fixture(scope="session")
def tiny_lora_dir(tiny_llava_dir, tmp_path_factory):
    """Path of a LoRA checkpoint (seed 1) on top of ``tiny_llava_dir`` (llava_avc.testing.tiny.make_tiny_lora)."""
    return tiny.make_tiny_lora(tmp_path_factory.mktemp("lora") / "llava-tiny-lora", tiny_llava_dir, seed=1)


@pytest.fixture(scope="session")
def tiny_llava(tiny_llava_dir):
    """``(tokenizer, model, image_processor, context_len)`` of the tiny checkpoint, fp32, eval."""
    return tiny.load_tiny(tiny_llava_dir)


@pytest.fixture(scope="session")
def tiny_anyres(tiny_anyres_dir):
    """``(tokenizer, model, image_processor, context_len)`` of the anyres checkpoint, fp32, eval."""
    return tiny.load_tiny(tiny_anyres_dir)


@pytest.fixture(scope="session")
def sample_image():
    """matplotlib's grace_hopper.jpg as an RGB PIL image (512x600); shared: do not modify it."""
    return tiny.sample_image()


def _hf_checkpoint(tmp_path_factory, preset: str):
    tiny_hf = pytest.importorskip("llava_avc.testing.tiny_hf")
    return tiny_hf.make_tiny_llava_hf(tmp_path_factory.mktemp("hf") / f"llava-{preset}-hf", preset=preset, seed=0)


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """A llava-hf ``tiny`` checkpoint (LlavaForConditionalGeneration, 576 image tokens; seed 0)."""
    return _hf_checkpoint(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def tiny_hf_next_dir(tmp_path_factory):
    """A llava-hf ``tiny-anyres`` checkpoint (LlavaNextForConditionalGeneration; seed 0)."""
    return _hf_checkpoint(tmp_path_factory, "tiny-anyres")
