"""Building blocks of the Hugging Face decoders, with transformers' numerics (checked against 5.24's source).

Attribute names follow the torch modules (`q_proj`, `gate_proj`, `weight`, ...) so that a family's key table
reads like the checkpoint; linear weights are stored JAX-style as `kernel [in, out]` (torch: `(out, in)`).
Every module computes in `dtype` on parameters stored in `param_dtype` (the compute-dtype convention of
`models.precision`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dpo_jax.models.hf.rope import apply_rotary
from dpo_jax.ops.attention import AttentionMask, attend

__all__ = ["Linear", "Embedding", "RMSNorm", "OffsetRMSNorm", "GatedMLP", "Attention", "ACTIVATIONS"]

INIT_STD = 0.02  # transformers' initializer_range default: only fresh (not loaded) models use it


def _gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


def _gelu_exact(x):
    return jax.nn.gelu(x, approximate=False)


# transformers' ACT2FN names -> the same function
ACTIVATIONS = {"silu": jax.nn.silu, "swish": jax.nn.silu, "gelu_pytorch_tanh": _gelu_tanh, "gelu_new": _gelu_tanh,
               "gelu": _gelu_exact}


class Linear(nnx.Module):
    """y = x @ kernel (+ bias) (+ the LoRA adapter in `lora`, when one is attached); kernel [in, out]."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        self.dtype = dtype
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (in_features, out_features), param_dtype) * INIT_STD)
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
        self.lora = nnx.data(None)  # the slot of a LoRA adapter (dpo_jax.apply_lora)

    def __call__(self, x):
        y = x @ self.kernel[...].astype(self.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora is not None:  # a low-rank adapter (models.lora), added as PEFT does: base(x) + lora(x)
            y = y + self.lora(x)
        return y


class Embedding(nnx.Module):
    """A lookup table `weight [num, dim]` (torch nn.Embedding layout)."""

    def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (num, dim), param_dtype) * INIT_STD)

    def __call__(self, ids, dtype):
        return jnp.take(self.weight[...], ids, axis=0).astype(dtype)


def _normalized_float32(x, eps):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


class RMSNorm(nnx.Module):
    """Llama's RMSNorm: the RMS taken in float32, cast back, then times `weight` (init 1)."""

    def __init__(self, dim: int, *, eps: float, dtype=jnp.float32, param_dtype=jnp.float32):
        self.eps = eps
        self.dtype = dtype
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x):
        return self.weight[...].astype(x.dtype) * _normalized_float32(x, self.eps).astype(x.dtype)


class OffsetRMSNorm(nnx.Module):
    """Gemma's RMSNorm: float32 x / RMS times (1 + `weight`) (init 0), cast back only at the end."""

    def __init__(self, dim: int, *, eps: float, dtype=jnp.float32, param_dtype=jnp.float32):
        self.eps = eps
        self.dtype = dtype
        self.weight = nnx.Param(jnp.zeros((dim,), param_dtype))

    def __call__(self, x):
        gain = 1.0 + self.weight[...].astype(jnp.float32)
        return (_normalized_float32(x, self.eps) * gain).astype(x.dtype)


class GatedMLP(nnx.Module):
    """down_proj(act(gate_proj(x)) * up_proj(x))."""

    def __init__(self, hidden: int, intermediate: int, *, activation: str, use_bias: bool, rngs: nnx.Rngs,
                 dtype=jnp.float32, param_dtype=jnp.float32):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not implemented; expected one of {sorted(ACTIVATIONS)}")
        kw = dict(use_bias=use_bias, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.activation = activation
        self.gate_proj = Linear(hidden, intermediate, **kw)
        self.up_proj = Linear(hidden, intermediate, **kw)
        self.down_proj = Linear(intermediate, hidden, **kw)

    def __call__(self, x):
        return self.down_proj(ACTIVATIONS[self.activation](self.gate_proj(x)) * self.up_proj(x))


class Attention(nnx.Module):
    """Grouped-query self-attention with rotary q/k; optional q/k biases, per-head q/k norms and a score softcap.

    Query head h reads kv head h // (heads / kv_heads) (transformers' repeat_kv: `kv_layout="grouped"`).
    `qk_norm` is None, "rms" (Qwen3) or "offset_rms" (Gemma 3), applied per head before the rotation.
    """

    def __init__(self, *, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, qkv_bias: bool,
                 out_bias: bool, scale: float, softcap: float | None = None, qk_norm: str | None = None,
                 norm_eps: float = 1e-6, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        if num_heads % num_kv_heads:
            raise ValueError(f"num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads "
                             f"({num_kv_heads})")
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale, self.softcap = scale, softcap
        self.q_proj = Linear(hidden_size, num_heads * head_dim, use_bias=qkv_bias, **kw)
        self.k_proj = Linear(hidden_size, num_kv_heads * head_dim, use_bias=qkv_bias, **kw)
        self.v_proj = Linear(hidden_size, num_kv_heads * head_dim, use_bias=qkv_bias, **kw)
        self.o_proj = Linear(num_heads * head_dim, hidden_size, use_bias=out_bias, **kw)
        norms = {None: None, "rms": RMSNorm, "offset_rms": OffsetRMSNorm}
        if qk_norm not in norms:
            raise ValueError(f"qk_norm must be one of {list(norms)}, got {qk_norm!r}")
        norm = norms[qk_norm]
        self.q_norm = None if norm is None else norm(head_dim, eps=norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.k_norm = None if norm is None else norm(head_dim, eps=norm_eps, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x, cos, sin, mask: AttentionMask, *, backend: str = "xla"):
        batch, length, _ = x.shape

        def heads(t, count):
            return t.reshape(batch, length, count, self.head_dim)

        q = heads(self.q_proj(x), self.num_heads)
        k = heads(self.k_proj(x), self.num_kv_heads)
        v = heads(self.v_proj(x), self.num_kv_heads)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out, _ = attend(q, k, v, mask=mask, scale=self.scale, softcap=self.softcap, kv_layout="grouped",
                        backend=backend)
        out = out.transpose(0, 2, 1, 3).reshape(batch, length, self.num_heads * self.head_dim)
        return self.o_proj(out)
