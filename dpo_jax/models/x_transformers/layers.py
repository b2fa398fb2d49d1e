"""Norms, linear layers, feed-forward and embeddings with x-transformers' exact numerics.

Parameter names follow the torch modules (`gamma`, `g`, `weight`...) so that conversion is a table,
but Linear weights are stored JAX-style as `kernel [in, out]` (torch keeps `(out, in)`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

NORMALIZE_EPS = 1e-12  # F.normalize clamps the norm from below at this value
LAYERNORM_EPS = 1e-5   # torch nn.LayerNorm default


def l2norm(x: jax.Array) -> jax.Array:
    """F.normalize(x, dim=-1): x / max(||x||, 1e-12), no epsilon under a square root."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, NORMALIZE_EPS)


def layer_norm(x: jax.Array) -> jax.Array:
    """nn.LayerNorm(elementwise_affine=False): biased variance, eps 1e-5 inside the root."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    variance = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)
    return centered * jax.lax.rsqrt(variance + LAYERNORM_EPS)


def _param(shape, value: float, dtype) -> nnx.Param:
    return nnx.Param(jnp.full(shape, value, dtype=dtype))


class LayerNorm(nnx.Module):
    """x-transformers LayerNorm: no bias; with unit_offset the stored gamma is gain - 1 (init 0)."""

    def __init__(self, dim: int, *, unit_offset: bool = True, dtype=jnp.float32, param_dtype=jnp.float32):
        self.unit_offset = unit_offset
        self.dtype = dtype
        self.gamma = _param((dim,), 0.0 if unit_offset else 1.0, param_dtype)

    def __call__(self, x):
        gamma = self.gamma[...].astype(self.dtype) + float(self.unit_offset)
        return layer_norm(x) * gamma


class RMSNorm(nnx.Module):
    """F.normalize(x) * sqrt(d) * (g + 1): the x-transformers RMSNorm (an l2 norm, not rsqrt(mean+eps))."""

    def __init__(self, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32):
        self.scale = dim ** 0.5
        self.dtype = dtype
        self.g = _param((dim,), 0.0, param_dtype)

    def __call__(self, x):
        return l2norm(x) * self.scale * (self.g[...].astype(self.dtype) + 1.0)


class ScaleNorm(nnx.Module):
    """Like RMSNorm but with one scalar gain."""

    def __init__(self, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32):
        self.scale = dim ** 0.5
        self.dtype = dtype
        self.g = _param((1,), 0.0, param_dtype)

    def __call__(self, x):
        return l2norm(x) * self.scale * (self.g[...].astype(self.dtype) + 1.0)


class SimpleRMSNorm(nnx.Module):
    """Parameter-free F.normalize(x) * sqrt(d)."""

    def __init__(self, dim: int, **_):
        self.scale = dim ** 0.5

    def __call__(self, x):
        return l2norm(x) * self.scale


def make_norm(config, dim: int):
    """The norm class that the Decoder options select (all with unit offset, as x-transformers)."""
    kwargs = dict(dtype=config.dtype, param_dtype=config.param_dtype)
    if config.use_rmsnorm:
        return RMSNorm(dim, **kwargs)
    if config.use_simple_rmsnorm:
        return SimpleRMSNorm(dim)
    if config.use_scalenorm:
        return ScaleNorm(dim, **kwargs)
    return LayerNorm(dim, unit_offset=True, **kwargs)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias) (+ the LoRA adapter in `lora`, when one is attached); kernel is [in, out]. Init
    mirrors torch's kaiming-uniform bounds."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool, rngs: nnx.Rngs,
                 dtype=jnp.float32, param_dtype=jnp.float32):
        bound = 1.0 / math.sqrt(in_features)
        self.dtype = dtype
        self.kernel = nnx.Param(jax.random.uniform(
            rngs.params(), (in_features, out_features), param_dtype, -bound, bound))
        self.bias = nnx.Param(jax.random.uniform(
            rngs.params(), (out_features,), param_dtype, -bound, bound)) if use_bias else None
        self.lora = nnx.data(None)  # the slot of a LoRA adapter (dpo_jax.apply_lora)

    def __call__(self, x):
        y = x @ self.kernel[...].astype(self.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora is not None:  # a low-rank adapter (models.lora), added as PEFT does: base(x) + lora(x)
            y = y + self.lora(x)
        return y


class FeedForward(nnx.Module):
    """Linear -> GELU (exact erf) or SiLU -> Linear; with ff_glu one projection gives [up | gate].

    The GLU projection always has a bias in x-transformers; ff_no_bias removes only the others.
    """

    def __init__(self, config, *, rngs: nnx.Rngs):
        dim, inner = config.dim, int(config.dim * config.ff_mult)
        kw = dict(rngs=rngs, dtype=config.dtype, param_dtype=config.param_dtype)
        self.glu = config.ff_glu
        self.swish = config.ff_swish
        if self.glu:
            self.proj_in = Linear(dim, inner * 2, use_bias=True, **kw)
        else:
            self.proj_in = Linear(dim, inner, use_bias=not config.ff_no_bias, **kw)
        self.proj_out = Linear(inner, dim, use_bias=not config.ff_no_bias, **kw)

    def activation(self, x):
        return jax.nn.silu(x) if self.swish else jax.nn.gelu(x, approximate=False)

    def __call__(self, x):
        hidden = self.proj_in(x)
        if self.glu:
            up, gate = jnp.split(hidden, 2, axis=-1)
            hidden = up * self.activation(gate)
        else:
            hidden = self.activation(hidden)
        return self.proj_out(hidden)


class Embedding(nnx.Module):
    """A lookup table `weight [num, dim]` (torch nn.Embedding layout and init N(0, 1))."""

    def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32, std: float = 1.0):
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (num, dim), param_dtype) * std)

    def __call__(self, ids):
        return jnp.take(self.weight[...], ids, axis=0)


class AbsolutePositionalEmbedding(nnx.Module):
    """Learned table scaled by d**-0.5 (l2-normalised with scale 1 under l2norm_embed)."""

    def __init__(self, dim: int, max_seq_len: int, *, l2norm_embed: bool, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.l2norm_embed = l2norm_embed
        self.scale = 1.0 if l2norm_embed else dim ** -0.5
        self.emb = Embedding(max_seq_len, dim, rngs=rngs, param_dtype=param_dtype,
                             std=1e-5 if l2norm_embed else 1.0)

    def __call__(self, positions, dtype):
        pos_emb = self.emb(positions).astype(dtype) * self.scale
        return l2norm(pos_emb) if self.l2norm_embed else pos_emb
