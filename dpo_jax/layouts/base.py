"""What every batch layout provides, and the scored-position window they share.

A layout decides where each pair's tokens sit in the batch arrays (`padded.py`: one right-padded row per
sequence; `prefix_shared.py`: one [prompt, chosen, rejected] row per pair; `packed.py`: several such pairs per
row). Everything above (the loss, the reference cache, the train step) speaks only this interface:

- `keys`: the names of the batch arrays the layout's device side reads;
- `check(model, *, num_devices, grad_accum)`: refuse, before anything compiles, what the layout cannot do;
- `pair_logprobs(model, batch, *, reduction, forward, ld_alpha=None, statistics=()) -> PairLogps`: per-pair
  chosen / rejected log-probs [K] (LD-DPO-scaled when `ld_alpha` is set) and the pairs' weights (1 real, 0 an
  empty slot; None when every slot is real), from one forward; with `statistics` (names of
  `dpo_jax.logprobs.STATISTICS`) also each sequence's `SequenceStats`. Callers pass the two keywords only when
  they are set, so a layout written before them keeps working on the default path;
- `batches(examples, ...) -> source` with `source.get_batch(step) -> (arrays, num_scored_tokens)`, a pure
  function of (seed, step) so that a resumed run sees exactly the batches an uninterrupted one would.

The head only needs the positions a row scores. Host code knows them (`score_index`, [rows, W] positions of
each row, W bucketed so few shapes compile); the device side gathers those hidden states before the head
and checks that every scored position was gathered (else that pair's log-prob is NaN, never a truncation).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from dpo_jax.forward import ForwardOptions
from dpo_jax.logprobs import SequenceStats
from dpo_jax.ops.logprob_head import HEAD_STATISTICS, head_token_logprobs, head_token_statistics

__all__ = ["PairLogps", "Layout", "SCORE_BUCKET", "bucketed", "scored_span", "window_for_masks",
           "window_indices", "scored_head_logprobs", "scored_head_statistics"]

SCORE_BUCKET = 64


class PairLogps(NamedTuple):
    """Per-pair sequence log-probs [K] of chosen and rejected, the pairs' weights [K] (or None), and each
    sequence's `SequenceStats` [K] when statistics were asked for (else None)."""
    chosen: jax.Array
    rejected: jax.Array
    weights: jax.Array | None = None
    chosen_stats: SequenceStats | None = None
    rejected_stats: SequenceStats | None = None


class Layout(Protocol):
    name: str
    keys: tuple[str, ...]

    def check(self, model, *, num_devices: int = 1, grad_accum: int = 1) -> None: ...

    def pair_logprobs(self, model, batch, *, reduction: str, forward: ForwardOptions, ld_alpha: float | None = None,
                      statistics: tuple = ()) -> PairLogps: ...

    def batches(self, examples, **options): ...


def bucketed(size: int, limit: int, bucket: int = SCORE_BUCKET) -> int:
    """`size` rounded up to a multiple of `bucket`, at least 1 and at most `limit` (few distinct jit shapes)."""
    return min(-(-max(size, 1) // bucket) * bucket, limit)


# ---- contiguous windows (the padded layout: a row's scored tokens are one span) -----------------------------

def scored_span(mask):
    """(first scored index, span length) per row of a [R, T] mask; span = last - first + 1 (0 if none)."""
    positions = jnp.arange(mask.shape[-1])
    first = jnp.where(mask, positions, mask.shape[-1]).min(axis=-1)
    last = jnp.where(mask, positions, -1).max(axis=-1)
    return first, jnp.maximum(last - first + 1, 0)


def window_for_masks(*masks, bucket=SCORE_BUCKET):
    """Host side: the static window size covering every row's scored span, rounded up to `bucket`.

    Rounding keeps the number of distinct jit shapes small when completion lengths vary between batches.
    """
    width = max(int(np.asarray(mask).shape[-1]) for mask in masks)
    spans = [int(np.asarray(scored_span(jnp.asarray(mask))[1]).max(initial=0)) for mask in masks]
    return bucketed(max(spans), width, bucket)


def window_indices(mask, window):
    """Static-size gather indices [R, window] covering each row's scored span, and rows that overflow it.

    The window starts at the first scored position, shifted left when it would run past the end, so it never
    repeats a position. A row whose span is longer than `window` is flagged (its log-prob becomes NaN).
    """
    length = mask.shape[-1]
    first, span = scored_span(mask)
    start = jnp.clip(first, 0, length - window)
    return start[:, None] + jnp.arange(window)[None], span > window


# ---- the head on the scored positions only ---------------------------------------------------------------------

def scored_head_logprobs(model, hidden, targets, index, forward: ForwardOptions):
    """float32 log-probs [R, W] (or [R, W, k]) of `targets` [R, T] (or [R, T, k]) from hidden [R, T, d] at
    the positions `index` [R, W] only (every position when None), through the model's output head."""
    if index is not None:
        hidden = jnp.take_along_axis(hidden, index[..., None], axis=1)
        targets = jnp.take_along_axis(targets, index if targets.ndim == 2 else index[..., None], axis=1)
    head = model.output_head()
    logps = head_token_logprobs(hidden, head, targets, method=forward.head_for(head.weight.shape[-1]),
                                chunk_size=forward.head_chunk_size)
    return logps


def scored_head_statistics(model, hidden, targets, index, forward: ForwardOptions, statistics=()):
    """(`scored_head_logprobs`, {name: [R, W]} per-position head statistics) from the same head pass; only the
    `HEAD_STATISTICS` among `statistics` are computed (none: exactly `scored_head_logprobs`)."""
    wanted = tuple(name for name in statistics if name in HEAD_STATISTICS)
    if not wanted:
        return scored_head_logprobs(model, hidden, targets, index, forward), {}
    if index is not None:
        hidden = jnp.take_along_axis(hidden, index[..., None], axis=1)
        targets = jnp.take_along_axis(targets, index if targets.ndim == 2 else index[..., None], axis=1)
    head = model.output_head()
    return head_token_statistics(hidden, head, targets, statistics=wanted,
                                 method=forward.head_for(head.weight.shape[-1]), chunk_size=forward.head_chunk_size)
