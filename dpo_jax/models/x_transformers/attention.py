"""x-transformers' `Attention`: projections, GQA, qk-norm and memory key/values around `ops.attention.attend`.

The attention math itself (scores, masks, softmax) is `dpo_jax.ops.attention.attend`, as x-transformers keeps
it in `Attend`; this module holds what is particular to x-transformers: its projections, qk-norm with its
scale of 10, memory key/values seen by every query, query head h reading kv head h % kv_heads, and the
pre-softmax scores handed to the next layer for residual attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange, repeat
from flax import nnx

from dpo_jax.models.x_transformers.layers import Linear, l2norm
from dpo_jax.models.x_transformers.positional import apply_rotary
from dpo_jax.ops.attention import AttentionMask, attend

QK_NORM_SCALE = 10.0  # x-transformers' qk_norm_scale default


class Attention(nnx.Module):
    """One x-transformers `Attention` + `Attend` pair (decoder, self-attention only)."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        self.heads, self.kv_heads, self.dim_head = config.heads, config.kv_heads, config.dim_head
        self.dtype = config.dtype
        self.qk_norm = config.attn_qk_norm
        self.num_mem_kv = config.attn_num_mem_kv
        self.return_scores = config.residual_attn  # only residual attention reads the pre-softmax scores
        kw = dict(use_bias=False, rngs=rngs, dtype=config.dtype, param_dtype=config.param_dtype)
        q_dim, kv_dim = self.heads * self.dim_head, self.kv_heads * self.dim_head
        self.to_q = Linear(config.dim, q_dim, **kw)
        self.to_k = Linear(config.dim, kv_dim, **kw)
        self.to_v = Linear(config.dim, kv_dim, **kw)
        self.to_out = Linear(q_dim, config.dim, **kw) if config.has_to_out else None

        if self.qk_norm and config.attn_qk_norm_dim_scale:
            init = self.dim_head ** 0.25
            self.qk_norm_q_scale = nnx.Param(jnp.full((self.heads, 1, self.dim_head), init, config.param_dtype))
            self.qk_norm_k_scale = nnx.Param(jnp.full((self.kv_heads, 1, self.dim_head), init, config.param_dtype))
        else:
            self.qk_norm_q_scale = self.qk_norm_k_scale = None
        use_dim_scale = self.qk_norm_q_scale is not None
        self.scale = QK_NORM_SCALE if (self.qk_norm and not use_dim_scale) else self.dim_head ** -0.5

        if self.num_mem_kv > 0:
            shape = (self.kv_heads, self.num_mem_kv, self.dim_head)
            self.mem_k = nnx.Param(jax.random.normal(rngs.params(), shape, config.param_dtype))
            self.mem_v = nnx.Param(jax.random.normal(rngs.params(), shape, config.param_dtype))
        else:
            self.mem_k = self.mem_v = None

    def _normalize_qk(self, t, scale_param):
        t = l2norm(t)
        if scale_param is not None:
            t = t * scale_param[...].astype(t.dtype)
        return t

    def __call__(self, x, *, attention: AttentionMask, zero_queries=None, rotary_angles=None, attn_bias=None,
                 prev_attn=None, backend="auto"):
        """x [B, N, D] -> (out [B, N, D], pre-softmax scores [B, H, N, M+N] with residual_attn, else None).

        attention: which keys each query sees (`AttentionMask`; the causal rule is off for a single query,
        as x-transformers does for kv-cache decoding). zero_queries [B, N] bool: x-transformers' `mask`
        also zeroes the output at masked query positions. attn_bias [B or 1, H, N, N] (alibi or T5) is added
        after scaling; memory keys get 0 bias.
        """
        batch = x.shape[0]
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        k = rearrange(self.to_k(x), "b n (h d) -> b h n d", h=self.kv_heads)
        v = rearrange(self.to_v(x), "b n (h d) -> b h n d", h=self.kv_heads)

        if self.qk_norm:
            q = self._normalize_qk(q, self.qk_norm_q_scale)
            k = self._normalize_qk(k, self.qk_norm_k_scale)

        if rotary_angles is not None:
            q, k = apply_rotary(q, rotary_angles), apply_rotary(k, rotary_angles)

        mem = self.num_mem_kv
        if mem > 0:
            mem_k = self.mem_k[...].astype(k.dtype)
            if self.qk_norm:
                mem_k = self._normalize_qk(mem_k, self.qk_norm_k_scale)
            mem_k, mem_v = (repeat(t, "h m d -> b h m d", b=batch) for t in (mem_k, self.mem_v[...].astype(v.dtype)))
            k = jnp.concatenate((mem_k, k), axis=2)
            v = jnp.concatenate((mem_v, v), axis=2)

        # query head h reads kv head h % kv_heads (einops tile), not the Hugging Face h // groups
        out, scores = attend(q, k, v, mask=attention, scale=self.scale, bias=attn_bias, prev_scores=prev_attn,
                             num_prefix_keys=mem, kv_layout="tiled", return_scores=self.return_scores,
                             backend=backend)

        out = rearrange(out, "b h n d -> b n (h d)")
        if self.to_out is not None:
            out = self.to_out(out)
        if zero_queries is not None:
            out = jnp.where(zero_queries[..., None], out, 0.0)
        return out, scores
