"""The inputs every Hugging Face decoder takes, checked on the host and turned into one `AttentionMask`.

`decoder_inputs` validates concrete tokens, an optional `attention_mask` [B, N] bool (transformers' padding
mask: True on real tokens) and `positions` [B, N] (prefix sharing restarts them per branch; default 0..N-1),
and folds the padding mask into the layout's `AttentionMask` (segment / branch ids). `layer_mask` adds a
layer's sliding window, measured on the positions, so a prefix-shared branch keeps its unshared window.
"""

from __future__ import annotations

import jax.numpy as jnp

from dpo_jax.models.validation import is_concrete, validate_mask, validate_positions, validate_tokens
from dpo_jax.ops.attention import AttentionMask

__all__ = ["decoder_inputs", "layer_mask"]


def decoder_inputs(tokens, *, vocab_size: int, max_seq_len: int | None, attention_mask=None, positions=None,
                   attention: AttentionMask | None = None):
    """(tokens [B, N] int32, positions [B, N], AttentionMask) after the host-side checks."""
    if is_concrete(tokens):
        validate_tokens(tokens, vocab_size=vocab_size, max_seq_len=max_seq_len)
    tokens = jnp.asarray(tokens)
    shape = tuple(tokens.shape)
    if attention_mask is not None and is_concrete(attention_mask):
        validate_mask(attention_mask, shape, "attention_mask")
    if positions is not None and is_concrete(positions):
        validate_positions(positions, shape, None)
    positions = (jnp.broadcast_to(jnp.arange(shape[1], dtype=jnp.int32)[None], shape) if positions is None
                 else jnp.asarray(positions))
    attention = AttentionMask() if attention is None else attention
    if attention_mask is not None:
        padding = jnp.asarray(attention_mask)
        attention = attention.replace(key_padding=padding if attention.key_padding is None
                                      else attention.key_padding & padding)
    if attention.positions is None:
        attention = attention.replace(positions=positions)
    return tokens, positions, attention


def layer_mask(attention: AttentionMask, window: int | None) -> AttentionMask:
    """The mask of a layer: `attention`, plus the sliding window (query sees keys < window positions back)."""
    return attention if window is None else attention.replace(sliding_window=window)
