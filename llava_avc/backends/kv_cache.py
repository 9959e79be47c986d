"""KV-cache helpers over transformers' DynamicCache, shared by the backends.

transformers <= 4.55 keeps `key_cache` / `value_cache` lists; 4.56+ (and 5.x) keeps `layers`
objects with `.keys` / `.values`. Every backend reads and joins caches through these functions.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache


def new_cache() -> DynamicCache:
    """An empty KV cache object for one branch (or for stacked branches)."""
    return DynamicCache()


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(keys (B, H_kv, L, D), values (B, H_kv, L, D)) per layer] of a DynamicCache.

    transformers <= 4.55 keeps `key_cache` / `value_cache` lists; 4.56+ keeps `layers` objects.
    """
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def layer_keys(cache, layer_idx: int) -> torch.Tensor:
    """(B, H_kv, L, D) RoPE-rotated keys cached for one layer."""
    if hasattr(cache, "layers"):
        return cache.layers[layer_idx].keys
    return cache.key_cache[layer_idx]


def stack_caches(first, second) -> DynamicCache:
    """A NEW cache whose rows are `first`'s rows then `second`'s rows (batch concatenation).

    Both caches must cover the same number of positions. The inputs are CONSUMED: each layer of
    theirs is released as soon as it is copied, so the peak memory of the join stays near one
    stacked cache instead of two (the prompt cache of LLaVA-1.5-7B is ~0.3 GiB per branch in fp16).
    """
    stacked = DynamicCache()
    layers = len(cache_layers(first))
    for layer in range(layers):
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
