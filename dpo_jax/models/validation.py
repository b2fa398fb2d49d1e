"""Host-side checks of model inputs, shared by every family, run before jit so that JAX never clamps a bad
index silently.

JAX indexing clamps out-of-range ids instead of failing; an out-of-vocabulary token would then score
as another token without any error. These checks run on concrete arrays only (numpy, jax, torch).
"""

from __future__ import annotations

import jax
import numpy as np


def is_concrete(x) -> bool:
    """False for tracers (inside jit/grad/vmap), where values cannot be inspected."""
    return not isinstance(x, jax.core.Tracer)


def to_numpy(x, name: str) -> np.ndarray:
    """Convert numpy, jax or torch arrays (and nested lists) to numpy for inspection."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as error:  # noqa: BLE001 - report which input could not be read
        raise TypeError(f"{name} must be an array, got {type(x).__name__}") from error


def validate_tokens(tokens, *, vocab_size: int | None, max_seq_len: int | None, name: str = "tokens") -> None:
    """tokens: 2-D integer ids in [0, vocab_size), at most max_seq_len long (None: that check is skipped)."""
    array = to_numpy(tokens, name)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [batch, seq], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got {array.dtype}")
    if max_seq_len is not None and array.shape[1] > max_seq_len:
        raise ValueError(
            f"{name} has sequence length {array.shape[1]}, longer than max_seq_len {max_seq_len}")
    if vocab_size is None:
        return
    bad = (array < 0) | (array >= vocab_size)
    if bad.any():
        position = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} contains id {int(array[position])} at position {position}, outside the vocabulary "
            f"[0, {vocab_size})")


def validate_mask(mask, shape, name: str = "mask") -> None:
    """mask: boolean with exactly the expected shape (no silent broadcasting)."""
    array = to_numpy(mask, name)
    if array.dtype != np.bool_:
        raise TypeError(f"{name} must have dtype bool, got {array.dtype}")
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(array.shape)}")


def validate_positions(positions, shape, limit: int | None, name: str = "positions") -> None:
    """positions: integer [B, N]; below `limit` when they index the learned positional table."""
    array = to_numpy(positions, name)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got {array.dtype}")
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(array.shape)}")
    if array.size and array.min() < 0:
        raise ValueError(f"{name} must be >= 0, got {int(array.min())}")
    if limit is not None and array.size and array.max() >= limit:
        raise ValueError(f"{name} contains {int(array.max())}, outside the positional table [0, {limit})")
