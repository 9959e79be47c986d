"""Last-query attention probe: the attention row of the last prompt position, without attention maps.

AVC needs, for every layer, the attention of the LAST prompt position over the image keys. Asking
every layer for its full (H, L, L) map forces eager attention and costs O(L^2) memory per layer
(about 0.8 GB in fp16 for LLaVA-1.5-7B at L ~ 650). Instead, a forward hook on each attention
module recomputes just that one query row from the layer's input hidden state and the keys the layer
has just written into the KV cache, while the model keeps its fast (sdpa) attention:

    q_last = RoPE(q_proj(h_last), pos_last)            # (B, H, D)
    a      = softmax(q_last . K^T / sqrt(D) + mask)    # (B, H, L), K = cached RoPE'd keys

This equals row L-1 of eager attention's probabilities (tests/test_probe.py checks <= 1e-5 in fp32).
The hooks live for one prefill and record only the forwards of the thread that attached them, so
another thread decoding with the same model meanwhile neither feeds nor sees this probe.
Shared by the backends whose language model is Llama-family (Llama, Mistral, Qwen2, Qwen3 with its
per-head query norm: the same RoPE and attention module layout; Qwen2.5-VL's and Qwen3-VL's multimodal
rotary sections are already folded into the (cos, sin) the model passes): the original LLaVA's
LlamaModel and the llava-hf backend's language models.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch
from transformers.models.llama import modeling_llama

from ..algorithm.blind import last_query_attention
from .transformers_compat import CACHE_NAMES, contract_broken, hook_cache, layer_keys


def _rotated_last_query(attn_module, hidden_last: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """(B, 1, D_model) last hidden state -> (B, H, D_head) RoPE-rotated query, as the module does.

    transformers 4.37: the module owns `rotary_emb(x, seq_len)` and rotates with `position_ids`;
    4.48+: the model passes `position_embeddings=(cos, sin)` (B, S, D_head) for every position.
    """
    batch = hidden_last.shape[0]
    query = attn_module.q_proj(hidden_last)  # (B, 1, H * D_head)
    query = query.view(batch, 1, -1, attn_module.head_dim)  # (B, 1, H, D_head)
    if getattr(attn_module, "q_norm", None) is not None:
        query = attn_module.q_norm(query)  # Qwen3: RMSNorm over each head before RoPE
    query = query.transpose(1, 2)  # (B, H, 1, D_head)
    if kwargs.get("position_embeddings") is not None:
        cos, sin = (part[:, -1:] for part in kwargs["position_embeddings"])  # (B, 1, D_head)
        query, _ = modeling_llama.apply_rotary_pos_emb(query, query, cos, sin)
    else:
        position_last = kwargs["position_ids"][:, -1:]  # (B, 1)
        cos, sin = attn_module.rotary_emb(query, seq_len=int(position_last.max()) + 1)
        query, _ = modeling_llama.apply_rotary_pos_emb(query, query, cos, sin, position_last)
    return query[:, :, 0, :]  # (B, H, D_head)


class LastQueryProbe:
    """Collects, per decoder layer, the (B, H, L) attention probabilities of the last query row.

    Use through `last_query_probe(model, key_mask)`; after the prefill forward, `attentions` holds
    one tensor per layer, in layer order.
    """

    def __init__(self, key_mask: torch.Tensor):
        self.key_mask = key_mask.bool()  # (B, L)
        self.attentions: list[torch.Tensor] = []
        self.thread = threading.get_ident()  # the forwards of other threads are not this probe's

    def hook(self, module, args, kwargs, output):
        """Forward hook (with_kwargs) on one attention module; runs right after it updated the cache."""
        if threading.get_ident() != self.thread:
            return
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # (B, S, D_model)
        cache = hook_cache(kwargs)
        if cache is None:  # the adapters always prefill with a cache: the kwarg's name changed
            raise contract_broken(f"the attention modules receive the KV cache under none of the names "
                                  f"{', '.join(CACHE_NAMES)}")
        query = _rotated_last_query(module, hidden[:, -1:, :], kwargs)  # (B, H, D)
        keys = layer_keys(cache, module.layer_idx)  # (B, H_kv, L, D)
        self.attentions.append(last_query_attention(query, keys, self.key_mask))


@contextmanager
def last_query_probe(decoder_layers, key_mask: torch.Tensor) -> Iterator[LastQueryProbe]:
    """Attach the probe to every attention module for the duration of one prefill forward.

    Args:
        decoder_layers: the Llama decoder layers (each with `.self_attn`), in order.
        key_mask: (B, L) bool mask of the prefill (True = real position).
    """
    probe = LastQueryProbe(key_mask)
    handles = [layer.self_attn.register_forward_hook(probe.hook, with_kwargs=True) for layer in decoder_layers]
    try:
        yield probe
    finally:
        for handle in handles:
            handle.remove()
