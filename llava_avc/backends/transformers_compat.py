"""The one place that knows transformers' generation internals, for both backends.

Every fact below was read from the named transformers release's source and is checked by the test
suite on each tested release (`TESTED_TRANSFORMERS`). Public, documented surfaces come first
(`generate(custom_generate=callable)`, the `Cache` classes' `update` / `layers`, `from_pretrained`
arguments); each private surface that cannot be avoided is wrapped by exactly one function here.

Version facts handled here:

* Cache argument name (`cache_argument`, `output_cache`, `hook_cache`): up to 5.23 models take and
  return `past_key_values` (the attention modules' kwarg was `past_key_value` up to 4.55); 5.25
  renamed it `cache` everywhere (models' `forward`, their outputs, generate's `model_kwargs`), with a
  deprecation shim for `past_key_values` until 5.40 (models) / 6.0 (generate).
* Cache layer API (`cache_layers`, `layer_keys`, ...): up to 4.55 `DynamicCache` keeps `key_cache` /
  `value_cache` lists; 4.56+ keeps `layers[i].keys` / `.values`.
* What `generate` hands to a `custom_generate` callable (`decoding_kwargs`): 4.57 - 5.25 call it in
  place of `_sample` as `fn(model, input_ids, logits_processor, stopping_criteria, generation_config,
  **callable_params, **model_kwargs)`; `model_kwargs` hold the attention mask (5.25: None when the
  prompt has no padding), position ids, an empty cache (`past_key_values` up to 5.23, `cache` in
  5.25), `use_cache`, `logits_to_keep`, `cache_position` (4.x) and, in 5.x, precomputed image
  features under `mm_encoder_outputs` when the pixels were not taken by the callable.
* Loading on the meta device (`load_on_meta`): 5.25 kernelizes every model at load time when the
  `kernels` package is installed (a dependency of 5.25), and kernelizing rejects the meta device;
  `use_kernels=False` turns it off (a `from_pretrained` argument of every release the llava-hf backend
  supports, checked on 4.57.6).
* The generation front end of the original backend (`prepare_special_tokens`, `settle_generated_length`,
  `logits_processors`, `logits_warper`, `stopping_criteria`): private `GenerationMixin` methods of
  4.37 - 4.57, the range that backend supports.

On a transformers release newer than `NEWEST_TESTED`, a broken assumption raises
`UntestedTransformersError`: one line with the installed version, the newest tested one and the fix.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from typing import Iterator, Optional, Sequence

import torch
import transformers
from transformers import DynamicCache

from ..errors import UserError
from .versions import HF_OLDEST, NEWEST_TESTED, is_newer_than_tested, version_tuple

INSTALLED = transformers.__version__
VERSION = version_tuple(INSTALLED)


class UntestedTransformersError(UserError, RuntimeError):
    """transformers changed something llava-avc relies on, in a release newer than it was tested with."""


def contract_broken(what: str) -> Exception:
    """The error for an assumption about transformers that does not hold.

    On a release newer than `NEWEST_TESTED` it is the user's environment that llava-avc does not know yet:
    one line naming both versions and the fix. On a tested release it is a bug of llava-avc.
    """
    if is_newer_than_tested(INSTALLED):
        return UntestedTransformersError(
            f"transformers {INSTALLED} is newer than llava-avc was tested with (up to {NEWEST_TESTED}): {what}; "
            f"install the newest tested release: pip install 'transformers<={NEWEST_TESTED}'"
        )
    return RuntimeError(f"transformers {INSTALLED}: {what}; llava-avc is tested with this release, so this is a "
                        "bug of llava-avc: please report it")


def _raised_inside_transformers(exc: BaseException) -> bool:
    """Whether the innermost frame of the exception's traceback is transformers' own code."""
    package = os.path.dirname(transformers.__file__) + os.sep
    tb, innermost = exc.__traceback__, None
    while tb is not None:
        innermost = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return innermost is not None and innermost.startswith(package)


@contextlib.contextmanager
def untested_guard() -> Iterator[None]:
    """Around a call that reaches into transformers: on a release newer than `NEWEST_TESTED`, an error
    raised inside transformers, or a KeyError / AttributeError / TypeError anywhere (the shapes of a
    changed internal), becomes one UntestedTransformersError line naming both versions and the fix.
    On a tested release nothing is translated: an error there is a bug, with its traceback."""
    try:
        yield
    except UntestedTransformersError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised, translated only on an untested release
        if not is_newer_than_tested(INSTALLED):
            raise
        if not (_raised_inside_transformers(exc) or isinstance(exc, (KeyError, AttributeError, TypeError))):
            raise
        cause = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise contract_broken(f"a method failed inside transformers with {cause}") from exc


def guarded(function):
    """`function` run under `untested_guard` (a decorator for the backends' entry points)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with untested_guard():
            return function(*args, **kwargs)

    return wrapper


# ------------------------------------------------------------------------------------------ caches

#: Names a cache goes by in forward kwargs, outputs and generate's model_kwargs, newest first:
#: `cache` (5.25), `past_key_values` (4.36 - 5.23; 5.25 still accepts it, deprecated),
#: `past_key_value` (the attention modules' kwarg up to 4.55).
CACHE_NAMES = ("cache", "past_key_values", "past_key_value")


def new_cache() -> DynamicCache:
    """An empty KV cache for one branch (or for stacked branches)."""
    return DynamicCache()


def cache_argument(module) -> str:
    """The keyword `module.forward` takes its KV cache by: "cache" (5.25) or "past_key_values"."""
    return _cache_argument_of(type(module))


@functools.lru_cache(maxsize=None)
def _cache_argument_of(module_class) -> str:
    """Read once per class: the forward of every decoding step asks."""
    parameters = inspect.signature(module_class.forward).parameters
    for name in CACHE_NAMES[:2]:
        if name in parameters:
            return name
    raise contract_broken(f"{module_class.__name__}.forward takes no KV cache argument (llava-avc looked for "
                          f"{', '.join(CACHE_NAMES[:2])})")


def output_cache(outputs):
    """The cache a model's forward returned: `outputs.cache` (5.25) or `outputs.past_key_values`."""
    for name in CACHE_NAMES[:2]:
        value = outputs.get(name) if hasattr(outputs, "get") else getattr(outputs, name, None)
        if value is not None:
            return value
    raise contract_broken(f"{type(outputs).__name__} holds no KV cache (llava-avc looked for "
                          f"{', '.join(CACHE_NAMES[:2])})")


def cache_field(output_class) -> str:
    """The field of a generate/forward output dataclass that holds the cache: "cache" (5.25) or
    "past_key_values" (5.25 still reads the old name through a deprecated property)."""
    fields = getattr(output_class, "__dataclass_fields__", {})
    for name in CACHE_NAMES[:2]:
        if name in fields:
            return name
    raise contract_broken(f"{output_class.__name__} has no cache field (llava-avc looked for "
                          f"{', '.join(CACHE_NAMES[:2])})")


def hook_cache(kwargs: dict):
    """The cache an attention module received (a forward hook's kwargs), or None when it got none."""
    for name in CACHE_NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(keys (B, H_kv, L, D), values (B, H_kv, L, D)) per layer] of a DynamicCache.

    transformers <= 4.55 keeps `key_cache` / `value_cache` lists; 4.56+ keeps `layers` objects.
    """
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    raise contract_broken(f"{type(cache).__name__} keeps its tensors in neither `layers` nor `key_cache`")


def layer_keys(cache, layer_idx: int) -> torch.Tensor:
    """(B, H_kv, L, D) RoPE-rotated keys cached for one layer."""
    return cache_layers(cache)[layer_idx][0]


def cache_from_layers(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A DynamicCache holding the given (keys, values) per layer (through the public `update`)."""
    cache = DynamicCache()
    for layer, (keys, values) in enumerate(layers):
        cache.update(keys, values, layer)
    return cache


def stack_caches(first, second) -> DynamicCache:
    """A NEW cache whose rows are `first`'s rows then `second`'s rows (batch concatenation).

    Both caches must cover the same number of positions. The inputs are CONSUMED: each layer of
    theirs is released as soon as it is copied, so the peak memory of the join stays near one
    stacked cache instead of two (the prompt cache of LLaVA-1.5-7B is ~0.3 GiB per branch in fp16).
    """
    stacked = DynamicCache()
    for layer in range(len(cache_layers(first))):
        (k1, v1), (k2, v2) = cache_layers(first)[layer], cache_layers(second)[layer]
        stacked.update(torch.cat([k1, k2], 0), torch.cat([v1, v2], 0), layer)
        del k1, v1, k2, v2
        _release_layer(first, layer)
        _release_layer(second, layer)
    return stacked


def _release_layer(cache, layer: int) -> None:
    """Drop one layer's tensors from a cache that is no longer used (see stack_caches)."""
    empty = torch.empty(0)
    if hasattr(cache, "layers"):
        cache.layers[layer].keys = cache.layers[layer].values = empty
    else:
        cache.key_cache[layer] = cache.value_cache[layer] = empty


def cache_rows(cache, rows: Sequence[int] | slice) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The keys/values of some batch rows of a cache (copies), e.g. the original branch's rows."""
    return [(k[rows].clone(), v[rows].clone()) for k, v in cache_layers(cache)]


# ------------------------------------------------------------------- custom_generate (llava-hf)

#: model_kwargs `generate` hands a custom decoding method that the contrastive loop replaces with its
#: own state: the cache (under every name it has had), `use_cache`, `logits_to_keep`, `cache_position`
#: (4.x) and `position_ids` (the loop derives positions from its own left-aligned mask).
LOOP_OWNS = frozenset(CACHE_NAMES[:2] + ("use_cache", "logits_to_keep", "cache_position", "position_ids"))


def decoding_kwargs(model_kwargs: dict) -> tuple[Optional[torch.Tensor], Optional[dict]]:
    """(attention_mask, mm_encoder_outputs) out of the model_kwargs `generate` handed a custom decoding
    method; everything the loop owns is dropped.

    Raises:
        UntestedTransformersError / RuntimeError: a model kwarg this contract does not know (see
            `contract_broken`): a newer transformers passing something new, or a bug of ours.
    """
    model_kwargs = dict(model_kwargs)
    attention_mask = model_kwargs.pop("attention_mask", None)
    encoder_outputs = model_kwargs.pop("mm_encoder_outputs", None)
    unknown = sorted(set(model_kwargs) - LOOP_OWNS)
    if unknown:
        raise contract_broken(f"generate passed a custom decoding method model_kwargs that llava-avc does not "
                              f"know: {unknown}")
    return attention_mask, encoder_outputs


# ---------------------------------------------------------------------------------------- loading


def no_hub_kernels() -> dict:
    """`from_pretrained` kwargs that keep hub kernels out of a load: 5.25 kernelizes by default when the
    `kernels` package is installed (and kernelizing rejects the meta device); 4.57.6 and 5.23 never did
    unless asked, and accept `use_kernels=False` (checked); older releases are not passed it."""
    return {"use_kernels": False} if VERSION >= HF_OLDEST else {}


def load_on_meta(model_class, path: str):
    """`model_class.from_pretrained(path)` on the meta device (no tensor is read): (model, loading info)."""
    return model_class.from_pretrained(str(path), device_map="meta", output_loading_info=True, **no_hub_kernels())


# -------------------------------------------------- generation front end (original backend, 4.37 - 4.57)


def generate_returns_leading_bos() -> bool:
    """Whether HF `generate(inputs_embeds=...)` starts its output with a BOS column.

    transformers <= 4.37 initialises `input_ids` with one BOS token per row when only
    `inputs_embeds` is given, so upstream LLaVA's `generate` returns `[BOS, new tokens...]`;
    from 4.38 on it starts from an empty tensor and returns only the new tokens.
    """
    return VERSION < (4, 38, 0)


def needs_explicit_attention_mask() -> bool:
    """Upstream LLaVA generate without an attention_mask fails from transformers 4.38 on
    ('NoneType' object has no attribute 'shape' / 'new_ones'); 4.37 builds one itself."""
    return VERSION >= (4, 38, 0)


def prepare_special_tokens(model, config, has_attention_mask: bool, device) -> None:
    """`GenerationMixin._prepare_special_tokens` (4.41+: the tensors the processors read); none before."""
    if hasattr(model, "_prepare_special_tokens"):
        model._prepare_special_tokens(config, has_attention_mask, device=device)


def settle_generated_length(model, config, has_default_max_length: bool, has_default_min_length: bool,
                            initial_length: int, prompt_shape: tuple) -> bool:
    """`GenerationMixin._prepare_generated_length` for a generate from `inputs_embeds` of `prompt_shape`
    (4.38+, where the prompt embeddings count in max_length); returns False on 4.37, which lacks it."""
    if not hasattr(model, "_prepare_generated_length"):
        return False
    model._prepare_generated_length(config, has_default_max_length, has_default_min_length, "inputs_embeds",
                                    initial_length, torch.empty(prompt_shape, device="meta"))
    return True


def logits_processors(model, config, initial_ids: torch.Tensor, user_processors):
    """`GenerationMixin._get_logits_processor`: the processors `generate` builds from the config,
    merged with the user's (4.45+ also appends the sampling warpers when do_sample is set)."""
    return model._get_logits_processor(generation_config=config, input_ids_seq_length=initial_ids.shape[1],
                                       encoder_input_ids=initial_ids, prefix_allowed_tokens_fn=None,
                                       logits_processor=user_processors)


def logits_warper(model, config):
    """`GenerationMixin._get_logits_warper` (<= 4.44 keeps the sampling warpers apart); None where
    the processors already include them or when not sampling."""
    if config.do_sample and hasattr(model, "_get_logits_warper"):
        return model._get_logits_warper(config)
    return None


def stopping_criteria(model, config, user_criteria):
    """`GenerationMixin._get_stopping_criteria`: max_length / EOS / stop strings plus the user's."""
    return model._get_stopping_criteria(generation_config=config, stopping_criteria=user_criteria)
