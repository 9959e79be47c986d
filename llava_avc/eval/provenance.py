"""What every run record says about the software that made it: versions and the git commit."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Optional


def distribution_version(distribution: str) -> Optional[str]:
    """The installed version of a distribution, or None."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """python, torch, transformers, llava (llava-torch) and llava-avc versions."""
    import torch
    import transformers

    from llava_avc import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "llava": distribution_version("llava-torch") or distribution_version("llava"),
        "llava-avc": __version__,
    }


def git_sha() -> Optional[str]:
    """The commit of the llava-avc checkout running this, or None (an installed copy, no git)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        result = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else None
