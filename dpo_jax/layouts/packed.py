"""Packing: several (prefix-shared) pairs per row, no padding between them, a fixed number of pair slots.

Each pair is one segment ([prompt, chosen, rejected], see `layouts/prefix_shared.py`), or two segments
([prompt, chosen], [prompt, rejected]) with `share_prefix=False`. Attention never crosses segments
(segment ids in the mask built inside jit), positions restart per segment, and per-sequence log-probs are
segment-summed into K static pair slots; empty slots carry `pair_valid=False` and weigh 0 in the loss and
in every metric (weighted means), so a partly filled last batch trains exactly like a smaller batch.

The packer is a deterministic greedy first-fit: epoch e shuffles with `default_rng(seed + e)`, sorts each
window of `length_window` examples by packed length (longest first: first-fit decreasing), fills rows of
`row_len` tokens until a pair fits in no row or the batch has `pairs_per_batch` pairs, then shuffles the
order of the batches.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from dpo_jax.data import PreferenceExample, check_collate_options, truncated_lengths
from dpo_jax.forward import ForwardOptions
from dpo_jax.layouts.prefix_shared import PairSpec, PrefixSharedLayout, SharedBatch, layout_pairs, with_score_index

__all__ = ["pair_spec_from_example", "first_fit", "layout_plan", "pack_examples", "PackedDataset", "PackedLayout",
           "PackedBatches"]


# ------------------------------------------------------------------------------------------ host side

def pair_spec_from_example(example: PreferenceExample, *, max_len: int, truncation: str = "keep_start",
                           min_completion_tokens: int = 1) -> PairSpec:
    """The PairSpec `collate_pairs` + next_token alignment would score (same truncation), without padding.

    x-transformers alignment is refused for examples: it scores the first pad after the response only when
    the padded batch is wider than the row, which depends on the other examples of a padded batch; build
    from the padded batch instead (`prefix_sharing.pair_specs_from_batch`).
    """
    p, c, r = truncated_lengths(example, max_len, truncation, min_completion_tokens)
    if p < 1:
        raise ValueError(f"{example.where()}: prefix sharing and packing need a prompt of at least one token")
    prompt = np.asarray(example.prompt[len(example.prompt) - p:], np.int32)
    chosen, rejected = np.asarray(example.chosen[:c], np.int32), np.asarray(example.rejected[:r], np.int32)

    def scored(completion):  # source t (in prompt + completion) scores token t + 1
        return tuple((p - 1 + i, int(tok)) for i, tok in enumerate(completion))

    return PairSpec(prompt, chosen[:-1], rejected[:-1], scored(chosen), scored(rejected))


def first_fit(lengths: Sequence[int], *, row_len: int, rows: int, pairs_per_batch: int):
    """Greedy first-fit of items (in the given order) into batches of `rows` rows of `row_len` tokens.

    Returns a list of batches; each batch is a list of `rows` lists of item indices.
    """
    batches, current, free, count = [], [[] for _ in range(rows)], [row_len] * rows, 0
    for index, length in enumerate(lengths):
        if length > row_len:
            raise ValueError(f"item {index} needs {length} tokens > row_len={row_len}")
        row = next((r for r in range(rows) if free[r] >= length), None)
        if row is None or count == pairs_per_batch:
            batches.append(current)
            current, free, count = [[] for _ in range(rows)], [row_len] * rows, 0
            row = 0
        current[row].append(index)
        free[row] -= length
        count += 1
    if count:
        batches.append(current)
    return batches


def layout_plan(specs, batch_rows, *, row_len, pairs_per_batch, share_prefix=True) -> SharedBatch:
    """The SharedBatch of one planned batch: `batch_rows[r]` lists the spec indices packed into row r."""
    slot, rows_of_pairs = 0, []
    for row in batch_rows:
        rows_of_pairs.append([(slot + i, index) for i, index in enumerate(row)])
        slot += len(row)
    return layout_pairs(specs, rows_of_pairs, row_len=row_len, num_pairs=pairs_per_batch, share_prefix=share_prefix)


def pack_examples(examples: Sequence[PreferenceExample], *, row_len: int, rows: int, pairs_per_batch: int,
                  max_len: int, share_prefix: bool = True, truncation: str = "keep_start",
                  min_completion_tokens: int = 1) -> list[SharedBatch]:
    """Pack examples in their given order (no shuffling or sorting) into SharedBatches of fixed shapes."""
    check_collate_options(max_len, truncation, min_completion_tokens, 1)
    specs = [pair_spec_from_example(ex, max_len=max_len, truncation=truncation,
                                    min_completion_tokens=min_completion_tokens) for ex in examples]
    plan = first_fit([s.length(share_prefix) for s in specs], row_len=row_len, rows=rows,
                     pairs_per_batch=pairs_per_batch)
    return [layout_plan(specs, b, row_len=row_len, pairs_per_batch=pairs_per_batch, share_prefix=share_prefix)
            for b in plan]


class PackedDataset:
    """Seeded packed batching: `epoch(e)` yields SharedBatches [rows, row_len] with `pairs_per_batch` slots.

    `row_len` must hold the longest packed example: 2 * max_len always does.
    """

    def __init__(self, examples: Sequence[PreferenceExample], *, row_len: int, rows: int, pairs_per_batch: int,
                 seed: int, max_len: int, share_prefix: bool = True, shuffle: bool = True,
                 length_window: int | None = None, truncation: str = "keep_start", min_completion_tokens: int = 1):
        check_collate_options(max_len, truncation, min_completion_tokens, 1)
        for name, value in (("row_len", row_len), ("rows", rows), ("pairs_per_batch", pairs_per_batch)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not examples:
            raise ValueError("PackedDataset needs at least one example")
        self.specs = [pair_spec_from_example(ex, max_len=max_len, truncation=truncation,
                                             min_completion_tokens=min_completion_tokens) for ex in examples]
        self.lengths = np.array([s.length(share_prefix) for s in self.specs], np.int64)
        too_long = int(self.lengths.max())
        if too_long > row_len:
            raise ValueError(f"an example packs to {too_long} tokens > row_len={row_len}; raise row_len "
                             f"(2 * max_len = {2 * max_len} always suffices)")
        self.row_len, self.rows, self.pairs_per_batch = row_len, rows, pairs_per_batch
        self.seed, self.share_prefix, self.shuffle = int(seed), share_prefix, shuffle
        self.length_window = length_window or 64 * pairs_per_batch

    def epoch_plan(self, epoch: int):
        """The batches of `epoch` as lists of rows of example indices (a pure function of seed and epoch)."""
        n = len(self.specs)
        rng = np.random.default_rng(self.seed + epoch)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        windows = [order[i:i + self.length_window] for i in range(0, n, self.length_window)]
        order = np.concatenate([w[np.argsort(-self.lengths[w], kind="stable")] for w in windows])
        plan = first_fit(self.lengths[order], row_len=self.row_len, rows=self.rows,
                         pairs_per_batch=self.pairs_per_batch)
        plan = [[[int(order[i]) for i in row] for row in batch] for batch in plan]
        if self.shuffle:
            plan = [plan[i] for i in rng.permutation(len(plan))]
        return plan

    def layout(self, batch_rows) -> SharedBatch:
        """The SharedBatch of one batch of `epoch_plan`."""
        return layout_plan(self.specs, batch_rows, row_len=self.row_len, pairs_per_batch=self.pairs_per_batch,
                           share_prefix=self.share_prefix)

    def epoch(self, epoch: int = 0):
        for batch_rows in self.epoch_plan(epoch):
            yield self.layout(batch_rows)


# --------------------------------------------------------------------------------------------- layout

@dataclasses.dataclass(frozen=True)
class PackedLayout(PrefixSharedLayout):
    """Several prefix-shared pairs per row, first-fit by length, K pair slots per batch (empty ones weigh 0)."""
    name: str = "packed"

    def batches(self, examples, *, batch_size, seed, max_len, pad_id, forward=None, row_len=None, rows=None, **_):
        if self.mask_alignment != "next_token":
            raise ValueError("packing builds its pairs from examples, which only the 'next_token' alignment "
                             "scores independently of the batch: use --layout prefix_shared or padded")
        return PackedBatches(examples, row_len=row_len or 2 * max_len, rows=rows or batch_size,
                             pairs_per_batch=batch_size, seed=seed, max_len=max_len, forward=forward)


class PackedBatches:
    """Random access to a run's packed batches: epoch plans are computed as steps reach them."""

    def __init__(self, examples, *, row_len, rows, pairs_per_batch, seed, max_len, forward=None):
        self.forward = ForwardOptions.of(forward)
        self.packed = PackedDataset(examples, row_len=row_len, rows=rows, pairs_per_batch=pairs_per_batch, seed=seed,
                                    max_len=max_len)
        self.plans = []

    def get_batch(self, step):
        epoch = 0
        while True:
            if epoch == len(self.plans):
                self.plans.append(self.packed.epoch_plan(epoch))
            if step < len(self.plans[epoch]):
                shared = self.packed.layout(self.plans[epoch][step])
                return with_score_index(shared.as_dict(), self.forward), shared.num_scored_tokens()
            step -= len(self.plans[epoch])
            epoch += 1
