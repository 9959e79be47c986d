"""Checks of a checkpoint before anything loads it, for both backends and the launcher: every
problem found here is one line naming the file (or the hub id), what is wrong and the fix, in
seconds, instead of a library's traceback or a minute of network retries.

- `check_hub_model`: a hub id that is not in the local Hugging Face cache while the hub cannot be
  reached (`HF_HUB_OFFLINE=1`, or no connection to `HF_ENDPOINT` within a few seconds).
- `check_checkpoint_files`: the JSON files of a local checkpoint (and of its `vision_tower/`) parse,
  and every `*.safetensors` file is complete (its header and its size agree: an interrupted
  download is caught here, named, with the advice to download it again).
- `cached_hub_file` / `cached_hub_snapshot`: the one lookup of the local Hugging Face cache (no network),
  for the checks here, the backend of a hub id and the converter's hub-id vision tower.
- `own_vision_tower`: the vision tower a tiny (or any self-contained) checkpoint carries in its own
  `vision_tower/` folder, used when config.json's `mm_vision_tower` names a path that no longer
  exists or another copy's tower (a copied or moved checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlparse

from ..errors import UserError

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
DEFAULT_ENDPOINT = "https://huggingface.co"
#: Seconds allowed to open a connection to the hub before it counts as unreachable.
HUB_TIMEOUT_S = 3.0
#: Folder of a checkpoint that holds its own CLIP tower (the tiny checkpoints' layout).
VISION_SUBDIR = "vision_tower"
_TRUE = ("1", "on", "yes", "true")


class ModelNotAvailableError(UserError):
    """A checkpoint that cannot be loaded here, found before loading (one line with the fix)."""


def is_hub_id(model_path: str) -> bool:
    """`owner/name` that is not an existing local path."""
    return bool(HUB_ID.fullmatch(str(model_path))) and not Path(str(model_path)).expanduser().exists()


def hub_offline_reason() -> Optional[str]:
    """"HF_HUB_OFFLINE=1" (or TRANSFORMERS_OFFLINE) when the environment forbids the network, else None."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"{name}={os.environ[name]}"
    return None


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip() or DEFAULT_ENDPOINT


def _proxy_for(parsed) -> Optional[str]:
    """The proxy the hub library's requests would go through for this URL (HTTPS_PROXY, HTTP_PROXY,
    ALL_PROXY, honouring NO_PROXY), or None."""
    import urllib.request

    proxies = urllib.request.getproxies()
    proxy = proxies.get(parsed.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parsed.hostname):
        return None
    return proxy


def hub_unreachable_reason(timeout: float = HUB_TIMEOUT_S) -> Optional[str]:
    """Why the hub cannot be reached (no TCP connection to HF_ENDPOINT, or to the proxy the environment
    routes it through, within `timeout` s), or None."""
    endpoint = hub_endpoint()
    parsed = urlparse(endpoint)
    if not parsed.hostname:
        return f"HF_ENDPOINT (={endpoint!r}) is not a URL"
    proxy = _proxy_for(parsed)
    target = urlparse(proxy if "://" in proxy else f"http://{proxy}") if proxy else parsed
    host = target.hostname
    if not host:
        return f"the proxy setting (={proxy!r}) is not a URL"
    port = target.port or (443 if target.scheme == "https" else 80)
    outcome: dict = {}

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome["ok"] = True
        except OSError as error:
            outcome["error"] = error.strerror or str(error) or type(error).__name__

    worker = threading.Thread(target=connect, daemon=True)  # name resolution ignores the socket timeout
    worker.start()
    worker.join(timeout + 0.5)
    if outcome.get("ok"):
        return None
    via = f" through the proxy {proxy}" if proxy else ""
    return f"no connection to {endpoint}{via}: {outcome.get('error', f'no answer within {timeout:.0f} s')}"


def cached_hub_file(repo_id: str, filename: str = "config.json") -> Optional[str]:
    """The local cache's copy of one file of a hub repository (no network), or None. The cache is
    HF_HUB_CACHE as the environment says now (the hub library reads it once, when it is imported)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    except ValueError:  # HFValidationError: an id the hub library rejects is simply not cached
        return None
    return found if isinstance(found, str) else None


def cached_hub_snapshot(repo_id: str) -> Optional[Path]:
    """The local cache's snapshot folder of a hub repository (the one holding its cached config.json;
    one folder per commit), or None when it is not cached. No network."""
    cached = cached_hub_file(repo_id)
    return Path(cached).parent if cached else None


def check_hub_model(model_path: str, what: str = "--model-path") -> None:
    """Refuse, in seconds, a hub id that is not cached when the hub cannot be reached.

    Local paths, cached ids and ids the hub can be asked about pass.

    Raises:
        ModelNotAvailableError: the id, that it is not in the local cache, why the hub is out of
            reach, and how to download it or pass a local directory.
    """
    if not is_hub_id(model_path) or cached_hub_file(model_path) is not None:
        return
    reason = hub_offline_reason() or hub_unreachable_reason()
    if reason is None:
        return
    raise ModelNotAvailableError(
        f"{what} {model_path!r} is not in the local Hugging Face cache and the hub cannot be reached ({reason}); "
        f"download it once where there is network (hf download {model_path}), or pass a local "
        "checkpoint directory.")


def local_directory(model_path: str) -> Optional[Path]:
    """The directory whose files make the checkpoint: a local directory, or a cached hub snapshot."""
    path = Path(str(model_path)).expanduser()
    if path.is_dir():
        return path
    if HUB_ID.fullmatch(str(model_path)):
        return cached_hub_snapshot(str(model_path))
    return None


def _damaged(path: Path, detail: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(f"{path} is damaged ({detail}), probably by an interrupted download or copy; "
                                  "delete it and download (or copy) the checkpoint again.")


def check_json_file(path: Path) -> dict:
    """Parse one JSON file of a checkpoint; a broken one is an error naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise _damaged(Path(path), f"not UTF-8 text: {error.reason} at byte {error.start}") from None
    if not text.strip():
        raise _damaged(Path(path), "an empty JSON file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise _damaged(Path(path), f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") \
            from None


def check_safetensors_file(path: Path) -> None:
    """The header of a safetensors file parses and the file holds every byte the header promises."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise _damaged(path, f"{size} bytes, shorter than a safetensors header")
        length = int.from_bytes(head, "little")
        if length > size - 8:
            raise _damaged(path, f"its header claims {length} bytes but the file has {size}: truncated")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            raise _damaged(path, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    try:
        end = max((int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"),
                  default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise _damaged(path, "its header lists a tensor without data_offsets") from None
    expected = 8 + length + end
    if size < expected:
        raise _damaged(path, f"{size} bytes of the {expected} its header describes: truncated")


def _check_index(index_file: Path, data: dict) -> None:
    shards = sorted(set((data.get("weight_map") or {}).values())) if isinstance(data, dict) else []
    missing = [name for name in shards if not (index_file.parent / name).is_file()]
    if missing:
        raise ModelNotAvailableError(
            f"{index_file} names {len(missing)} weight file(s) that are not there (first: {missing[0]}); the "
            "download is incomplete: download the checkpoint again.")


def check_checkpoint_files(directory) -> None:
    """Every JSON file and every safetensors file of a checkpoint directory (and of its own
    `vision_tower/` folder) is readable and complete; the first problem is an error naming the file.

    Raises:
        ModelNotAvailableError: a damaged or missing file, with the fix.
    """
    directory = Path(directory)
    for folder in (directory, directory / VISION_SUBDIR):
        if not folder.is_dir():
            continue
        for file in sorted(folder.glob("*.json")):
            data = check_json_file(file)
            if file.name.endswith(".index.json"):
                _check_index(file, data)
        for file in sorted(folder.glob("*.safetensors")):
            check_safetensors_file(file)


def preflight(model_path: str, model_base: Optional[str] = None, what: str = "--model-path") -> None:
    """The checks of `model_path` (and `model_base`) that need no model library: the hub check,
    then the files of the local directory or cached snapshot. `what` names `model_path` in messages."""
    for path, what in ((model_path, what), (model_base, "--model-base")):
        if path is None:
            continue
        if not Path(str(path)).expanduser().exists() and not HUB_ID.fullmatch(str(path)):
            raise ModelNotAvailableError(f"{what} {str(path)!r} does not exist (nor is it a hub id such as "
                                         "liuhaotian/llava-v1.5-7b); check the path.")
        check_hub_model(path, what)
        directory = local_directory(path)
        if directory is not None:
            check_checkpoint_files(directory)


def own_vision_tower(recorded: Optional[str], *checkpoints) -> Optional[str]:
    """The vision tower folder to load instead of `recorded` (config.json's `mm_vision_tower`), or
    None to keep it.

    A checkpoint that carries its tower in its own `vision_tower/` folder (the tiny checkpoints)
    records that folder's absolute path, which breaks when the checkpoint is moved (LLaVA: "Unknown
    vision tower") and silently reads the original's tower when it is copied. The folder of the first
    of `checkpoints` (the checkpoint, then a LoRA's base) that has one is used when `recorded` is a
    relative path resolving inside it, does not exist, or is another checkpoint's `vision_tower/`.
    """
    if not recorded:
        return None
    recorded_path = Path(str(recorded)).expanduser()
    for checkpoint in checkpoints:
        if checkpoint is None or not Path(str(checkpoint)).expanduser().is_dir():
            continue
        root = Path(str(checkpoint)).expanduser().resolve()
        own = root / VISION_SUBDIR
        if not (own / "config.json").is_file():
            continue
        if not recorded_path.is_absolute() and (root / recorded_path / "config.json").is_file():
            return str((root / recorded_path).resolve())
        if recorded_path.is_absolute() and recorded_path.exists() and recorded_path.resolve() == own:
            return None
        if not recorded_path.exists() or recorded_path.name == VISION_SUBDIR:
            return str(own)
    return None


#: transformers' notes while a checkpoint loads that say nothing the user can act on: LLaVA's loader
#: passes `torch_dtype` (deprecated from transformers 4.56), and 4.5x announces which image processor
#: class it picked. (logger, message fragment)
LOADING_NOTES = (
    ("transformers.configuration_utils", "`torch_dtype` is deprecated"),
    ("transformers.modeling_utils", "`torch_dtype` is deprecated"),
    ("transformers.processing_utils", "Using a slow image processor as `use_fast` is unset"),
    ("transformers.models.auto.image_processing_auto", "Using a slow image processor as `use_fast` is unset"),
)


class _DropNote(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record) -> bool:
        return self.fragment not in record.getMessage()


@contextmanager
def quiet_loading_notes() -> Iterator[None]:
    """Drop `LOADING_NOTES` from transformers' log while the block loads a checkpoint (every other
    warning, e.g. weights that were not initialised, still shows)."""
    installed = [(logging.getLogger(name), _DropNote(fragment)) for name, fragment in LOADING_NOTES]
    for logger, note in installed:
        logger.addFilter(note)
    try:
        yield
    finally:
        for logger, note in installed:
            logger.removeFilter(note)
