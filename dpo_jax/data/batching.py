"""Seeded, random-access batching (`PreferenceDataset`): batch #k is a pure function of (seed, k), so a resumed run
gets exactly the batches an uninterrupted one would have seen, without replaying the data stream."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from dpo_jax.data.collate import PreferenceBatch, check_collate_options, collate_pairs, padded_length
from dpo_jax.data.examples import PreferenceExample, truncated_lengths

__all__ = ["PreferenceDataset", "batch_iterator"]


class PreferenceDataset:
    """Seeded, random-access batching: `get_batch(step)` is a pure function of (seed, step).

    Epoch e's order is `np.random.default_rng(seed + e).permutation(n)`; step k lives in epoch
    k // steps_per_epoch. A resumed run calls `batches(start_step=k)` and gets exactly the batches
    an uninterrupted run would have seen. With `process_count > 1` every process computes the same
    global batch of `batch_size` examples and collates only its contiguous slice of
    `batch_size // process_count` rows, padded to the global batch's length so shapes agree.

    `drop_last=False` completes the epoch's last batch by wrapping around to the epoch's first
    examples (fixed shapes, no recompiles); `real_rows(step)` tells those repeats apart, so an evaluation
    can count every example exactly once. `group_by_length=True` sorts each window of
    `length_window` shuffled examples by length and then shuffles the batch order, so batches are
    length-homogeneous (less padding) without a fixed long-to-short order.
    """

    def __init__(
        self,
        examples: Sequence[PreferenceExample],
        *,
        batch_size: int,
        seed: int,
        max_len: int,
        pad_id: int,
        shuffle: bool = True,
        drop_last: bool = True,
        process_index: int = 0,
        process_count: int = 1,
        pad_to_multiple_of: int = 1,
        truncation: str = "keep_start",
        min_completion_tokens: int = 1,
        group_by_length: bool = False,
        length_window: int | None = None,
    ):
        check_collate_options(max_len, truncation, min_completion_tokens, pad_to_multiple_of)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(process_count, int) or process_count < 1:
            raise ValueError(f"process_count must be a positive int, got {process_count!r}")
        if not isinstance(process_index, int) or not 0 <= process_index < process_count:
            raise ValueError(f"process_index must be in [0, process_count={process_count}), got {process_index!r}")
        if batch_size % process_count:
            raise ValueError(f"global batch_size={batch_size} is not divisible by process_count={process_count}")
        self.examples = list(examples)
        n = len(self.examples)
        if n == 0:
            raise ValueError("PreferenceDataset needs at least one example")
        if drop_last and n < batch_size:
            raise ValueError(f"only {n} examples, fewer than batch_size={batch_size} with drop_last=True")
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, int(seed), shuffle, drop_last
        self.process_index, self.process_count = process_index, process_count
        self.per_process_batch_size = batch_size // process_count
        self.collate_options = dict(max_len=max_len, pad_id=pad_id, truncation=truncation,
                                    min_completion_tokens=min_completion_tokens)
        self.max_len, self.pad_to_multiple_of = max_len, pad_to_multiple_of
        self.group_by_length = group_by_length
        self.length_window = length_window or 64 * batch_size
        if self.length_window < batch_size:
            raise ValueError(f"length_window={self.length_window} must be >= batch_size={batch_size}")
        # Truncated row length of every example, validated once up front (truncation="error" fails here).
        self._row_length = np.array(
            [p + max(c, r) for p, c, r in
             (truncated_lengths(ex, max_len, truncation, min_completion_tokens) for ex in self.examples)],
            dtype=np.int64)
        self.steps_per_epoch = n // batch_size if drop_last else -(-n // batch_size)
        self._cached_epoch: tuple[int, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _epoch_tables(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """([steps, batch_size] example indices, [steps, batch_size] positions in the epoch's order)."""
        if self._cached_epoch is not None and self._cached_epoch[0] == epoch:
            return self._cached_epoch[1:]
        n, size, steps = len(self.examples), self.batch_size, self.steps_per_epoch
        rng = np.random.default_rng(self.seed + epoch)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group_by_length:
            windows = [order[i:i + self.length_window] for i in range(0, n, self.length_window)]
            order = np.concatenate([w[np.argsort(self._row_length[w], kind="stable")] for w in windows])
        positions = np.arange(steps * size).reshape(steps, size)
        if self.group_by_length and self.shuffle:
            positions = positions[rng.permutation(steps)]
        table = order[positions % n]
        self._cached_epoch = (epoch, table, positions)
        return table, positions

    def epoch_batches_indices(self, epoch: int) -> np.ndarray:
        """[steps_per_epoch, batch_size] global example indices of every batch in `epoch`."""
        return self._epoch_tables(epoch)[0]

    def _step_in_epoch(self, step) -> tuple[int, int]:
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        return divmod(int(step), self.steps_per_epoch)

    def global_batch_indices(self, step: int) -> np.ndarray:
        epoch, within = self._step_in_epoch(step)
        return self.epoch_batches_indices(epoch)[within]

    def real_rows(self, step: int) -> np.ndarray:
        """bool [per_process_batch_size]: False for this process's rows of batch `step` that repeat an example
        of the epoch to fill its last batch (`drop_last=False`); every example is real exactly once per epoch."""
        epoch, within = self._step_in_epoch(step)
        size = self.per_process_batch_size
        positions = self._epoch_tables(epoch)[1][within]
        return positions[self.process_index * size:(self.process_index + 1) * size] < len(self.examples)

    def batch_indices(self, step: int) -> np.ndarray:
        """This process's slice of global batch `step`."""
        size = self.per_process_batch_size
        return self.global_batch_indices(step)[self.process_index * size:(self.process_index + 1) * size]

    def get_batch(self, step: int) -> PreferenceBatch:
        """Batch #step (0-based, counting across epochs) for this process, without replaying."""
        global_indices = self.global_batch_indices(step)
        needed = int(self._row_length[global_indices].max())
        width = padded_length(needed, self.max_len, self.pad_to_multiple_of)
        local = self.batch_indices(step)
        return collate_pairs([self.examples[i] for i in local], pad_to_length=width, **self.collate_options)

    def batches(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[PreferenceBatch]:
        """Batches start_step, start_step+1, ...; endless across epochs when num_steps is None."""
        step = start_step
        while num_steps is None or step < start_step + num_steps:
            yield self.get_batch(step)
            step += 1

    def epoch(self, epoch: int) -> Iterator[PreferenceBatch]:
        """The batches of one epoch."""
        return self.batches(epoch * self.steps_per_epoch, self.steps_per_epoch)


def batch_iterator(
    examples: Sequence[PreferenceExample],
    *,
    batch_size: int,
    seed: int,
    max_len: int,
    pad_id: int,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    pad_to_multiple_of: int = 1,
    truncation: str = "keep_start",
    min_completion_tokens: int = 1,
    group_by_length: bool = False,
    length_window: int | None = None,
) -> Iterator[PreferenceBatch]:
    """One epoch of this process's batches; see PreferenceDataset for order and multi-host rules."""
    dataset = PreferenceDataset(
        examples, batch_size=batch_size, seed=seed, max_len=max_len, pad_id=pad_id, shuffle=shuffle,
        drop_last=drop_last, process_index=process_index, process_count=process_count,
        pad_to_multiple_of=pad_to_multiple_of, truncation=truncation,
        min_completion_tokens=min_completion_tokens, group_by_length=group_by_length,
        length_window=length_window)
    return dataset.epoch(epoch)
