"""The distribution: `patches/` ships inside it as `llava_avc.patches`, never as a top-level module."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _build_wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True)
    return next(out.glob("llava_avc-*.whl"))


def test_wheel_holds_patches_inside_the_package_and_no_top_level_patches(tmp_path):
    names = zipfile.ZipFile(_build_wheel(tmp_path)).namelist()
    assert "llava_avc/patches/llava_patch.py" in names and "llava_avc/patches/script_overrides.py" in names
    assert not [name for name in names if name.startswith("patches/")]
    assert "llava_avc/testing/data/tokenizer_corpus_v1.txt" in names
    top_level = [name for name in names if name.endswith("top_level.txt")]
    assert top_level and zipfile.ZipFile(_build_wheel(tmp_path)).read(top_level[0]).split() == [b"llava_avc"]


def test_a_normal_install_imports_the_patches_from_the_installed_package(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(_build_wheel(tmp_path / "wheel"))], check=True, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import llava_avc.patches.llava_patch as p, llava_avc.decode.loop; print(p.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(target / "llava_avc" / "patches" / "llava_patch.py")


def test_a_source_checkout_on_pythonpath_maps_patches_without_installing(tmp_path):
    """As on a lent GPU machine (PYTHONPATH=$PWD, no install): `python -S` skips the editable hook."""
    import sysconfig

    site_packages = sysconfig.get_paths()["purelib"]
    code = (f"import sys; sys.path[:0] = [{str(ROOT)!r}]; sys.path.append({site_packages!r}); "
            "import llava_avc.patches.script_overrides as m; print(m.__file__)")
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(ROOT / "patches" / "script_overrides.py")
