"""Checks of DPO inputs before anything is computed (mirrors `dpo_torch/validation.py`).

Two kinds. Shapes and dtypes are static, so `validate_dpo_shapes` runs on every call, inside jit too (at trace
time, on tracers): float ids, a non-bool mask, a mask of the wrong shape, a batch mismatch, an empty batch or an
over-long sequence fail while tracing, naming the argument. Values are only known on concrete arrays: JAX clamps
out-of-range indices silently, so `validate_dpo_values` checks every token id, left padding and that every row
has a scored token at the boundary; inside jit `dpo_jax.row_guards` turns such a row's log-prob into NaN (or,
with `checks="raise"`, a checkify error naming the row).
"""

import jax
import numpy as np

from dpo_jax.models.validation import to_numpy

__all__ = ["is_concrete", "check_model", "validate_dpo_shapes", "validate_dpo_values", "validate_dpo_inputs",
           "check_token_range", "check_scored_rows", "check_left_padding", "check_reference_logps"]

SEQUENCE_NAMES = ("preferred_seq", "unpreferred_seq")
MASK_NAMES = ("prompt_mask", "preferred_seq_mask", "unpreferred_seq_mask")
TORCH_PACKAGES = ("torch", "x_transformers", "transformers", "peft")


def is_concrete(*arrays):
    return not any(isinstance(a, jax.core.Tracer) for a in arrays if a is not None)


def check_model(model, name):
    """`model` must be a JAX model (a callable `tokens -> logits`), not a PyTorch module passed by mistake."""
    package = type(model).__module__.split(".")[0]
    if package in TORCH_PACKAGES:
        raise TypeError(f"{name} is a PyTorch module ({type(model).__name__}); dpo_jax needs a JAX model: convert it "
                        "with dpo_jax.from_torch(model) (x-transformers) or dpo_jax.from_transformers(model) "
                        "(Hugging Face), or use dpo_torch.DPO")
    if not callable(model):
        raise TypeError(f"{name} must be a model (a callable tokens [B, T] -> logits [B, T, V]), "
                        f"got {type(model).__name__}")


def _spec(x, name):
    """(shape, numpy dtype) of an array, a tracer or a nested list, without reading a tracer's values."""
    if isinstance(x, jax.core.Tracer) or isinstance(x, jax.Array):
        return tuple(x.shape), np.dtype(x.dtype)
    array = to_numpy(x, name)
    return array.shape, array.dtype


def validate_dpo_shapes(preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
                        unpreferred_seq_mask=None, max_seq_len=None, model="the model"):
    """Raise TypeError / ValueError naming the argument; static, so it also runs on tracers (None skips a limit;
    `model` names whose `max_seq_len` it is)."""
    if prompt_mask is None:
        raise TypeError("prompt_mask is required: a bool array [batch, seq_len], True on the prompt's tokens")
    specs = {}
    for name, seq in zip(SEQUENCE_NAMES, (preferred_seq, unpreferred_seq)):
        shape, dtype = specs[name] = _spec(seq, name)
        if len(shape) != 2:
            raise ValueError(f"{name} must be 2-D [batch, seq_len], got shape {shape}")
        if not np.issubdtype(dtype, np.integer):
            raise TypeError(f"{name} must hold integer token ids, got dtype {dtype}")
    preferred, unpreferred = specs["preferred_seq"][0], specs["unpreferred_seq"][0]
    if preferred != unpreferred:
        raise ValueError(f"preferred_seq {preferred} and unpreferred_seq {unpreferred} must have the same shape")
    batch, length = preferred
    if batch == 0:
        raise ValueError("preferred_seq has batch size 0: a batch needs at least one pair")
    if length < 2:
        raise ValueError(f"sequences need at least 2 tokens (a context and a target), got seq_len {length}")
    if max_seq_len is not None and length - 1 > max_seq_len:
        raise ValueError(
            f"sequences of length {length} are too long: the model sees seq_len - 1 = {length - 1} tokens "
            f"(the last is only a target) but {model}'s max_seq_len is {max_seq_len}"
        )
    for name, mask in zip(MASK_NAMES, (prompt_mask, preferred_seq_mask, unpreferred_seq_mask)):
        if mask is None:
            continue
        shape, dtype = _spec(mask, name)
        if dtype != np.bool_:
            raise TypeError(f"{name} must be a bool array, got dtype {dtype}")
        if shape != (batch, length):
            raise ValueError(f"{name} must have shape {(batch, length)} like the sequences, got {shape}")


def validate_dpo_values(preferred_seq, unpreferred_seq, *, num_tokens):
    """Every token id in the vocabulary (concrete arrays only; None skips the upper bound)."""
    for name, seq in zip(SEQUENCE_NAMES, (preferred_seq, unpreferred_seq)):
        check_token_range(to_numpy(seq, name), name, num_tokens)


def validate_dpo_inputs(preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
                        unpreferred_seq_mask=None, num_tokens, max_seq_len):
    """Shapes, dtypes and token ids of a concrete batch (None skips a limit)."""
    validate_dpo_shapes(preferred_seq, unpreferred_seq, prompt_mask=prompt_mask,
                        preferred_seq_mask=preferred_seq_mask, unpreferred_seq_mask=unpreferred_seq_mask,
                        max_seq_len=max_seq_len)
    validate_dpo_values(preferred_seq, unpreferred_seq, num_tokens=num_tokens)


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


def check_left_padding(seq_mask, name):
    """`seq_mask` is `seq != pad_id`: a row that starts with pad tokens and has its own tokens later is
    left-padded; the model sees no mask, so the pads would be attended to and the log-probs change with their
    count. Right padding is exact. (An explicit sequence mask may drop any position, so it cannot tell.)"""
    if seq_mask is None:
        return
    mask = np.asarray(seq_mask)
    left = np.flatnonzero(~mask[:, 0] & mask.any(axis=-1))
    if len(left):
        row = int(left[0])
        pads = int(np.argmax(mask[row]))
        raise ValueError(
            f"{name} row {row} starts with {pads} pad token(s) before its own tokens: left padding is not "
            f"supported, the model would attend to the pads; pad on the right "
            f"({len(left)} such row(s) in the batch)"
        )


def check_reference_logps(reference_logps, batch_size):
    """Precomputed reference log-probs: a pair (chosen [K], rejected [K]) for the batch's K pairs (static)."""
    if len(reference_logps) != 2:
        raise TypeError("ReferenceLogps must be a pair (chosen [K], rejected [K]), "
                        f"got {len(reference_logps)} entries")
    for name, logps in zip(("chosen", "rejected"), reference_logps):
        shape = tuple(np.shape(logps))
        if shape != (batch_size,):
            raise ValueError(f"ReferenceLogps.{name} has shape {shape}, but the batch has {batch_size} pairs: it "
                             f"must have shape ({batch_size},), one log-prob per pair")
