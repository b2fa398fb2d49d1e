"""Collation: tokenized pairs -> right-padded DPO arrays (`PreferenceBatch`), named as `dpo_loss` takes them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dpo_jax.data.examples import TRUNCATION_POLICIES, PreferenceExample, truncated_lengths

__all__ = ["PreferenceBatch", "collate_pairs", "check_collate_options", "padded_length"]


@dataclass(frozen=True)
class PreferenceBatch:
    """Right-padded [B, N] arrays, named as `dpo_loss` takes them; one prompt_mask for both rows."""

    preferred_seq: np.ndarray
    unpreferred_seq: np.ndarray
    prompt_mask: np.ndarray
    preferred_seq_mask: np.ndarray
    unpreferred_seq_mask: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.preferred_seq.shape)

    def num_scored_tokens(self) -> int:
        """Completion tokens of chosen plus rejected: the tokens the DPO log-probs sum over."""
        chosen = self.preferred_seq_mask & ~self.prompt_mask
        rejected = self.unpreferred_seq_mask & ~self.prompt_mask
        return int(chosen.sum() + rejected.sum())

    def as_dict(self) -> dict[str, np.ndarray]:
        return {
            "preferred_seq": self.preferred_seq,
            "unpreferred_seq": self.unpreferred_seq,
            "prompt_mask": self.prompt_mask,
            "preferred_seq_mask": self.preferred_seq_mask,
            "unpreferred_seq_mask": self.unpreferred_seq_mask,
        }


def check_collate_options(max_len: int, truncation: str, min_completion_tokens: int, pad_to_multiple_of: int) -> None:
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    if truncation not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}, got {truncation!r}")
    if not isinstance(min_completion_tokens, int) or not 1 <= min_completion_tokens <= max_len:
        raise ValueError(f"min_completion_tokens must be an int in [1, max_len={max_len}], got {min_completion_tokens!r}")
    if not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}")


def padded_length(needed: int, max_len: int, pad_to_multiple_of: int) -> int:
    return min(max_len, math.ceil(needed / pad_to_multiple_of) * pad_to_multiple_of)


def collate_pairs(
    examples: Sequence[PreferenceExample],
    *,
    max_len: int,
    pad_id: int,
    truncation: str = "keep_start",
    min_completion_tokens: int = 1,
    pad_to_multiple_of: int = 1,
    pad_to_length: int | None = None,
) -> PreferenceBatch:
    """Build right-padded DPO arrays; both sequences share one padded length N.

    N = the batch's longest prompt+completion after truncation, rounded up to `pad_to_multiple_of`
    and capped at `max_len` (or exactly `pad_to_length`, which multi-host batching uses so every
    process has the same shape).

    Truncation policy ("keep_start"): when prompt+completion exceeds max_len, the completion's end is
    cut first, keeping at least `min_completion_tokens`; if the prompt alone is still too long, its
    start is cut (its end, nearest the answer, is kept). The prompt is cut identically for chosen and
    rejected, so one prompt_mask serves both; no row ever has zero completion tokens.
    `truncation="error"` raises DataError instead of cutting.
    """
    check_collate_options(max_len, truncation, min_completion_tokens, pad_to_multiple_of)
    if not examples:
        raise ValueError("collate_pairs needs at least one example")
    lengths = [truncated_lengths(ex, max_len, truncation, min_completion_tokens) for ex in examples]
    needed = max(p + max(c, r) for p, c, r in lengths)
    if pad_to_length is None:
        width = padded_length(needed, max_len, pad_to_multiple_of)
    elif not needed <= pad_to_length <= max_len:
        raise ValueError(f"pad_to_length={pad_to_length} must be in [{needed} (longest row), max_len={max_len}]")
    else:
        width = pad_to_length

    batch = len(examples)
    seqs = np.full((2, batch, width), pad_id, dtype=np.int32)
    seq_masks = np.zeros((2, batch, width), dtype=bool)
    prompt_mask = np.zeros((batch, width), dtype=bool)
    for row, (ex, (p, c, r)) in enumerate(zip(examples, lengths)):
        prompt = ex.prompt[len(ex.prompt) - p:]
        prompt_mask[row, :p] = True
        for which, (completion, keep) in enumerate(((ex.chosen, c), (ex.rejected, r))):
            seqs[which, row, :p] = prompt
            seqs[which, row, p:p + keep] = completion[:keep]
            seq_masks[which, row, :p + keep] = True
    return PreferenceBatch(seqs[0], seqs[1], prompt_mask, seq_masks[0], seq_masks[1])
