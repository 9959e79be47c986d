"""Unit tests of llava_avc.algorithm.contrast against hand-computed logits."""

import math

import pytest
import torch

from llava_avc.algorithm.contrast import (
    NonFiniteLogitsError,
    avc_logits,
    check_branches_finite,
    check_finite,
    m3id_logits,
    m3id_weight,
    plausibility_cutoff_mask,
    vcd_logits,
)

INF = float("inf")


def test_cutoff_drops_tokens_below_log_beta_plus_max():
    # log(0.1) + 2 = -0.3026: only -3 is below it.
    logits = torch.tensor([[2.0, 1.0, -3.0]])
    assert plausibility_cutoff_mask(logits, 0.1).tolist() == [[False, False, True]]


def test_cutoff_is_per_row():
    logits = torch.tensor([[2.0, 1.0, -3.0], [10.0, 7.0, 8.0]])
    # row 1: log(0.1) + 10 = 7.697 -> 7 is cut, 8 is kept.
    assert plausibility_cutoff_mask(logits, 0.1).tolist() == [[False, False, True],
                                                              [False, True, False]]


def test_cutoff_equals_probability_at_least_beta_times_max_probability():
    logits = torch.tensor([[0.0, -1.0, -2.0, -2.5, 0.5, -4.0]])
    probs = torch.softmax(logits.double(), dim=-1)
    beta = 0.1
    expected_cut = probs < beta * probs.max(dim=-1, keepdim=True).values
    assert torch.equal(plausibility_cutoff_mask(logits, beta), expected_cut)


def test_beta_of_one_keeps_only_the_maximum():
    logits = torch.tensor([[0.5, 3.0, 2.9]])
    assert plausibility_cutoff_mask(logits, 1.0).tolist() == [[True, False, True]]


def test_avc_logits_by_hand():
    # z = 2 * l - l* = [3, 1, -5]; -3 < log(0.1) + 2 -> -inf.
    z = avc_logits(torch.tensor([[2.0, 1.0, -3.0]]), torch.tensor([[1.0, 1.0, 1.0]]),
                   alpha=1.0, beta=0.1)
    assert z.tolist() == [[3.0, 1.0, -INF]]


def test_avc_logits_with_alpha_2_5_by_hand():
    # z = 3.5 * l - 2.5 * l* = [3.5*2 - 2.5*0, 3.5*1 - 2.5*2, -inf] = [7, -1.5, -inf]
    z = avc_logits(torch.tensor([[2.0, 1.0, -3.0]]), torch.tensor([[0.0, 2.0, 0.0]]),
                   alpha=2.5, beta=0.1)
    assert z.tolist() == [[7.0, -1.5, -INF]]


def test_cutoff_comes_from_the_original_logits_not_the_contrast():
    # Without the cutoff the third token would win: 2 * (-3) - (-30) = 24.
    z = avc_logits(torch.tensor([[2.0, 1.0, -3.0]]), torch.tensor([[1.0, 1.0, -30.0]]),
                   alpha=1.0, beta=0.1)
    assert z.tolist() == [[3.0, 1.0, -INF]]


def test_vcd_logits_use_the_same_formula_as_avc():
    logits = torch.tensor([[2.0, 1.0, -3.0], [0.0, 0.5, 0.25]])
    other = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0]])
    assert torch.equal(vcd_logits(logits, other, 1.0, 0.1), avc_logits(logits, other, 1.0, 0.1))
    # row 1: 2 * [0, 0.5, 0.25] - [1, -1, 0] = [-1, 2, 0.5]; all within log(0.1) of 0.5.
    assert vcd_logits(logits, other, 1.0, 0.1)[1].tolist() == [-1.0, 2.0, 0.5]


def test_zero_alpha_gives_the_original_logits_on_the_plausible_set():
    logits = torch.tensor([[2.0, 1.0, -3.0, 1.5]])
    biased = torch.tensor([[5.0, -7.0, 0.0, 9.0]])
    z = avc_logits(logits, biased, alpha=0.0, beta=0.1)
    assert z.tolist() == [[2.0, 1.0, -INF, 1.5]]
    assert z.argmax(dim=-1).item() == logits.argmax(dim=-1).item()


def test_half_precision_inputs_give_float32_outputs():
    logits = torch.tensor([[2.0, 1.0, -3.0]], dtype=torch.float16)
    biased = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.bfloat16)
    z = avc_logits(logits, biased, alpha=1.0, beta=0.1)
    assert z.dtype == torch.float32
    assert z.tolist() == [[3.0, 1.0, -INF]]


def test_contrast_is_computed_after_the_upcast():
    # 1000 and 999 are exact in float16, but 2.5 * 999 = 2497.5 is not (float16 spacing is 2
    # there): float16 arithmetic would give 3500 - 2498 = 1002; float32 gives 1002.5.
    logits = torch.tensor([[1000.0, 999.0]], dtype=torch.float16)
    biased = torch.tensor([[999.0, 999.0]], dtype=torch.float16)
    z = avc_logits(logits, biased, alpha=2.5, beta=0.1)
    assert z.tolist() == [[1002.5, 999.0]]


def test_inputs_are_not_modified():
    logits = torch.tensor([[2.0, 1.0, -3.0]])
    biased = torch.tensor([[1.0, 1.0, 1.0]])
    avc_logits(logits, biased, alpha=1.0, beta=0.1)
    assert logits.tolist() == [[2.0, 1.0, -3.0]] and biased.tolist() == [[1.0, 1.0, 1.0]]


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="same"):
        avc_logits(torch.zeros(1, 3), torch.zeros(1, 4), alpha=1.0, beta=0.1)


def test_m3id_weight_at_the_first_step():
    # exp(0.02) - 1 = 0.0202013400...
    assert m3id_weight(1, 0.02) == pytest.approx(0.020201340026755776, rel=1e-12)


def test_m3id_weight_is_one_minus_g_over_g():
    g = math.exp(-0.1 * 7)
    assert m3id_weight(7, 0.1) == pytest.approx((1 - g) / g, rel=1e-12)
    assert m3id_weight(3, 0.0) == 0.0


@pytest.mark.parametrize("t", [0, -1])
def test_m3id_weight_rejects_steps_before_the_first(t):
    with pytest.raises(ValueError, match=rf"`t` \(={t}\) must be >= 1"):
        m3id_weight(t, 0.02)


def test_m3id_logits_by_hand():
    # lam = ln 2, t = 1 -> g = 1/2, w = 1: z = 2 * lc - lu.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    uncond = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    z = m3id_logits(logits, uncond, t=1, lam=math.log(2.0), beta=0.1)
    expected = [[math.log(0.25 / 0.2), math.log(0.3), math.log(0.04 / 0.5)]]
    torch.testing.assert_close(z, torch.tensor(expected))


def test_m3id_cutoff_comes_from_the_conditioned_logits():
    # beta = 0.5: p >= 0.25 keeps 0.5 and 0.3, cuts 0.2.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    uncond = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    z = m3id_logits(logits, uncond, t=1, lam=math.log(2.0), beta=0.5)
    assert z[0, 2].item() == -INF
    torch.testing.assert_close(z[0, :2], torch.tensor([math.log(1.25), math.log(0.3)]))


def test_m3id_logits_are_invariant_to_shifting_either_branch():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    uncond = torch.tensor([[0.0, 1.0, 0.5]])
    base = m3id_logits(logits, uncond, t=5, lam=0.02, beta=0.1)
    shifted = m3id_logits(logits + 100.0, uncond - 7.0, t=5, lam=0.02, beta=0.1)
    torch.testing.assert_close(base, shifted)


def test_m3id_with_zero_lam_gives_the_log_probabilities():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    z = m3id_logits(logits, torch.tensor([[5.0, -5.0, 0.0]]), t=3, lam=0.0, beta=0.1)
    torch.testing.assert_close(z, torch.log_softmax(logits, dim=-1))


def test_check_finite_passes_finite_logits():
    check_finite(torch.tensor([[1.0, -2.0], [0.0, 3.0]]), step=0, branch="original")


def test_check_finite_names_the_step_branch_and_rows():
    logits = torch.tensor([[float("nan"), 0.0], [1.0, 2.0], [INF, 0.0], [-INF, 1.0]])
    with pytest.raises(NonFiniteLogitsError,
                       match=r"non-finite biased logits at step 3 in rows \[0, 2, 3\]: NaN/inf "
                             r"from the biased branch") as info:
        check_finite(logits, step=3, branch="biased")
    assert isinstance(info.value, RuntimeError)
    assert (info.value.step, info.value.branch, info.value.rows) == (3, "biased", [0, 2, 3])


def test_every_branch_is_checked_and_the_first_bad_one_named():
    finite = torch.tensor([[1.0, 2.0]])
    check_branches_finite([("original", finite), ("avc biased", finite), ("unused", None)], step=0)
    with pytest.raises(NonFiniteLogitsError, match=r"^non-finite original logits at step 2 in rows \[1\]"):
        check_branches_finite([("original", torch.tensor([[1.0, 2.0], [float("nan"), 0.0]])),
                               ("avc biased", torch.tensor([[1.0, 2.0], [0.0, 0.0]]))], step=2)
    with pytest.raises(NonFiniteLogitsError, match=r"^non-finite avc biased logits at step 0 in rows \[0\]"):
        check_branches_finite([("original", finite), ("avc biased", torch.tensor([[INF, 0.0]]))], step=0)


def test_a_sum_that_overflows_is_not_taken_for_a_non_finite_logit():
    huge = torch.full((1, 4), 3e38)  # finite, but their sum is inf in float32
    check_branches_finite([("original", huge), ("avc biased", huge)], step=0)
