"""Unit tests of llava_avc.algorithm.noise (VCD's diffusion noise) against the schedule's definition."""

import math

import pytest
import torch

from llava_avc.algorithm.noise import add_diffusion_noise, alpha_bar, diffusion_betas


def _beta_by_hand(s, num_steps=1000):
    """beta_s = sigmoid(linspace(-6, 6, n)[s]) * (0.5e-2 - 1e-5) + 1e-5."""
    x = -6.0 + 12.0 * s / (num_steps - 1)
    return (1.0 / (1.0 + math.exp(-x))) * (0.5e-2 - 1e-5) + 1e-5


def _gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_betas_follow_the_sigmoid_schedule():
    betas = diffusion_betas()
    assert betas.shape == (1000,)
    for s in (0, 1, 499, 500, 998, 999):
        assert betas[s].item() == pytest.approx(_beta_by_hand(s), rel=1e-12)
    assert bool((betas[1:] > betas[:-1]).all())


def test_alpha_bar_is_the_running_product_with_zero_based_steps():
    assert alpha_bar(0) == pytest.approx(1.0 - _beta_by_hand(0), rel=1e-12)
    by_hand = (1 - _beta_by_hand(0)) * (1 - _beta_by_hand(1)) * (1 - _beta_by_hand(2))
    assert alpha_bar(2) == pytest.approx(by_hand, rel=1e-12)


def test_alpha_bar_at_step_500_is_about_0_745():
    assert abs(alpha_bar(500) - 0.745) < 1e-3


def test_alpha_bar_decreases_with_the_step():
    assert 1.0 > alpha_bar(0) > alpha_bar(500) > alpha_bar(999) > 0.0


@pytest.mark.parametrize("step", [-1, 1000])
def test_alpha_bar_rejects_steps_outside_the_schedule(step):
    with pytest.raises(ValueError, match=rf"`noise_step` \(={step}\) must be in \[0, 999\]"):
        alpha_bar(step)


@pytest.mark.parametrize("step", [True, 500.0])
def test_alpha_bar_rejects_non_int_steps(step):
    with pytest.raises(TypeError, match="`noise_step`"):
        alpha_bar(step)


def test_noise_on_a_zero_image_is_the_scaled_generator_draw():
    image = torch.zeros(2, 3, 4, 4)
    noised = add_diffusion_noise(image, noise_step=500, generator=_gen(7))
    eps = torch.randn((2, 3, 4, 4), generator=_gen(7), dtype=torch.float32)
    expected = math.sqrt(1.0 - alpha_bar(500)) * eps
    torch.testing.assert_close(noised, expected)


def test_noised_image_is_sqrt_alpha_bar_signal_plus_noise():
    image = torch.linspace(-2.0, 2.0, 48).reshape(3, 4, 4)
    noised = add_diffusion_noise(image, noise_step=10, generator=_gen(1))
    eps = torch.randn((3, 4, 4), generator=_gen(1), dtype=torch.float32)
    ab = alpha_bar(10)
    torch.testing.assert_close(noised, math.sqrt(ab) * image + math.sqrt(1 - ab) * eps)


def test_noise_statistics_match_the_diffusion_marginal():
    ones = torch.ones(200_000)
    noised = add_diffusion_noise(ones, noise_step=500, generator=_gen(0))
    ab = alpha_bar(500)
    assert noised.mean().item() == pytest.approx(math.sqrt(ab), abs=0.01)
    assert noised.std().item() == pytest.approx(math.sqrt(1 - ab), abs=0.01)


def test_noise_is_reproducible_with_a_seed_and_differs_across_seeds():
    image = torch.randn(3, 8, 8, generator=_gen(123))
    first = add_diffusion_noise(image, generator=_gen(5))
    again = add_diffusion_noise(image, generator=_gen(5))
    other = add_diffusion_noise(image, generator=_gen(6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_input_is_not_modified_and_a_new_tensor_is_returned():
    image = torch.randn(3, 8, 8, generator=_gen(2))
    before = image.clone()
    noised = add_diffusion_noise(image, generator=_gen(3))
    assert torch.equal(image, before)
    assert noised.data_ptr() != image.data_ptr()


def test_half_precision_images_keep_their_dtype():
    image = torch.zeros(3, 4, 4, dtype=torch.float16)
    noised = add_diffusion_noise(image, generator=_gen(0))
    assert noised.dtype == torch.float16
    eps = torch.randn((3, 4, 4), generator=_gen(0), dtype=torch.float32)
    expected = (math.sqrt(1 - alpha_bar(500)) * eps).to(torch.float16)
    torch.testing.assert_close(noised, expected)


def test_list_of_images_returns_a_list_of_new_noised_tensors():
    images = [torch.zeros(3, 4, 4), torch.zeros(5, 3, 2, 2)]
    noised = add_diffusion_noise(images, noise_step=500, generator=_gen(9))
    assert isinstance(noised, list) and len(noised) == 2
    assert [n.shape for n in noised] == [i.shape for i in images]
    gen = _gen(9)  # list elements draw from the generator in order
    scale = math.sqrt(1 - alpha_bar(500))
    torch.testing.assert_close(noised[0], scale * torch.randn((3, 4, 4), generator=gen))
    torch.testing.assert_close(noised[1], scale * torch.randn((5, 3, 2, 2), generator=gen))
    assert all(bool((i == 0).all()) for i in images)


def test_integer_images_are_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        add_diffusion_noise(torch.zeros(3, 4, 4, dtype=torch.uint8))
