"""Causal self-attention with x-transformers' masking, GQA, qk-norm, memory key/values and biases.

Masks use the finite fill -finfo(float32).max, never -inf: a fully masked padding row then stays
finite instead of turning into NaN that would leak into real tokens through the next layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange, repeat
from flax import nnx

from dpo_jax.model.layers import Linear, l2norm
from dpo_jax.model.positional import apply_rotary

MASK_VALUE = -float(jnp.finfo(jnp.float32).max)
QK_NORM_SCALE = 10.0  # x-transformers' qk_norm_scale default


class Attention(nnx.Module):
    """One x-transformers `Attention` + `Attend` pair (decoder, self-attention only)."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        self.heads, self.kv_heads, self.dim_head = config.heads, config.kv_heads, config.dim_head
        self.dtype = config.dtype
        self.qk_norm = config.attn_qk_norm
        self.num_mem_kv = config.attn_num_mem_kv
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

    def __call__(self, x, *, mask=None, attn_mask=None, rotary_angles=None, attn_bias=None, prev_attn=None):
        """x [B, N, D] -> (out [B, N, D], pre-softmax scores [B, H, N, M+N] for residual_attn).

        mask [B, N] bool: key padding and, as in x-transformers, zeroes the output at masked queries.
        attn_mask [B, N, N] bool (True = may attend) is AND-ed with the causal mask.
        attn_bias [B or 1, H, N, N] (alibi or T5) is added after scaling; memory keys get 0 bias.
        """
        batch, n = x.shape[:2]
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
        if self.kv_heads != self.heads:
            k, v = (repeat(t, "b kvh j d -> b (r kvh) j d", r=self.heads // self.kv_heads) for t in (k, v))

        sim = jnp.einsum("bhid,bhjd->bhij", q, k, preferred_element_type=jnp.float32) * self.scale
        if prev_attn is not None:
            sim = sim + prev_attn
        if attn_bias is not None:
            sim = sim + jnp.pad(attn_bias, ((0, 0), (0, 0), (0, 0), (mem, 0)))

        # key padding and the extra attention mask (memory keys are always visible)
        allowed = None
        if mask is not None:
            allowed = jnp.pad(mask, ((0, 0), (mem, 0)), constant_values=True)[:, None, None, :]
        if attn_mask is not None:
            extra = jnp.pad(attn_mask, ((0, 0), (0, 0), (mem, 0)), constant_values=True)[:, None]
            allowed = extra if allowed is None else allowed & extra
        if allowed is not None:
            sim = jnp.where(allowed, sim, MASK_VALUE)
        # x-transformers turns the causal mask off for a single query (kv-cache decoding)
        if n > 1:
            causal = jnp.triu(jnp.ones((n, n + mem), dtype=bool), k=mem + 1)
            sim = jnp.where(causal, MASK_VALUE, sim)

        pre_softmax_attn = sim
        attn = jax.nn.softmax(sim, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhij,bhjd->bhid", attn, v)
        if allowed is not None:
            row_has_key = jnp.any(allowed, axis=-1, keepdims=True)  # judged without the causal mask
            out = jnp.where(row_has_key, out, 0.0)

        out = rearrange(out, "b h n d -> b n (h d)")
        if self.to_out is not None:
            out = self.to_out(out)
        if mask is not None:
            out = jnp.where(mask[..., None], out, 0.0)
        return out, pre_softmax_attn
