"""Unit tests of llava_avc.algorithm.blind against hand computations on hand-made tensors."""

import json
import math

import pytest
import torch

from llava_avc.algorithm.blind import (
    BlindTokens,
    blind_token_mask,
    find_blind_tokens_from_attention,
    image_attention,
    last_query_attention,
    layer_shares,
    mask_non_blind,
    noise_generator,
    select_layers_top_p,
    token_scores,
)


def _softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def _attention_by_loop(query, keys, key_mask):
    """Explicit per-(sample, head) softmax; query head h reads kv head h // (H / H_kv)."""
    batch, heads, dim = query.shape
    kv_heads, length = keys.shape[1], keys.shape[2]
    out = torch.zeros(batch, heads, length)
    for b in range(batch):
        for h in range(heads):
            kv = h // (heads // kv_heads)
            keep = [l for l in range(length) if key_mask[b][l]]
            logits = [sum(query[b, h, d].item() * keys[b, kv, l, d].item() for d in range(dim))
                      / math.sqrt(dim) for l in keep]
            for l, p in zip(keep, _softmax(logits)):
                out[b, h, l] = p
    return out


# ----------------------------------------------------------------- last_query_attention


def test_last_query_attention_matches_a_per_head_softmax_loop_with_gqa_and_padding():
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 3, generator=gen)  # (B, H=4, D)
    keys = torch.randn(2, 2, 5, 3, generator=gen)  # (B, H_kv=2, L, D)
    key_mask = torch.tensor([[False, True, True, True, True], [True, True, True, False, False]])
    attn = last_query_attention(query, keys, key_mask)
    assert attn.shape == (2, 4, 5) and attn.dtype == torch.float32
    torch.testing.assert_close(attn, _attention_by_loop(query, keys, key_mask.tolist()))
    assert bool((attn[0, :, 0] == 0).all()) and bool((attn[1, :, 3:] == 0).all())
    torch.testing.assert_close(attn.sum(dim=-1), torch.ones(2, 4))


def test_grouped_query_heads_share_consecutive_kv_heads():
    # D = 1, q = 1: kv head 0 prefers key 0, kv head 1 prefers key 1.
    query = torch.ones(1, 4, 1)
    keys = torch.tensor([[[[10.0], [0.0]], [[0.0], [10.0]]]])  # (1, 2, 2, 1)
    attn = last_query_attention(query, keys)
    big, small = 1 / (1 + math.exp(-10)), 1 / (1 + math.exp(10))
    expected = torch.tensor([[[big, small], [big, small], [small, big], [small, big]]])
    torch.testing.assert_close(attn, expected)


def test_attention_is_scaled_by_one_over_sqrt_head_dim():
    query = torch.ones(1, 1, 4)
    keys = torch.tensor([[[[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]]])  # scores 4/2 and 0
    attn = last_query_attention(query, keys)
    torch.testing.assert_close(attn, torch.tensor([[[1 / (1 + math.exp(-2)),
                                                     1 / (1 + math.exp(2))]]]))


def test_half_precision_inputs_and_integer_masks_are_accepted():
    query = torch.ones(1, 2, 2, dtype=torch.float16)
    keys = torch.zeros(1, 1, 3, 2, dtype=torch.float16)
    attn = last_query_attention(query, keys, torch.tensor([[1, 1, 0]]))
    assert attn.dtype == torch.float32
    assert attn.tolist() == [[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]]


def test_fully_masked_row_is_rejected():
    with pytest.raises(ValueError, match=r"masks every key in rows \[1\]"):
        last_query_attention(torch.ones(2, 1, 2), torch.ones(2, 1, 3, 2),
                             torch.tensor([[True, True, True], [False, False, False]]))


def test_heads_not_divisible_by_kv_heads_are_rejected():
    with pytest.raises(ValueError,
                       match=r"H \(=3\) must be a multiple of the kv heads H_kv \(=2\)"):
        last_query_attention(torch.ones(1, 3, 2), torch.ones(1, 2, 4, 2))


def test_float_key_mask_is_rejected():
    with pytest.raises(TypeError, match="bool or 0/1 integer"):
        last_query_attention(torch.ones(1, 1, 2), torch.ones(1, 1, 3, 2), torch.zeros(1, 3))


# ------------------------------------------------------- image attention and layer selection


def test_image_attention_is_the_head_mean_over_the_image_span():
    attn = torch.tensor([
        [[0.1, 0.2, 0.3, 0.4], [0.3, 0.4, 0.1, 0.2]],  # layer 0, heads 0 and 1
        [[0.0, 0.5, 0.5, 0.0], [0.0, 0.1, 0.3, 0.6]],  # layer 1
    ])
    image = image_attention(attn, (1, 3))
    torch.testing.assert_close(image, torch.tensor([[0.3, 0.2], [0.3, 0.4]]))


def test_image_span_outside_the_sequence_is_rejected():
    with pytest.raises(ValueError, match=r"`image_span` \(=\(2, 9\)\)"):
        image_attention(torch.zeros(1, 1, 4), (2, 9))


def test_layer_shares_are_per_layer_sums_over_the_total():
    shares = layer_shares(torch.tensor([[1.0, 1.0], [2.0, 4.0]]))
    assert shares.tolist() == [0.25, 0.75]


def test_layer_shares_reject_zero_image_attention():
    with pytest.raises(ValueError, match="must be finite and > 0"):
        layer_shares(torch.zeros(2, 3))


SHARES = torch.tensor([0.1, 0.4, 0.3, 0.2])  # sorted: 0.4 (1), 0.3 (2), 0.2 (3), 0.1 (0)


@pytest.mark.parametrize("gamma, expected", [
    (0.05, [1]),  # cumsum [0.4, 0.7, 0.9, 1.0]: none < 0.05 -> k = 1
    (0.4, [1]),  # 0.4 < 0.4 is False -> k = 1
    (0.41, [1, 2]),  # one cumsum below -> k = 2
    (0.5, [1, 2]),
    (0.95, [1, 2, 3, 0]),  # three below -> k = 4
    (1.0, [1, 2, 3, 0]),  # k clamped to n_layers whatever the rounding of the last cumsum
])
def test_top_p_keeps_count_below_gamma_plus_one_layers(gamma, expected):
    assert select_layers_top_p(SHARES, gamma).tolist() == expected


def test_top_p_breaks_ties_by_layer_index():
    shares = torch.tensor([0.25, 0.25, 0.25, 0.25])
    assert select_layers_top_p(shares, 0.5).tolist() == [0, 1]  # cumsum [0.25, 0.5, ...]
    assert select_layers_top_p(shares, 0.6).tolist() == [0, 1, 2]


def test_top_p_returns_long_indices():
    assert select_layers_top_p(SHARES, 0.5).dtype == torch.long


def test_token_scores_average_the_selected_layers():
    image = torch.tensor([[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]])
    assert token_scores(image, [1, 0]).tolist() == [2.0, 4.0]
    assert token_scores(image, torch.tensor([1])).tolist() == [3.0, 6.0]


# ---------------------------------------------------------------------- blind_token_mask


def test_score_exactly_at_the_threshold_is_blind():
    # mean 1, unbiased std sqrt(12 / 3) = 2: lam 1.5 -> threshold 1 + 3 = 4 == the last score.
    scores = torch.tensor([0.0, 0.0, 0.0, 4.0])
    assert blind_token_mask(scores, 1.5).tolist() == [False, False, False, True]


def test_threshold_uses_the_unbiased_std():
    # unbiased: 1 + 1.6 * 2 = 4.2 > 4 -> none blind; biased std sqrt(3) would give 3.77 < 4.
    scores = torch.tensor([0.0, 0.0, 0.0, 4.0])
    assert blind_token_mask(scores, 1.6).tolist() == [False, False, False, False]


def test_zero_lam_makes_tokens_at_or_above_the_mean_blind():
    assert blind_token_mask(torch.tensor([1.0, 2.0, 3.0]), 0.0).tolist() == [False, True, True]


def test_uniform_attention_makes_every_token_blind():
    # The float32 mean of 576 copies of 1/576 is not exactly 1/576; still all are blind.
    scores = torch.full((576,), 1.0 / 576)
    assert bool(blind_token_mask(scores, 1.0).all())
    assert bool(blind_token_mask(torch.zeros(7), 0.0).all())


def test_single_token_is_blind_without_nan():
    blind = blind_token_mask(torch.tensor([0.3]), 1.0)
    assert blind.tolist() == [True] and blind.dtype == torch.bool


def test_non_finite_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN/inf"):
        blind_token_mask(torch.tensor([0.1, float("nan")]), 1.0)


# ---------------------------------------------------------- find_blind_tokens_from_attention


def _hand_attention():
    """(3 layers, 2 heads, L=6) with the image at [2, 5); head-mean image attention:

    layer 0: [0.1, 0.1, 0.1] (sum 0.3), layer 1: [0.5, 0.1, 0.0] (0.6),
    layer 2: [0.05, 0.05, 0.0] (0.1)  -> shares [0.3, 0.6, 0.1].
    """
    image = torch.tensor([[0.1, 0.1, 0.1], [0.5, 0.1, 0.0], [0.05, 0.05, 0.0]])
    spread = torch.tensor([0.02, -0.04, 0.0])
    attn = torch.full((3, 2, 6), 0.01)
    attn[:, 0, 2:5] = image + spread  # the two heads differ; their mean is `image`
    attn[:, 1, 2:5] = image - spread
    return attn


def test_find_blind_tokens_chains_the_steps_by_hand():
    # gamma 0.5: sorted shares [0.6 (1), 0.3 (0), 0.1 (2)], none below 0.5 -> layers [1].
    # scores [0.5, 0.1, 0.0]: mean 0.2, unbiased std sqrt((0.09 + 0.01 + 0.04) / 2) = 0.2646
    # -> threshold 0.4646 -> only token 0 is blind.
    found = find_blind_tokens_from_attention(_hand_attention(), (2, 5), gamma=0.5, lam=1.0)
    assert found.image_span == (2, 5)
    assert found.layers == [1]
    torch.testing.assert_close(found.scores, torch.tensor([0.5, 0.1, 0.0]))
    assert found.blind.tolist() == [True, False, False]
    assert found.num_blind == 1


def test_find_blind_tokens_with_two_layers_by_hand():
    # gamma 0.8: cumsum [0.6, 0.9, 1.0], one below -> layers [1, 0]; scores = mean of
    # layers 1 and 0 = [0.3, 0.1, 0.05]; lam 0 -> threshold = mean 0.15 -> [T, F, F].
    found = find_blind_tokens_from_attention(_hand_attention(), (2, 5), gamma=0.8, lam=0.0)
    assert found.layers == [1, 0]
    torch.testing.assert_close(found.scores, torch.tensor([0.3, 0.1, 0.05]))
    assert found.blind.tolist() == [True, False, False]


def test_blind_tokens_to_dict_is_json_able():
    found = BlindTokens(image_span=(2, 5), layers=[1, 0],
                        scores=torch.tensor([0.5, 0.25, 0.0]),
                        blind=torch.tensor([True, False, True]))
    as_dict = json.loads(json.dumps(found.to_dict()))
    assert as_dict["image_span"] == [2, 5] and as_dict["layers"] == [1, 0]
    assert as_dict["scores"] == [0.5, 0.25, 0.0]
    assert as_dict["blind"] == [True, False, True]
    assert as_dict["num_blind"] == 2 and as_dict["blind_indices"] == [0, 2]


# ------------------------------------------------------------------------ mask_non_blind


EMBEDS = torch.tensor([[1.5, -2.0, 3.0], [4.0, 5.0, -6.0], [7.0, 8.0, 9.0]])
BLIND = torch.tensor([True, False, True])


@pytest.mark.parametrize("scheme, fill", [("zeros", 0.0), ("ones", 1.0)])
def test_constant_schemes_replace_only_the_non_blind_rows(scheme, fill):
    embeds = EMBEDS.clone()
    out = mask_non_blind(embeds, BLIND, scheme)
    assert out.tolist() == [[1.5, -2.0, 3.0], [fill] * 3, [7.0, 8.0, 9.0]]
    assert torch.equal(embeds, EMBEDS)  # input untouched
    assert out.data_ptr() != embeds.data_ptr()


def test_noise_scheme_draws_the_full_matrix_from_the_cpu_generator():
    out = mask_non_blind(EMBEDS, BLIND, "noise", generator=noise_generator(3))
    expected = torch.randn((3, 3), generator=torch.Generator().manual_seed(3))
    assert torch.equal(out[1], expected[1])
    assert torch.equal(out[0], EMBEDS[0]) and torch.equal(out[2], EMBEDS[2])


def test_noise_is_reproducible_with_a_seed_and_differs_across_seeds():
    first = mask_non_blind(EMBEDS, BLIND, "noise", generator=noise_generator(0))
    again = mask_non_blind(EMBEDS, BLIND, "noise", generator=noise_generator(0))
    other = mask_non_blind(EMBEDS, BLIND, "noise", generator=noise_generator(1))
    assert torch.equal(first, again)
    assert not torch.equal(first[1], other[1])


def test_masking_keeps_dtype_and_blind_rows_exactly_in_half_precision():
    embeds = EMBEDS.to(torch.bfloat16)
    for scheme in ("zeros", "ones", "noise"):
        out = mask_non_blind(embeds, BLIND, scheme, generator=noise_generator(0))
        assert out.dtype == torch.bfloat16
        assert torch.equal(out[[0, 2]], embeds[[0, 2]])


def test_all_blind_leaves_the_embeddings_unchanged():
    out = mask_non_blind(EMBEDS, torch.ones(3, dtype=torch.bool), "zeros")
    assert torch.equal(out, EMBEDS)


def test_unknown_scheme_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"`scheme` \(='blur'\) must be one of "
                                         r"\('zeros', 'ones', 'noise'\)"):
        mask_non_blind(EMBEDS, BLIND, "blur")


def test_blind_mask_of_the_wrong_length_is_rejected():
    with pytest.raises(ValueError, match=r"`blind` must be a bool \(N,\) tensor with N = 3"):
        mask_non_blind(EMBEDS, torch.tensor([True, False]), "zeros")


def test_noise_generator_is_a_seeded_cpu_generator():
    gen = noise_generator(42)
    assert gen.device.type == "cpu" and gen.initial_seed() == 42
    with pytest.raises(TypeError, match="must be an int"):
        noise_generator(1.5)
