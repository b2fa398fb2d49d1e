"""Backend "xla": attention as two einsums, the parity oracle every other backend is tested against.

Scores in float32, masked entries filled with -finfo(float32).max (never -inf: a fully masked padding row
stays finite instead of turning into NaN that would leak into real tokens through the next layer), softmax
in float32. It expresses everything a model can ask for (prefix keys, bias, residual scores, softcap), at the
cost of a materialised float32 [B, H, N, P + N] score tensor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dpo_jax.ops.attention.call import AttentionCall
from dpo_jax.ops.attention.heads import expand_kv
from dpo_jax.ops.attention.mask import MASK_VALUE, AttentionMask


def unsupported(call: AttentionCall) -> str | None:
    """The einsum path computes every call."""
    return None


def einsum_attention(q, k, v, *, mask: AttentionMask, scale: float, bias=None, prev_scores=None,
                     num_prefix_keys: int = 0, kv_layout: str = "grouped", softcap=None, return_scores=False):
    """(out [B, H, N, D], pre-softmax scores [B, H, N, P + N] or None); arguments as `attend`'s."""
    heads, n = q.shape[1], q.shape[2]
    prefix = num_prefix_keys
    k, v = expand_kv(k, heads, kv_layout), expand_kv(v, heads, kv_layout)

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
    return jnp.einsum("bhij,bhjd->bhid", attn, v), scores
