"""What `llava-avc doctor` checks about the original LLaVA codebase: where `llava` comes from, and
the real error behind `llava/model/__init__.py`'s bare `except: pass` when LLaVA's model does not
import. Importing this module never imports `llava` itself."""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import importlib.util
import json
import os
import sys
import types
from typing import List, Optional, Tuple

LLAVA_LLAMA = "llava.model.language_model.llava_llama"


def one_line_error(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def error_at(exc: BaseException) -> str:
    """``Type: message (at file:line)`` of the innermost frame outside importlib's frozen code."""
    tb, found = exc.__traceback__, None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.startswith("<frozen"):
            found = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return f"{one_line_error(exc)} (at {found})" if found else one_line_error(exc)


def _dist_version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _llava_distribution(origin: str) -> str:
    """Which installed distribution (if any) provides the llava package at ``origin``."""
    real = os.path.realpath(origin)
    for dist_name in ("llava-torch", "llava"):
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            continue
        if os.path.realpath(str(dist.locate_file("llava/__init__.py"))) == real:
            return f"{dist_name} {dist.version}"
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        src = direct.get("url", "").replace("file://", "", 1)
        if direct.get("dir_info", {}).get("editable") and src and real.startswith(os.path.realpath(src) + os.sep):
            return f"{dist_name} {dist.version} (editable install of {src})"
    installed = _dist_version("llava-torch")
    other = f"llava-torch {installed} is installed elsewhere" if installed else "llava-torch is not installed"
    return f"not from the llava-torch distribution (clone / PYTHONPATH?); {other}"


def llava_package_status() -> Tuple[bool, str]:
    """(ok, detail): whether `llava` is importable, from which distribution and path."""
    spec = importlib.util.find_spec("llava")
    if spec is None or not spec.origin:
        return False, "not importable (install llava-torch with --no-deps)"
    return True, f"{_llava_distribution(spec.origin)}; from {spec.origin}"


def _stub_parents() -> List[str]:
    """Put bare ``llava`` / ``llava.model`` packages (``__init__`` NOT run) in sys.modules."""
    added = []
    for name in ("llava", "llava.model"):
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            break
        module = types.ModuleType(name)
        module.__path__ = list(spec.submodule_search_locations or [])
        module.__spec__ = spec
        module.__file__ = spec.origin
        sys.modules[name] = module
        added.append(name)
    return added


def _real_llava_llama_error() -> Optional[BaseException]:
    """Re-import llava_llama with llava's ``__init__`` files bypassed; return its own error.

    ``llava/__init__.py`` does ``from .model import LlavaLlamaForCausalLM`` and
    ``llava/model/__init__.py`` swallows every error with a bare ``except: pass``, so a plain
    import only shows a secondary ImportError/NameError.
    """
    _forget_llava()  # the failed plain import may have left half-initialised modules behind
    try:
        _stub_parents()
        importlib.import_module(LLAVA_LLAMA)
        return None
    except Exception as exc:  # noqa: BLE001
        return exc
    finally:
        _forget_llava()  # never leave the stub packages behind


def _forget_llava() -> None:
    for name in [k for k in sys.modules if k == "llava" or k.startswith("llava.")]:
        del sys.modules[name]


def llava_llama_status() -> Tuple[bool, str]:
    """(ok, detail): whether LLaVA's model module imports, with the REAL error when it does not."""
    try:
        importlib.import_module(LLAVA_LLAMA)
        return True, "imports"
    except Exception as exc:  # noqa: BLE001 - reported, never raised: the doctor must not crash
        first = exc
    real = _real_llava_llama_error()
    if real is None:
        # llava_llama itself is fine; the failure is in llava/__init__ or a sibling module.
        return False, f"failed to import: {error_at(first)}"
    detail = f"failed to import: {error_at(real)}"
    if one_line_error(real) != one_line_error(first):
        detail += f" [a plain import only shows: {one_line_error(first)}]"
    return False, detail


