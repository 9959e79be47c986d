"""The doctor runs the methods, and says FAIL when transformers breaks a contract llava-avc relies on;
the methods then fail with one line (the installed version, the newest tested one, the fix), never an
internal KeyError or "model_kwargs are not used". The breaks are made on purpose, as a future release
might make them (tests/break_transformers.py); everything else is the real transformers and llava-torch
of the profile."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from llava_avc.backends.versions import HF_OLDEST, NEWEST_TESTED, version_tuple

HF_BACKEND = version_tuple(transformers.__version__) >= HF_OLDEST
LLAVA = importlib.util.find_spec("llava") is not None
BREAK = Path(__file__).with_name("break_transformers.py")
NEWER = "5.99.0"
needs_hf = pytest.mark.skipif(not HF_BACKEND, reason=f"transformers {transformers.__version__} has no llava-hf backend")
needs_llava = pytest.mark.skipif(not LLAVA, reason="the original-LLaVA backend (llava-torch) is not installed here")


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "llava_avc", *map(str, argv)], capture_output=True, text=True,
                          env=_env(), timeout=600)


def run_broken(which: str, *argv, pretend: str | None = None):
    options = [which] + (["--pretend-version", pretend] if pretend else [])
    return subprocess.run([sys.executable, str(BREAK), *options, "--", *map(str, argv)], capture_output=True,
                          text=True, env=_env(), timeout=600)


def _checks(stdout: str) -> dict:
    return {check["name"]: check for check in json.loads(stdout)["checks"]}


def doctor_fail_line(proc, name: str) -> str:
    """The doctor's `[FAIL] <name>` line, after checking it failed the whole environment (exit 1)."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.split("]", 1)[-1].split()[:1] == [name])
    assert line.lstrip().startswith(f"[FAIL] {name}")
    assert proc.stdout.strip().splitlines()[-1].startswith(f"doctor: unhealthy: {name} ")
    return line


def test_the_doctor_runs_avc_vcd_and_m3id_on_every_backend_here():
    proc = run_cli("doctor", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = _checks(proc.stdout)
    for backend, available in (("llava", LLAVA), ("hf", HF_BACKEND)):
        check = checks.get(f"methods-{backend}", {"ok": False})
        assert check["ok"] is available, check
        if available:  # what it ran, on what, how long, with which versions
            assert check["detail"].startswith("avc, vcd, m3id x 4 greedy tokens on in-memory random ")
            assert "each at zero strength equals the model's own greedy generate" in check["detail"]
            assert f"transformers {transformers.__version__}" in check["detail"]
            assert " s; " in check["detail"]
    if HF_BACKEND:
        assert "LlavaForConditionalGeneration" in checks["methods-hf"]["detail"]
        assert "LlavaNextForConditionalGeneration" in checks["methods-hf"]["detail"]
    tested = checks["transformers-tested"]
    assert tested["ok"] and transformers.__version__ in tested["detail"]


@needs_hf
def test_a_renamed_generate_kwarg_makes_the_doctor_say_fail():
    line = doctor_fail_line(run_broken("rename-cache-kwarg", "doctor"), "methods-hf")
    assert "generate passed a custom decoding method model_kwargs that llava-avc does not know: ['kv_store']" in line
    assert f"transformers {transformers.__version__}" in line


@needs_hf
def test_on_a_newer_release_the_doctor_names_both_versions_and_the_fix():
    line = doctor_fail_line(run_broken("rename-cache-kwarg", "doctor", pretend=NEWER), "methods-hf")
    assert (f"UntestedTransformersError: transformers {NEWER} is newer than llava-avc was tested with (up to "
            f"{NEWEST_TESTED})") in line
    assert f"pip install 'transformers<={NEWEST_TESTED}'" in line


@needs_hf
def test_on_a_newer_release_that_breaks_it_ask_fails_with_one_line(tiny_hf_dir, sample_image, tmp_path):
    image = tmp_path / "image.png"
    sample_image.save(image)
    proc = run_broken("rename-cache-kwarg", "ask", "--model-path", tiny_hf_dir, "--image", image, "--query",
                      "Is there a dog?", "--max-new-tokens", 2, pretend=NEWER)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"llava-avc ask: error: transformers {NEWER} is newer than llava-avc was tested with (up to {NEWEST_TESTED}): "
        "generate passed a custom decoding method model_kwargs that llava-avc does not know: ['kv_store']; install "
        f"the newest tested release: pip install 'transformers<={NEWEST_TESTED}'"]
    assert proc.stdout == ""


@needs_hf
def test_on_a_newer_release_that_still_keeps_the_contract_the_methods_work(tiny_hf_dir, sample_image, tmp_path):
    """An untested release is not refused: when nothing llava-avc relies on changed, the methods run."""
    image = tmp_path / "image.png"
    sample_image.save(image)
    proc = subprocess.run([sys.executable, "-c", (
        "import sys; from llava_avc.backends import transformers_compat as c; c.INSTALLED = sys.argv[1]; "
        "from llava_avc.interfaces.cli import main; sys.exit(main(sys.argv[2:]))"), NEWER, "ask", "--model-path",
        str(tiny_hf_dir), "--image", str(image), "--query", "Is there a dog?", "--max-new-tokens", "2"],
        capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "blind tokens:" in proc.stderr and proc.stdout.strip()


@needs_llava
def test_a_changed_private_generation_helper_makes_the_doctor_say_fail_for_the_original_backend():
    line = doctor_fail_line(run_broken("stopping-criteria", "doctor"), "methods-llava")
    assert "TypeError: " in line and "missing 1 required positional argument: 'criteria_config'" in line
