"""The model-adapter interface: everything the decode loop needs from a model, and nothing more.

The two-branch loop (`llava_avc.decode.loop`) never touches a model, a tokenizer or a library's
internals; it calls one `ModelAdapter` (model operations) and one `GenerationFrontEnd` (what the
user's `generate` arguments mean, and the output they ask for). A backend (`llava_avc.backends.<name>`)
implements both for one family of models: `backends.llava` for the original LLaVA codebase (llava-torch), `backends.hf`
for transformers' llava-hf models; a new backend implements the same methods and nothing in the
loop changes.

This module also holds the small data types the loop and the adapters exchange (`MergedPrompt`,
`GenerationSetup`) and the pure tensor helpers for left-aligned batches. It imports neither
``llava`` nor ``transformers``.
"""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence

import torch


@dataclass
class MergedPrompt:
    """A batch of prompts after the image was merged into the text, LEFT-aligned for generation.

    Attributes:
        embeds: (B, L, D) input embeddings (text embeddings with the image features spliced in).
        attention_mask: (B, L) bool, True on real positions; padding is on the left.
        image_spans: per row, (start, end) of the image features in `embeds` (end exclusive).
        positions: the positions the model itself computes for this prompt, batch-first: (B, L), or
            (B, L, K) for rotary positions of K sections (Qwen2.5-VL: temporal, height, width); None:
            the usual ones (cumsum of the mask).
        position_offset: (B,) added to every later token's usual position (Qwen2.5-VL's rope deltas);
            None: 0.
        deepstack: (B, L, K, D) image features the model adds to the hidden states after each of its
            first K decoder layers, zeros outside the image rows (Qwen3-VL's DeepStack); None: none.
    """

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    image_spans: list[Optional[tuple[int, int]]]
    positions: Optional[torch.Tensor] = None
    position_offset: Optional[torch.Tensor] = None
    deepstack: Optional[torch.Tensor] = None

    @property
    def position_ids(self) -> torch.Tensor:
        """(B, L) or (B, L, K) prompt positions: the model's own, else as generation derives them
        (cumsum(mask) - 1, padding set to 1)."""
        return self.positions if self.positions is not None else position_ids_from_mask(self.attention_mask)

    @property
    def next_position(self) -> torch.Tensor:
        """(B,) long position of each row's first new token: its real prompt positions, plus the offset."""
        count = self.attention_mask.long().sum(-1)
        return count if self.position_offset is None else count + self.position_offset.to(count.device)


@dataclass
class GenerationSetup:
    """What the decode loop needs from one `generate(**kwargs)` call, interpreted by a backend.

    `config` is the backend's generation config (a private copy); the loop reads `do_sample`,
    `pad_token_id`, `return_dict_in_generate` and `output_scores` from it.
    """

    config: Any
    logits_processor: Any  # (sequences, scores) -> scores; complete after bind_prompt_length
    logits_warper: Any  # None for greedy, and where the processors already include the warpers
    stopping_criteria: Any  # (sequences, scores) -> bool or (B,) bool tensor
    initial_ids: torch.Tensor  # (B, 0) or (B, 1): the columns the output starts with
    eos_token_ids: Optional[torch.Tensor]  # (E,) long
    attention_mask: Optional[torch.Tensor]  # (B, T) of the prompt ids, as the caller passed it
    streamer: Any
    has_default_max_length: bool = True
    has_default_min_length: bool = True
    prompt_streamed: bool = False  # the caller already put the prompt ids into the streamer
    pad_token_id: Optional[int] = None  # written into finished rows; None: the config's
    sampling_seeds: Optional[list] = None  # one seed per row for sampling; None: torch's global RNG
    row_generators: Optional[list] = None  # made from sampling_seeds on the logits' device at the first draw

    def __post_init__(self) -> None:
        if self.pad_token_id is None:
            self.pad_token_id = self.config.pad_token_id

    @property
    def do_sample(self) -> bool:
        return bool(self.config.do_sample)

    @property
    def return_dict(self) -> bool:
        return bool(self.config.return_dict_in_generate)

    @property
    def output_scores(self) -> bool:
        return bool(self.config.output_scores)


class ModelAdapter(abc.ABC):
    """One model, seen by the decode loop. A backend subclasses this and implements every method.

    Shapes: B = batch rows, T = prompt ids, L = merged prompt positions (text + image features),
    S = new positions of one forward (L at prefill, 1 per decode step), D = hidden size,
    V = vocabulary. Masks are bool (True = real position); batches are left-aligned.

    The loop stacks branches in the batch (original rows first, then biased rows), so every
    method must work for any number of rows; caches are opaque to the loop and only ever passed
    back to the adapter.
    """

    #: Whether the prompt handed to the adapter already holds its image (merged into the embeddings before the
    #: adapter saw it), so that `merge_image` takes no images.
    image_in_prompt: bool = False

    def __init__(self, model):
        self.model = model

    # -- prompts ---------------------------------------------------------------------------
    @abc.abstractmethod
    def merge_image(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], images,
                    image_sizes) -> MergedPrompt:
        """Merge each row's one image into its prompt (the vision tower runs here, once).

        Args:
            input_ids: (B, T) prompt ids with one image placeholder per row.
            attention_mask: (B, T) or None (all real).
            images, image_sizes: the backend's image inputs; `images` is a (B, ...) tensor or a
                list of B per-row tensors, `image_sizes` None or B entries.
        Returns:
            The merged, left-aligned prompt with each row's image span.
        """

    @abc.abstractmethod
    def text_only_prompt(self, input_ids: torch.Tensor,
                         attention_mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt without its image (M3ID's unconditioned branch): ((B, L', D), (B, L') bool), left-aligned."""

    @abc.abstractmethod
    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, S) token ids -> (B, S, D) input embeddings."""

    # -- forward and cache -----------------------------------------------------------------
    @abc.abstractmethod
    def new_cache(self) -> Any:
        """An empty KV cache for one forward chain."""

    @abc.abstractmethod
    def forward_last_logits(self, embeds: torch.Tensor, attention_mask: torch.Tensor,
                            position_ids: torch.Tensor, cache, deepstack: Optional[torch.Tensor] = None
                            ) -> tuple[torch.Tensor, Any]:
        """One language-model forward over (B, S, D) embeds with the cache.

        Args:
            attention_mask: (B, L_cached + S) over cached and new positions.
            position_ids: (B, S) long, or (B, S, K) (`MergedPrompt.positions`).
            deepstack: (B, S, K, D) or None (`MergedPrompt.deepstack`; prefills only).
        Returns:
            ((B, V) float32 logits of the last position, the updated cache).
        """

    @abc.abstractmethod
    def stack_caches(self, first, second) -> Any:
        """A new cache whose rows are `first`'s then `second`'s (same length); consumes both."""

    @abc.abstractmethod
    def cache_rows(self, cache, rows: Sequence[int] | slice) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of (keys, values) per layer for some batch rows (the original branch's, at the end)."""

    @abc.abstractmethod
    def last_query_probe(self, key_mask: torch.Tensor) -> AbstractContextManager:
        """A context manager for ONE prefill forward; it yields an object whose `attentions` then
        holds, per decoder layer in order, the (B, H, L) float32 attention probabilities of the
        LAST query position over the L keys (rows sum to 1; masked keys 0)."""



class GenerationFrontEnd(Protocol):
    """How one backend reads `generate`'s arguments and shapes its output: the loop's other collaborator.

    The model adapter does model operations only (embeddings, forwards, caches, the probe); what the user
    passed to `generate` (or what transformers' `generate` already prepared and handed over) is read here.
    """

    def prepare(self, input_ids: torch.Tensor, generate_kwargs: dict, method: str) -> GenerationSetup:
        """Interpret and validate `generate` kwargs for (B, T) prompt ids before any forward (beams etc.
        raise a UserError; the sampling settings pass `decode.sampling.check_generation_config`, the
        command line's rules); `method` names the caller in messages ("avc=", "lean decoding")."""

    def bind_prompt_length(self, setup: GenerationSetup, prompt_length: int) -> None:
        """Complete `setup` (max/min length, processors, stopping) once the merged length L is known."""

    def make_output(self, sequences: torch.Tensor, scores: Optional[tuple], past_key_values: list,
                    blind_tokens: Optional[list]) -> Any:
        """The dict-style output the model's own `generate(return_dict_in_generate=True)` gives;
        `past_key_values` are the original branch's (keys, values) per layer."""


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) mask -> (B, L) long positions as generation derives them (cumsum - 1, padding 1)."""
    position_ids = attention_mask.long().cumsum(-1) - 1
    return position_ids.masked_fill(attention_mask == 0, 1)


def left_align(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real positions (mask True, order kept) to the right end of the row.

    Args:
        embeds: (B, L, D); mask: (B, L) bool.
    Returns:
        (embeds, mask) of the same shapes, padding (zeros, False) on the left.
    """
    if _is_suffix(mask):
        return embeds, mask  # already left-aligned
    lengths = mask.sum(-1)  # (B,)
    out = embeds.new_zeros(embeds.shape)
    out_mask = torch.zeros_like(mask)
    total = mask.shape[1]
    for row in range(mask.shape[0]):
        n = int(lengths[row])
        out[row, total - n:] = embeds[row][mask[row]]
        out_mask[row, total - n:] = True
    return out, out_mask


def _is_suffix(mask: torch.Tensor) -> bool:
    """True when every row's True entries form one block ending at the last column."""
    lengths = mask.sum(-1, keepdim=True)
    columns = torch.arange(mask.shape[1], device=mask.device)
    return bool((mask == (columns >= mask.shape[1] - lengths)).all())


def left_pad_to(embeds: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad (B, L, ...) embeds (or positions) and (B, L) mask to `length` positions."""
    extra = length - embeds.shape[1]
    if extra <= 0:
        return embeds, mask
    pad_embeds = embeds.new_zeros(embeds.shape[0], extra, *embeds.shape[2:])
    pad_mask = mask.new_zeros(mask.shape[0], extra)
    return torch.cat([pad_embeds, embeds], 1), torch.cat([pad_mask, mask], 1)


def positions_like(positions: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, L) usual positions in the layout of `like`: repeated over its sections when it is (B', L', K)
    (a prompt without image has the same position in every rotary section)."""
    if like.dim() == positions.dim():
        return positions
    return positions.unsqueeze(-1).expand(*positions.shape, like.shape[-1])


def stopping_rows(stopping_criteria, sequences: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """(B,) bool: rows the stopping criteria end. Older criteria return one bool for the whole
    batch (e.g. LLaVA's KeywordsStoppingCriteria: all rows matched); newer ones a (B,) tensor."""
    verdict = stopping_criteria(sequences, scores)
    if isinstance(verdict, torch.Tensor) and verdict.dim() == 1:
        return verdict.to(sequences.device).bool()
    return torch.full((sequences.shape[0],), bool(verdict), dtype=torch.bool, device=sequences.device)
