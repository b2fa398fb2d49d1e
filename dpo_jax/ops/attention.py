"""Scaled dot-product attention behind one seam: models call `attend`, a backend computes it.

A model keeps its own numerics (projections, rotary, qk-norm, memory key/values, biases) and hands `attend`
its queries, keys and values with a structured `AttentionMask` - causal or not, key padding, segment ids
(packing), branch ids (prefix sharing), a sliding window - never a dense [N, N] matrix of its own making:
a kernel needs the structure (causal, segment ids) to skip masked blocks instead of reading a mask.

Backend "xla" is the einsum path: scores in float32, masked entries filled with -finfo(float32).max (never
-inf: a fully masked padding row stays finite instead of turning into NaN that would leak into real tokens
through the next layer), softmax in float32, and a query row with no visible key returns 0. It is the parity
oracle every other backend is tested against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

MASK_VALUE = -float(jnp.finfo(jnp.float32).max)
ATTENTION_BACKENDS = ("xla",)
KV_LAYOUTS = ("grouped", "tiled")
PROMPT_BRANCH = 0  # prefix sharing: keys of branch 0 (the prompt) are visible to every branch of the segment


@struct.dataclass
class AttentionMask:
    """Which keys each query may see, as structure (arrays [B, N] over the N query positions, or None).

    causal: query i sees keys j <= i (by index in the row).
    key_padding [B, N] bool: True on real keys (x-transformers' `mask`).
    segment_ids [B, N] int: a query sees only keys of its own segment (packing; pads may form their own).
    branch_ids [B, N] int: within a segment, a key of branch 0 is seen by everyone, any other key only by its
      own branch (prefix sharing: the rejected branch never sees the chosen tokens).
    dense [B, N, N] bool: an explicit matrix AND-ed with the rest (True = may attend).
    sliding_window: a query sees keys less than this many positions back (Mistral, Gemma), measured on
      `positions` [B, N] (row indices when None), so a prefix-shared branch keeps its unshared window.
    """

    key_padding: jax.Array | None = None
    segment_ids: jax.Array | None = None
    branch_ids: jax.Array | None = None
    dense: jax.Array | None = None
    positions: jax.Array | None = None
    causal: bool = struct.field(pytree_node=False, default=True)
    sliding_window: int | None = struct.field(pytree_node=False, default=None)

    def allowed(self, length: int):
        """[B or 1, N or 1, N] bool of every rule except causality for rows of `length`, or None if none."""
        allowed = None

        def both(a, b):
            return b if a is None else a & b

        if self.key_padding is not None:
            allowed = both(allowed, jnp.asarray(self.key_padding)[:, None, :])
        if self.dense is not None:
            allowed = both(allowed, jnp.asarray(self.dense))
        if self.segment_ids is not None:
            segments = jnp.asarray(self.segment_ids)
            allowed = both(allowed, segments[:, :, None] == segments[:, None, :])
        if self.branch_ids is not None:
            branches = jnp.asarray(self.branch_ids)
            key, query = branches[:, None, :], branches[:, :, None]
            allowed = both(allowed, (key == PROMPT_BRANCH) | (key == query))
        if self.sliding_window is not None:
            positions = jnp.arange(length)[None] if self.positions is None else jnp.asarray(self.positions)
            allowed = both(allowed, (positions[:, :, None] - positions[:, None, :]) < self.sliding_window)
        return allowed


def validate_backend(backend: str) -> None:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {', '.join(ATTENTION_BACKENDS)}")


def _expand_kv(t, heads, kv_layout):
    """[B, KVH, M, D] -> [B, H, M, D]: query head h reads kv head h // (H / KVH) ("grouped", Hugging Face's
    repeat_kv) or h % KVH ("tiled", x-transformers' einops repeat)."""
    kv_heads = t.shape[1]
    if kv_heads == heads:
        return t
    if kv_layout == "grouped":
        return jnp.repeat(t, heads // kv_heads, axis=1)
    return jnp.tile(t, (1, heads // kv_heads, 1, 1))


def attend(q, k, v, *, mask: AttentionMask | None = None, scale: float, bias=None, prev_scores=None,
           num_prefix_keys: int = 0, kv_layout: str = "grouped", softcap: float | None = None,
           return_scores: bool = False, backend: str = "xla"):
    """Attention of q [B, H, N, D] over k, v [B, KVH, P + N, D] -> (out [B, H, N, D], scores or None).

    The first `num_prefix_keys` keys (x-transformers' memory key/values) are visible to every query and
    outside every mask rule; `mask` describes the other N keys, which are the query positions themselves.
    `scale` multiplies q k^T; `softcap` (Gemma 2) then maps scores to tanh(s / c) * c; `prev_scores`
    [B, H, N, P + N] (x-transformers' residual attention) and `bias` [B or 1, H, N, N] (alibi, T5; 0 on
    prefix keys) are added before masking. With `return_scores` the pre-softmax scores come back too.
    """
    validate_backend(backend)
    if kv_layout not in KV_LAYOUTS:
        raise ValueError(f"unknown kv_layout {kv_layout!r}; expected one of {', '.join(KV_LAYOUTS)}")
    mask = AttentionMask() if mask is None else mask
    heads, n = q.shape[1], q.shape[2]
    prefix = num_prefix_keys
    k, v = _expand_kv(k, heads, kv_layout), _expand_kv(v, heads, kv_layout)

    sim = jnp.einsum("bhid,bhjd->bhij", q, k, preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        sim = jnp.tanh(sim / softcap) * softcap
    if prev_scores is not None:
        sim = sim + prev_scores
    if bias is not None:
        sim = sim + jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (prefix, 0)))

    allowed = mask.allowed(n)
    if allowed is not None:
        allowed = jnp.pad(allowed, ((0, 0), (0, 0), (prefix, 0)), constant_values=True)[:, None]
        sim = jnp.where(allowed, sim, MASK_VALUE)
    if mask.causal:
        causal = jnp.triu(jnp.ones((n, n + prefix), dtype=bool), k=prefix + 1)
        sim = jnp.where(causal, MASK_VALUE, sim)

    scores = sim if return_scores else None
    attn = jax.nn.softmax(sim, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhij,bhjd->bhid", attn, v)
    if allowed is not None:
        row_has_key = jnp.any(allowed, axis=-1, keepdims=True)  # judged without the causal mask
        out = jnp.where(row_has_key, out, 0.0)
    return out, scores
