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


#: Files whose identity makes the weights' fingerprint.
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "config.json")


def weights_fingerprint(model_path: str) -> Optional[str]:
    """A cheap fingerprint of the weights a path names: the names, sizes and modification times of
    its weight and config files (a checkpoint rebuilt at the same path gets a new one). For a hub id,
    the snapshot directory of its local cache (one per commit), or None when it is not cached."""
    import hashlib

    path = Path(model_path).expanduser()
    if not path.is_dir():
        return _hub_snapshot(model_path)
    digest = hashlib.sha256()
    for file in sorted({found for pattern in _WEIGHT_PATTERNS for found in path.rglob(pattern)}):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}\x1f{stat.st_size}\x1f{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _hub_snapshot(model_id: str) -> Optional[str]:
    """The name of the cached snapshot (its commit) of a hub id, or None when it is not cached."""
    from ..backends.checkpoints import cached_hub_snapshot

    snapshot = cached_hub_snapshot(model_id)
    return snapshot.name if snapshot is not None else None
