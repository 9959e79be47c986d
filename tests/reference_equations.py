"""AVC's equations for the independent references (tests/reference_avc.py for original LLaVA,
tests/reference_family_avc.py for the llava-hf families): the blind-token selection (steps 1-4) and the
contrast with its plausibility cutoff (step 6). It imports nothing from llava_avc.

    1. a[l] = head-mean attention of the last prompt position on the N image keys, per layer l.
    2. p[l] = sum(a[l]) / sum_l' sum(a[l']); sorted descending, keep k = #(cumsum < gamma) + 1 layers.
    3. s = mean of a[l] over the kept layers.
    4. blind = s >= mean(s) + lam * std(s) (unbiased); all-equal scores: all blind.
    6. z = (1 + alpha) l - alpha l*, z = -inf where l < log(beta) + max(l).
"""

from __future__ import annotations

import math

import torch


def reference_blind_tokens(attentions, span: tuple, gamma: float, lam: float) -> tuple:
    """(kept layers, (N,) float64 scores, (N,) bool blind) from the per-layer (1, H, L, L) attention maps."""
    start, end = span
    # 1. attention of the last prompt position on the image keys, head mean, per layer
    a = torch.stack([layer[0, :, -1, start:end].double().mean(dim=0) for layer in attentions])  # (n_layers, N)
    # 2. layer shares, top-p over layers
    per_layer = a.sum(dim=1)
    shares = per_layer / per_layer.sum()
    order = sorted(range(len(shares)), key=lambda i: -float(shares[i]))  # stable: ties by layer index
    cumulative, k = 0.0, 0
    for i in order:
        cumulative += float(shares[i])
        k += 1
        if cumulative >= gamma:
            break
    layers = order[:k]
    # 3. token scores over the kept layers
    scores = a[layers].mean(dim=0)  # (N,)
    # 4. blind tokens
    n = end - start
    if bool((scores == scores[0]).all()):
        return layers, scores, torch.ones(n, dtype=torch.bool)
    mean = scores.sum() / n
    std = torch.sqrt(((scores - mean) ** 2).sum() / (n - 1))
    return layers, scores, scores >= mean + lam * std


def contrast(logits: torch.Tensor, biased_logits: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """z = (1 + alpha) l - alpha l*, then -inf where l < log(beta) + max(l); float32."""
    l, lb = logits.float(), biased_logits.float()
    z = (1 + alpha) * l - alpha * lb
    z[l < math.log(beta) + l.max()] = -float("inf")
    return z
