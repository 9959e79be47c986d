"""The reversible, idempotent monkey-patch of LLaVA's `LlavaLlamaForCausalLM` (and its loader).

After `patch_llava()`, `model.generate(..., avc=AVCConfig())` (or `vcd=` / `m3id=`) decodes
contrastively; without those keywords the ORIGINAL upstream `generate` runs, untouched. `forward`
is wrapped only to drop the keyword arguments newer transformers pass and LLaVA 1.2.2 rejects
(`cache_position`, `logits_to_keep`, `num_logits_to_keep`); every other call reaches the original.
`llava.model.builder.load_pretrained_model` is wrapped so that `load_4bit` / `load_8bit` take the
fixed quantized path of llava_avc.backends.llava.loading (one BitsAndBytesConfig, mm_projector and lm_head kept
unquantized, fp16 vision tower); unquantized loads reach the original unchanged.

Everything is checked before anything is mutated (peft's `inject_adapter` rule), the original
function objects are kept on the class and restored exactly by `unpatch_llava()`.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from contextlib import contextmanager
from typing import Iterator, Optional


from llava_avc.backends.llava.compat import check_transformers_supported
from llava_avc.backends.llava.upstream import ORIGINALS_ATTR as _ORIGINALS_ATTR
from llava_avc.backends.llava.upstream import forward_without_new_kwargs, with_attention_mask
from llava_avc.errors import UserError

_MARKER_ATTR = "__llava_avc_patch__"
_LOADER_KEY = "llava.model.builder.load_pretrained_model"


class _ProcessDefault:
    """The method applied to generate calls that name none: ONE value for the whole process.

    Process-wide on purpose, not a ContextVar: LLaVA's own web-demo worker (llava.serve.model_worker)
    runs every `model.generate` in a new `threading.Thread`, which starts with an EMPTY context, so a
    context-local default silently ran plain decoding there. A `llava-avc run` process serves one
    script with one method, so one process-wide value is what that launcher needs; per-call choices
    are made by passing `avc=` / `vcd=` / `m3id=` explicitly.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._config = None

    def get(self):
        return self._config

    def swap(self, config):
        """Set `config`; return the previous value (to restore)."""
        with self._lock:
            previous, self._config = self._config, config
            return previous


_DEFAULT_METHOD = _ProcessDefault()
#: How many patched generate calls ran each method ("none" = upstream path), per process.
GENERATE_CALLS: Counter = Counter()
#: Patched generate calls WITH images that ran upstream decoding (no method named, no default).
PLAIN_IMAGE_CALLS: Counter = Counter()


def _llava_class():
    """Import LlavaLlamaForCausalLM directly (llava.model's bare `except: pass` hides errors)."""
    try:
        from llava.model.language_model import llava_llama
    except ImportError as error:
        raise UserError(
            f"cannot import LLaVA ({type(error).__name__}: {error}). Install it with "
            "`bash scripts/install.sh` or `pip install --no-deps llava-torch==1.2.2.post1`; "
            "`llava-avc doctor` shows the details."
        ) from error
    return llava_llama.LlavaLlamaForCausalLM


def _check_patchable(cls) -> None:
    check_transformers_supported()
    from llava import constants

    if not hasattr(constants, "IMAGE_TOKEN_INDEX"):
        raise UserError("this LLaVA has no llava.constants.IMAGE_TOKEN_INDEX; llava-avc needs LLaVA >= 1.1.")
    for name in ("generate", "forward", "prepare_inputs_labels_for_multimodal"):
        if not callable(getattr(cls, name, None)):
            raise UserError(f"LlavaLlamaForCausalLM has no `{name}`; this LLaVA version is not supported.")


def _patched_generate(original):
    @functools.wraps(original)
    def generate(self, inputs=None, images=None, image_sizes=None, **kwargs):
        from llava_avc.decode.methods import pop_method

        config = pop_method(kwargs)  # avc= / vcd= / m3id= or a registered method's keyword
        if config is None and images is not None:
            config = _DEFAULT_METHOD.get()
        GENERATE_CALLS[config.method if config is not None else "none"] += 1
        if config is None and images is not None:
            PLAIN_IMAGE_CALLS["none"] += 1
        if config is None:  # transformers >= 4.38 cannot derive LLaVA's position ids without a mask
            return original(self, inputs, images, image_sizes, **with_attention_mask(inputs, kwargs))
        from llava_avc.backends.llava import contrastive_generate

        return contrastive_generate(self, inputs, images, image_sizes, config, **kwargs)

    setattr(generate, _MARKER_ATTR, True)
    return generate


def _patched_forward(original):
    forward = forward_without_new_kwargs(original)  # keeps the signature HF inspects to validate model kwargs
    setattr(forward, _MARKER_ATTR, True)
    return forward


def _patched_loader(original):
    """LLaVA's `load_pretrained_model`, with 4/8-bit loading routed through llava_avc.backends.llava.loading."""

    @functools.wraps(original)
    def load_pretrained_model(model_path, model_base, model_name, load_8bit=False, load_4bit=False,
                              device_map="auto", device="cuda", use_flash_attn=False, **kwargs):
        from llava_avc.backends.llava.loading import checkpoint_vision_tower, load_quantized

        if not (load_4bit or load_8bit):
            with checkpoint_vision_tower(model_path, model_base):  # copied / moved tiny checkpoints
                return original(model_path, model_base, model_name, load_8bit=False, load_4bit=False,
                                device_map=device_map, device=device, use_flash_attn=use_flash_attn, **kwargs)

        return load_quantized(original, model_path, model_base, model_name, load_4bit=load_4bit,
                              load_8bit=load_8bit, device_map=device_map, device=device,
                              use_flash_attn=use_flash_attn, **kwargs)

    setattr(load_pretrained_model, _MARKER_ATTR, True)
    return load_pretrained_model


def _builder_module():
    from llava.model import builder

    return builder


def is_patched() -> bool:
    """Whether LlavaLlamaForCausalLM currently carries llava-avc's patch."""
    return _ORIGINALS_ATTR in vars(_llava_class())


def patch_llava() -> None:
    """Patch `LlavaLlamaForCausalLM.generate` / `.forward` (class-wide). A second call is a no-op.

    Raises:
        UserError: LLaVA cannot be imported, or the LLaVA/transformers versions are not
            supported; nothing is modified in that case.
    """
    cls = _llava_class()
    if _ORIGINALS_ATTR in vars(cls):
        return
    _check_patchable(cls)
    originals = {"generate": vars(cls)["generate"], "forward": vars(cls)["forward"]}
    replacements = {
        "generate": _patched_generate(originals["generate"]),
        "forward": _patched_forward(originals["forward"]),
    }
    builder = _builder_module()
    loader = vars(builder)["load_pretrained_model"]
    setattr(cls, _ORIGINALS_ATTR, {**originals, _LOADER_KEY: loader})
    for name, function in replacements.items():
        setattr(cls, name, function)
    builder.load_pretrained_model = _patched_loader(loader)


def unpatch_llava() -> None:
    """Restore the exact original function objects. A no-op when not patched."""
    cls = _llava_class()
    originals = vars(cls).get(_ORIGINALS_ATTR)
    if originals is None:
        return
    _builder_module().load_pretrained_model = originals[_LOADER_KEY]
    for name in ("generate", "forward"):
        setattr(cls, name, originals[name])
    delattr(cls, _ORIGINALS_ATTR)


@contextmanager
def patched() -> Iterator[None]:
    """`with llava_avc.patched(): ...` patches for the block and restores on exit (if it patched)."""
    was_patched = is_patched()
    patch_llava()
    try:
        yield
    finally:
        if not was_patched:
            unpatch_llava()


@contextmanager
def default_method(config: Optional[object]) -> Iterator[None]:
    """Apply `config` (AVCConfig / VCDConfig / M3IDConfig, or None) to every patched `generate`
    call with images that names no method itself, for the duration of the block.

    Scope: the whole PROCESS, every thread included (threads started before or inside the block,
    thread pools, LLaVA's web-demo worker that generates in a `threading.Thread`), until the block
    exits and the previous default is restored. It is the run-wide setting of `llava-avc run`; two
    threads wanting different defaults at the same time should pass `avc=` / `vcd=` / `m3id=` to
    each call instead. Calls without images (text-only) keep the upstream path. Requires
    `patch_llava()`.
    """
    if config is not None and not is_patched():
        raise UserError("default_method() needs the patch: call llava_avc.patch_llava() first.")
    previous = _DEFAULT_METHOD.swap(config)
    try:
        yield
    finally:
        _DEFAULT_METHOD.swap(previous)
