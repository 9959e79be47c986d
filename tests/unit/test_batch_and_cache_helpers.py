"""Pure helpers the adapters share: left alignment and positions (decode.adapter), KV caches (backends.transformers_compat)."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from llava_avc.backends import transformers_compat as kv_cache
from llava_avc.decode.adapter import left_align, position_ids_from_mask


def test_left_align_moves_each_rows_real_positions_to_the_right_end():
    embeds = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)  # (B, L, D)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])  # right padded
    aligned, aligned_mask = left_align(embeds, mask)
    assert aligned_mask.tolist() == [[False, False, True, True], [True, True, True, True]]
    assert aligned[0, :, 0].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert torch.equal(aligned[1], embeds[1])


def test_position_ids_follow_hf_generation_for_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]]


def _cache(batch, value):
    cache = DynamicCache()
    for layer in range(2):
        cache.update(torch.full((batch, 2, 3, 4), value + layer), torch.full((batch, 2, 3, 4), -value - layer), layer)
    return cache


def test_stack_caches_concatenates_rows_and_releases_the_inputs():
    first, second = _cache(1, 10.0), _cache(2, 20.0)
    stacked = kv_cache.stack_caches(first, second)
    for layer, (keys, values) in enumerate(kv_cache.cache_layers(stacked)):
        assert keys.shape == (3, 2, 3, 4)
        assert keys[:, 0, 0, 0].tolist() == [10.0 + layer, 20.0 + layer, 20.0 + layer]
        assert values[:, 0, 0, 0].tolist() == [-10.0 - layer, -20.0 - layer, -20.0 - layer]
    assert all(keys.numel() == 0 for keys, _ in kv_cache.cache_layers(first) + kv_cache.cache_layers(second))
    rows = kv_cache.cache_rows(stacked, slice(0, 1))
    assert rows[1][0].shape == (1, 2, 3, 4) and rows[1][0].data_ptr() != kv_cache.cache_layers(stacked)[1][0].data_ptr()
