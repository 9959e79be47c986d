"""The decoding state of the two branches (original rows, then biased rows) and their KV caches.

Per step both branches run as ONE forward over 2B rows (their keys/values in their own rows of one
cache); `sequential=True` keeps two caches and runs two forwards per token (the official code's
structure, for benchmarks). Written against `ModelAdapter` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapter import ModelAdapter, position_ids_from_mask


@dataclass
class _Stream:
    """One KV cache and the rows it serves. `copies` = branches stacked in it (2 batched, 1 sequential)."""

    cache: object
    attention_mask: torch.Tensor  # (copies * B, L) bool
    next_position: torch.Tensor  # (copies * B,) long
    copies: int

    def step(self, adapter: ModelAdapter, tokens: torch.Tensor) -> torch.Tensor:
        """Feed (B,) tokens to every branch in the stream; returns (copies * B, V) float32 logits."""
        tokens = tokens.repeat(self.copies).unsqueeze(1)  # (copies * B, 1)
        embeds = adapter.embed_tokens(tokens)  # (copies * B, 1, D)
        ones = self.attention_mask.new_ones(self.attention_mask.shape[0], 1)
        self.attention_mask = torch.cat([self.attention_mask, ones], 1)
        positions = self.next_position.unsqueeze(1)  # (copies * B, 1)
        self.next_position = self.next_position + 1
        logits, self.cache = adapter.forward_last_logits(embeds, self.attention_mask, positions, self.cache)
        return logits


class BranchState:
    """The decoding state of the original branch and (if any) the biased branch.

    Rows: the original branch's B rows first, then the biased branch's B rows (none in lean mode).
    """

    def __init__(self, streams: list[_Stream], logits: torch.Tensor, batch_size: int):
        self.streams = streams
        self.batch_size = batch_size
        self.logits, self.biased_logits = logits[:batch_size], logits[batch_size:]  # (B, V) each

    @classmethod
    def from_prefill(cls, adapter: ModelAdapter, embeds, attention_mask, sequential: bool, position_ids=None,
                     next_position=None, deepstack=None) -> "BranchState":
        """Prefill both branches from (2B, L, D) stacked embeds (original rows first).

        `position_ids` ((2B, L) or (2B, L, K)) and `next_position` ((2B,)) are the prompt's own positions
        (`MergedPrompt.position_ids`, `.next_position`); None: the usual ones from the mask. `deepstack`:
        (2B, L, K, D) or None (`MergedPrompt.deepstack`).
        """
        batch_size = embeds.shape[0] // 2
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        if next_position is None:
            next_position = attention_mask.long().sum(-1)
        parts = [slice(0, batch_size), slice(batch_size, None)] if sequential else [slice(None)]
        streams, logits = [], []
        for rows in parts:
            mask = attention_mask[rows]
            part_logits, cache = adapter.forward_last_logits(embeds[rows], mask, position_ids[rows], adapter.new_cache(),
                                                             None if deepstack is None else deepstack[rows])
            streams.append(_Stream(cache, mask, next_position[rows], copies=2 // len(parts)))
            logits.append(part_logits)
        return cls(streams, torch.cat(logits), batch_size)

    @classmethod
    def from_branches(cls, adapter: ModelAdapter, original, biased, attention_mask, sequential: bool,
                      next_position=None) -> "BranchState":
        """Join two separately prefilled branches: (logits (B, V), cache) each, same (B, L) mask and
        the same (B,) `next_position` (None: the mask's count of real positions)."""
        if next_position is None:
            next_position = attention_mask.long().sum(-1)  # (B,)
        logits = torch.cat([original[0], biased[0]])
        if sequential:
            streams = [_Stream(cache, attention_mask, next_position, copies=1) for _, cache in (original, biased)]
        else:
            cache = adapter.stack_caches(original[1], biased[1])
            mask2 = torch.cat([attention_mask, attention_mask])
            streams = [_Stream(cache, mask2, next_position.repeat(2), copies=2)]
        return cls(streams, logits, attention_mask.shape[0])

    def step(self, adapter: ModelAdapter, tokens: torch.Tensor) -> None:
        """Feed the chosen (B,) tokens to both branches; refreshes `logits` and `biased_logits`."""
        per_stream = [stream.step(adapter, tokens) for stream in self.streams]
        logits = torch.cat(per_stream) if len(per_stream) > 1 else per_stream[0]
        self.logits, self.biased_logits = logits[: self.batch_size], logits[self.batch_size :]

    @classmethod
    def single(cls, logits: torch.Tensor, cache, attention_mask: torch.Tensor, next_position=None) -> "BranchState":
        """One prefilled branch and no biased one (the lean loop): (B, V) logits, its cache, (B, L) mask,
        (B,) next positions (None: the mask's count of real positions)."""
        if next_position is None:
            next_position = attention_mask.long().sum(-1)
        stream = _Stream(cache, attention_mask, next_position, copies=1)
        return cls([stream], logits, attention_mask.shape[0])

    @property
    def prompt_length(self) -> int:
        """Positions of the original branch's (left-padded) merged prompt, as upstream's inputs_embeds."""
        return int(self.streams[0].attention_mask.shape[1])

    def original_cache_rows(self, adapter: ModelAdapter) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The original branch's keys/values per layer (copies)."""
        return adapter.cache_rows(self.streams[0].cache, slice(0, self.batch_size))
