"""VCD's forward-diffusion noise on the CLIP-normalised pixel tensor (the VCD baseline).

Reference: Leng et al., "Mitigating Object Hallucinations in Large Vision-Language Models
through Visual Contrastive Decoding" (VCD, CVPR 2024), as vendored by the AVC / AvisC code
(arXiv 2405.17820; official code sangminwoo/AvisC, ``avisc_utils/vcd_add_noise.py``).

The noised image is the DDPM marginal q(x_t | x_0) = sqrt(ab_t) * x_0 + sqrt(1 - ab_t) * eps
with a sigmoid beta schedule of ``NUM_DIFFUSION_STEPS`` steps. This module imports neither
``llava`` nor ``transformers``.
"""

from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Union

import torch

from ..errors import UserError
from .config import NUM_DIFFUSION_STEPS

BETA_START = 1e-5
BETA_END = 0.5e-2
SIGMOID_RANGE = 6.0  # betas follow sigmoid(linspace(-6, 6, num_steps))

Images = Union[torch.Tensor, Sequence[torch.Tensor]]


def diffusion_betas(num_steps: int = NUM_DIFFUSION_STEPS) -> torch.Tensor:
    """Returns VCD's sigmoid noise schedule.

    Args:
        num_steps: Number of diffusion steps (VCD uses 1000).

    Returns:
        (num_steps,) float64 tensor
        ``sigmoid(linspace(-6, 6, num_steps)) * (BETA_END - BETA_START) + BETA_START``.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral):
        raise TypeError(f"`num_steps` (={num_steps!r}) must be an int. Use e.g. num_steps=1000.")
    if num_steps < 1:
        raise UserError(f"`num_steps` (={num_steps}) must be >= 1. Use e.g. num_steps=1000.")
    # NOTE(avc): VCD builds the schedule in float32; we use float64 so that alpha_bar is the
    # exact product (the two differ by ~1e-5 relative at t=500, far below the noise itself).
    grid = torch.linspace(-SIGMOID_RANGE, SIGMOID_RANGE, int(num_steps), dtype=torch.float64)
    return torch.sigmoid(grid) * (BETA_END - BETA_START) + BETA_START


def alpha_bar(noise_step: int, num_steps: int = NUM_DIFFUSION_STEPS) -> float:
    """Returns the signal fraction ab_t = prod_{s <= t} (1 - beta_s) (0-based t).

    Args:
        noise_step: Diffusion step t, an int in [0, num_steps - 1].
        num_steps: Length of the schedule.

    Returns:
        ab_t as a Python float (alpha_bar(500) ~= 0.745).
    """
    if isinstance(noise_step, bool) or not isinstance(noise_step, numbers.Integral):
        raise TypeError(
            f"`noise_step` (={noise_step!r}) must be an int, not {type(noise_step).__name__}. "
            "Use e.g. noise_step=500 (VCD's value)."
        )
    if not 0 <= noise_step < num_steps:
        raise UserError(
            f"`noise_step` (={noise_step}) must be in [0, {num_steps - 1}]; the diffusion "
            f"schedule has {num_steps} steps. Use e.g. noise_step=500 (VCD's value)."
        )
    betas = diffusion_betas(num_steps)  # (num_steps,)
    return float(torch.prod(1.0 - betas[: int(noise_step) + 1]))


def _noise_one(image: torch.Tensor, signal: float, generator: Optional[torch.Generator]
               ) -> torch.Tensor:
    """Noises one tensor: sqrt(ab) * x + sqrt(1 - ab) * eps, eps ~ N(0, 1) drawn on CPU."""
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        raise TypeError(
            f"`images` must hold floating-point tensors, got {type(image).__name__}"
            f"{'' if not isinstance(image, torch.Tensor) else ' of dtype ' + str(image.dtype)}. "
            "Pass the CLIP-normalised pixel tensor from the image processor."
        )
    # Drawn on CPU in float32, then moved: the same seed gives the same noise on any device.
    eps = torch.randn(tuple(image.shape), generator=generator, dtype=torch.float32)
    eps = eps.to(device=image.device)
    noised = math.sqrt(signal) * image.float() + math.sqrt(1.0 - signal) * eps
    return noised.to(dtype=image.dtype)


def add_diffusion_noise(images: Images, noise_step: int = 500,
                        generator: Optional[torch.Generator] = None
                        ) -> Union[torch.Tensor, List[torch.Tensor]]:
    """Adds VCD's diffusion noise of step ``noise_step`` to images.

    Args:
        images: A floating tensor of any shape (e.g. (B, 3, H, W) CLIP-normalised pixels),
            or a list/tuple of such tensors (LLaVA "anyres" passes lists); any dtype/device.
        noise_step: Diffusion step t in [0, 999].
        generator: CPU ``torch.Generator`` for eps; None uses torch's global CPU generator.
            List elements draw from it in order.

    Returns:
        New tensor(s) of the same shape(s), dtype(s) and device(s); inputs are not modified.
    """
    signal = alpha_bar(noise_step)
    if isinstance(images, (list, tuple)):
        return [_noise_one(image, signal, generator) for image in images]
    return _noise_one(images, signal, generator)
