"""Host-side checks of DPO inputs before anything is traced (mirrors `dpo_torch/validation.py`).

JAX clamps out-of-range indices silently, so every token id is checked here, on concrete arrays, at the
boundary; inside jit the arrays are tracers and the checks are skipped (the data pipeline made them).
"""

import jax
import numpy as np


def is_concrete(*arrays):
    return not any(isinstance(a, jax.core.Tracer) for a in arrays if a is not None)


def validate_dpo_inputs(preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
                        unpreferred_seq_mask=None, num_tokens, max_seq_len):
    """Raise TypeError / ValueError naming the argument and what was expected (None skips a limit)."""
    preferred, unpreferred = np.asarray(preferred_seq), np.asarray(unpreferred_seq)
    for name, seq in (("preferred_seq", preferred), ("unpreferred_seq", unpreferred)):
        if seq.ndim != 2:
            raise ValueError(f"{name} must be 2-D [batch, seq_len], got shape {seq.shape}")
        if not np.issubdtype(seq.dtype, np.integer):
            raise TypeError(f"{name} must hold integer token ids, got dtype {seq.dtype}")
    if preferred.shape != unpreferred.shape:
        raise ValueError(f"preferred_seq {preferred.shape} and unpreferred_seq {unpreferred.shape} must have the same shape")
    batch, length = preferred.shape
    if length < 2:
        raise ValueError(f"sequences need at least 2 tokens (a context and a target), got seq_len {length}")
    if max_seq_len is not None and length - 1 > max_seq_len:
        raise ValueError(
            f"sequences of length {length} are too long: the model sees seq_len - 1 = {length - 1} tokens "
            f"(the last is only a target) but its max_seq_len is {max_seq_len}"
        )
    for name, seq in (("preferred_seq", preferred), ("unpreferred_seq", unpreferred)):
        check_token_range(seq, name, num_tokens)
    for name, mask in (("prompt_mask", prompt_mask), ("preferred_seq_mask", preferred_seq_mask),
                       ("unpreferred_seq_mask", unpreferred_seq_mask)):
        if mask is None:
            continue
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise TypeError(f"{name} must be a bool array, got dtype {mask.dtype}")
        if mask.shape != (batch, length):
            raise ValueError(f"{name} must have shape {(batch, length)} like the sequences, got {mask.shape}")


def check_token_range(seq, name, num_tokens):
    """Every id in [0, num_tokens) (negative ids always refused; None skips the upper bound)."""
    seq = np.asarray(seq)
    bad = np.argwhere((seq < 0) | (seq >= (num_tokens if num_tokens is not None else np.inf)))
    if len(bad):
        row, col = bad[0]
        where = f"the model's vocabulary [0, {num_tokens})" if num_tokens is not None else "the ids >= 0"
        raise ValueError(f"{name} has token id {int(seq[row, col])} at (row {row}, position {col}) outside {where}")


def check_scored_rows(mask, name):
    """A row with no scored token is an error (never a NaN nor a silent 0 that trains)."""
    counts = np.asarray(mask).sum(axis=-1)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise ValueError(
            f"{name} row {int(empty[0])} has no scored token (the prompt or padding covers every target "
            f"position); {len(empty)} such row(s) in the batch"
        )
