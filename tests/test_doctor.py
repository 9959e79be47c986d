"""Tests for ``llava-avc doctor`` (CPU only; the doctor itself runs in a subprocess)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("llava", reason="a test of the original-LLaVA backend: needs llava-torch (the hf profile has none)")
import transformers  # noqa: E402

from llava_avc.interfaces.doctor import Check, classify_transformers, is_healthy, unhealthy_reason  # noqa: E402

LLAVA_LLAMA = "llava.model.language_model.llava_llama"
MISSING = "llava_avc_test_missing_module_xyz"


def _installed_llava_dir():
    import llava

    return os.path.dirname(llava.__file__)


def run_doctor(*args, pythonpath=None):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run(
        [sys.executable, "-m", "llava_avc", "doctor", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture(scope="module")
def healthy_run():
    return run_doctor()


def test_healthy_environment(healthy_run):
    import llava

    proc = healthy_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "torch" in out
    assert "transformers" in out and transformers.__version__ in out
    assert llava.__file__ in out
    assert out.strip().splitlines()[-1].startswith("doctor: healthy")


def test_broken_llava_reports_real_error(tmp_path):
    copy = tmp_path / "llava"
    shutil.copytree(_installed_llava_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "model" / "language_model" / "llava_llama.py"
    target.write_text(f"import {MISSING}\n" + target.read_text())

    proc = run_doctor(pythonpath=tmp_path)
    out = proc.stdout
    assert proc.returncode != 0, out + proc.stderr
    assert "ModuleNotFoundError" in out and MISSING in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("doctor: unhealthy: ")
    assert LLAVA_LLAMA in last and "ModuleNotFoundError" in last and MISSING in last
    assert str(copy / "__init__.py") in out  # the llava path reported is the tmp copy
    assert f"{target}:1" in out  # last traceback frame


def test_json_output():
    proc = run_doctor("--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["healthy"] is True
    by_name = {c["name"]: c for c in payload["checks"]}
    assert by_name[LLAVA_LLAMA]["ok"] is True
    assert set(by_name[LLAVA_LLAMA]) == {"name", "ok", "detail", "fatal"}
    assert by_name["transformers"]["detail"] == transformers.__version__


@pytest.mark.parametrize(
    "version, level",
    [
        ("4.37.2", "ok"),
        ("4.37.0", "ok"),
        ("4.36.2", "fatal"),
        ("4.58.0", "fatal"),
        ("4.38.0", "warn"),
        ("4.45.0", "warn"),
        ("4.57.1", "warn"),
        ("4.38.0.dev0", "warn"),
        ("5.0.0", "fatal"),
        ("5.0.0rc1", "fatal"),
        ("4.35.0", "fatal"),
        ("garbage", "fatal"),
    ],
)
def test_classify_transformers(version, level):
    verdict = classify_transformers(version)
    assert verdict.level == level
    if level == "warn" and version.startswith("4.4"):
        assert "compatibility patch" in verdict.message and "cache_position" in verdict.message
    if level == "fatal":
        assert "4.37.2" in verdict.message and "4.57" in verdict.message


def test_health_and_reason_are_one_line():
    checks = [
        Check("a", True, "fine", True),
        Check("b", False, "optional thing missing", False),
        Check("c", False, "failed to import: ValueError: bad\nsecond line", True),
    ]
    assert not is_healthy(checks)
    reason = unhealthy_reason(checks)
    assert "\n" not in reason and reason == "doctor: unhealthy: c failed to import: ValueError: bad second line"
    assert is_healthy(checks[:2])
