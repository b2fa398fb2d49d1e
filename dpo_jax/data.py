"""Preference data: JSONL reading/validation, collation into padded DPO batches, seeded batching.

Pure numpy on the host, so it can be tested without a model and feeds `dpo_loss` keyword for keyword
(`PreferenceBatch.as_dict()`). Batching is random-access (`PreferenceDataset.get_batch(step)`) so a
resumed run gets exactly batch #k without replaying the data stream.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from dpo_jax.tokenizer import Tokenizer

__all__ = [
    "DataError", "PreferenceExample", "PreferenceBatch", "PreferenceDataset", "TRUNCATION_POLICIES",
    "read_preference_jsonl", "write_preference_jsonl", "collate_pairs", "batch_iterator", "truncated_lengths",
    "check_collate_options",
]

FIELDS = ("prompt", "chosen", "rejected")
TRUNCATION_POLICIES = ("keep_start", "error")


class DataError(ValueError):
    """Malformed preference data; the message names the file, the 1-based line and the problem."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        super().__init__(message)
        self.path = path
        self.line = line


@dataclass(frozen=True)
class PreferenceExample:
    """One tokenized preference pair; `chosen`/`rejected` are completions that follow `prompt`."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    source: str = "<memory>"
    line: int = 0

    def where(self) -> str:
        return f"{self.source}:{self.line}"


# ----------------------------------------------------------------------------------------- reading

def _field_ids(value: Any, key: str, tokenizer: Tokenizer) -> list[int]:
    """A field's token ids; raises ValueError (without location) saying what is wrong."""
    if isinstance(value, str):
        return list(tokenizer.encode(value))
    if not isinstance(value, list):
        raise ValueError(f"field {key!r} must be a string or a list of token ids, got {type(value).__name__}")
    vocab = tokenizer.vocab_size
    for pos, tok in enumerate(value):
        if isinstance(tok, bool) or not isinstance(tok, int):
            raise ValueError(f"field {key!r}[{pos}] = {tok!r} is not an integer token id")
        if not 0 <= tok < vocab:
            raise ValueError(f"field {key!r}[{pos}] = {tok} is out of range [0, {vocab})")
    return list(value)


def _parse_line(text: str, tokenizer: Tokenizer, append_eos: bool) -> tuple[list[int], list[int], list[int]]:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object with keys {list(FIELDS)}, got {type(row).__name__}")
    missing = [k for k in FIELDS if k not in row]
    if missing:
        raise ValueError(f"missing key(s) {missing}; each line needs {list(FIELDS)}")
    prompt, chosen, rejected = (_field_ids(row[k], k, tokenizer) for k in FIELDS)
    for key, ids in (("chosen", chosen), ("rejected", rejected)):
        if not ids:
            raise ValueError(f"field {key!r} is empty; a completion needs at least one token")
    if append_eos:
        chosen, rejected = chosen + [tokenizer.eos_id], rejected + [tokenizer.eos_id]
    return prompt, chosen, rejected


def read_preference_jsonl(
    path: str | os.PathLike, tokenizer: Tokenizer, *, append_eos: bool = True
) -> list[PreferenceExample]:
    """Read and validate a whole preference JSONL file (keys prompt/chosen/rejected per line).

    Each field is text (tokenized) or a list of int ids in [0, vocab_size). Every line is checked
    before anything is returned, so training never starts on half-read data; the DataError names
    the first bad line and counts the others.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"preference data file not found: {path}")
    examples: list[PreferenceExample] = []
    errors: list[tuple[int, str]] = []
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                errors.append((line_no, f"not valid UTF-8 ({err.reason} at byte {err.start})"))
                continue
            if not text.strip():
                continue
            try:
                prompt, chosen, rejected = _parse_line(text, tokenizer, append_eos)
            except ValueError as err:
                errors.append((line_no, str(err)))
                continue
            examples.append(PreferenceExample(prompt, chosen, rejected, source=path, line=line_no))
    if errors:
        first_line, first_msg = errors[0]
        message = f"{path}:{first_line}: {first_msg}"
        if len(errors) > 1:
            others = ", ".join(str(n) for n, _ in errors[1:11]) + (", ..." if len(errors) > 11 else "")
            message += f" (and {len(errors) - 1} more malformed line(s): {others}); file rejected"
        raise DataError(message, path=path, line=first_line)
    if not examples:
        raise DataError(f"{path}: no preference examples (file is empty or blank)", path=path)
    return examples


def write_preference_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any] | PreferenceExample]) -> None:
    """Write rows (dicts with prompt/chosen/rejected, or PreferenceExamples) one JSON object per line."""
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            if isinstance(row, PreferenceExample):
                row = {"prompt": row.prompt, "chosen": row.chosen, "rejected": row.rejected}
            handle.write(json.dumps(dict(row), ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------- collation

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


def truncated_lengths(example: PreferenceExample, max_len: int, truncation: str,
                       min_completion_tokens: int) -> tuple[int, int, int]:
    """(prompt, chosen, rejected) lengths kept; the prompt length is shared by both rows."""
    p, c, r = len(example.prompt), len(example.chosen), len(example.rejected)
    if c == 0 or r == 0:
        raise DataError(f"{example.where()}: empty chosen/rejected completion", path=example.source, line=example.line)
    if p + max(c, r) <= max_len:
        return p, c, r
    if truncation == "error":
        raise DataError(
            f"{example.where()}: prompt+completion has {p + max(c, r)} tokens > max_len={max_len} "
            "(truncation='error')", path=example.source, line=example.line)
    keep_c = min(c, max(min_completion_tokens, max_len - p))
    keep_r = min(r, max(min_completion_tokens, max_len - p))
    keep_p = min(p, max_len - keep_c, max_len - keep_r)
    return keep_p, min(c, max_len - keep_p), min(r, max_len - keep_p)


def _padded_length(needed: int, max_len: int, pad_to_multiple_of: int) -> int:
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
        width = _padded_length(needed, max_len, pad_to_multiple_of)
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


# ---------------------------------------------------------------------------------------- batching

class PreferenceDataset:
    """Seeded, random-access batching: `get_batch(step)` is a pure function of (seed, step).

    Epoch e's order is `np.random.default_rng(seed + e).permutation(n)`; step k lives in epoch
    k // steps_per_epoch. A resumed run calls `batches(start_step=k)` and gets exactly the batches
    an uninterrupted run would have seen. With `process_count > 1` every process computes the same
    global batch of `batch_size` examples and collates only its contiguous slice of
    `batch_size // process_count` rows, padded to the global batch's length so shapes agree.

    `drop_last=False` completes the epoch's last batch by wrapping around to the epoch's first
    examples (fixed shapes, no recompiles). `group_by_length=True` sorts each window of
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
        self._cached_epoch: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.steps_per_epoch

    def epoch_batches_indices(self, epoch: int) -> np.ndarray:
        """[steps_per_epoch, batch_size] global example indices of every batch in `epoch`."""
        if self._cached_epoch is not None and self._cached_epoch[0] == epoch:
            return self._cached_epoch[1]
        n, size, steps = len(self.examples), self.batch_size, self.steps_per_epoch
        rng = np.random.default_rng(self.seed + epoch)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group_by_length:
            windows = [order[i:i + self.length_window] for i in range(0, n, self.length_window)]
            order = np.concatenate([w[np.argsort(self._row_length[w], kind="stable")] for w in windows])
        table = order[np.arange(steps * size) % n].reshape(steps, size)
        if self.group_by_length and self.shuffle:
            table = table[rng.permutation(steps)]
        self._cached_epoch = (epoch, table)
        return table

    def global_batch_indices(self, step: int) -> np.ndarray:
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        epoch, within = divmod(int(step), self.steps_per_epoch)
        return self.epoch_batches_indices(epoch)[within]

    def batch_indices(self, step: int) -> np.ndarray:
        """This process's slice of global batch `step`."""
        size = self.per_process_batch_size
        return self.global_batch_indices(step)[self.process_index * size:(self.process_index + 1) * size]

    def get_batch(self, step: int) -> PreferenceBatch:
        """Batch #step (0-based, counting across epochs) for this process, without replaying."""
        global_indices = self.global_batch_indices(step)
        needed = int(self._row_length[global_indices].max())
        width = _padded_length(needed, self.max_len, self.pad_to_multiple_of)
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
