"""Positional schemes computed from integer positions [B, N]: rotary, alibi, T5 relative bias.

Constants (rotary inv_freq, alibi slopes) are recomputed here, never stored as parameters.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange, repeat
from flax import nnx

ROTARY_BASE = 10000.0


def rotary_inv_freq(rot_dim: int) -> np.ndarray:
    """1 / base**(arange(0, d, 2) / d) in float32, the same arithmetic as x-transformers' buffer."""
    exponents = np.arange(0, rot_dim, 2).astype(np.float32) / np.float32(rot_dim)
    return (np.float32(1.0) / (np.float32(ROTARY_BASE) ** exponents)).astype(np.float32)


def rotary_angles(positions: jax.Array, rot_dim: int) -> jax.Array:
    """[B, N] int -> [B, N, rot_dim] angles, each frequency repeated for its (even, odd) pair."""
    inv_freq = jnp.asarray(rotary_inv_freq(rot_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    return repeat(freqs, "... d -> ... (d r)", r=2)


def rotate_half_interleaved(x: jax.Array) -> jax.Array:
    """GPT-J pairing: (x0, x1) -> (-x1, x0) for each adjacent pair."""
    pairs = rearrange(x, "... (d r) -> ... d r", r=2)
    rotated = jnp.stack((-pairs[..., 1], pairs[..., 0]), axis=-1)
    return rearrange(rotated, "... d r -> ... (d r)")


def apply_rotary(t: jax.Array, angles: jax.Array) -> jax.Array:
    """Rotate the first rot_dim features of t [B, H, N, Dh] in float32, leave the rest alone."""
    rot_dim = angles.shape[-1]
    angles = angles[:, None]  # broadcast over heads
    orig_dtype = t.dtype
    t = t.astype(jnp.float32)
    rotated, passthrough = t[..., :rot_dim], t[..., rot_dim:]
    rotated = rotated * jnp.cos(angles) + rotate_half_interleaved(rotated) * jnp.sin(angles)
    return jnp.concatenate((rotated, passthrough), axis=-1).astype(orig_dtype)


def alibi_slopes(heads: int) -> np.ndarray:
    """x-transformers' AlibiPositionalBias._get_slopes (geometric, interleaved for non powers of 2)."""

    def power_of_2_slopes(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]

    if math.log2(heads).is_integer():
        slopes = power_of_2_slopes(heads)
    else:
        closest = 2 ** math.floor(math.log2(heads))
        slopes = power_of_2_slopes(closest) + power_of_2_slopes(2 * closest)[0::2][:heads - closest]
    return np.asarray(slopes, dtype=np.float32)


def alibi_bias(positions: jax.Array, heads: int) -> jax.Array:
    """-|pos_j - pos_i| * slope_h -> [B, H, N, N]; the same formula with or without custom positions."""
    distance = jnp.abs(positions[:, None, :] - positions[:, :, None])  # [B, i, j]
    slopes = jnp.asarray(alibi_slopes(heads))
    return -distance[:, None].astype(jnp.float32) * slopes[None, :, None, None]


def t5_relative_bucket(relative_position: jax.Array, num_buckets: int, max_distance: int) -> jax.Array:
    """Causal T5 bucketing: distances into the past, exact below num_buckets//2, log-spaced after."""
    n = jnp.maximum(-relative_position, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    safe_n = jnp.maximum(n, 1).astype(jnp.float32)  # log(0) is never selected; avoid -inf noise
    large = max_exact + (jnp.log(safe_n / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return jnp.where(is_small, n, large)


class RelativePositionBias(nnx.Module):
    """T5 bias shared by all layers, times dim_head**0.5 (x-transformers' `scale`).

    x-transformers refuses custom `pos` with this bias (it asserts alibi only); here custom positions
    give the natural extension bucket(pos_j - pos_i), which equals x-transformers for default positions.
    """

    def __init__(self, heads: int, dim_head: int, *, rngs: nnx.Rngs, num_buckets: int = 32,
                 max_distance: int = 128, param_dtype=jnp.float32):
        self.scale = dim_head ** 0.5
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (num_buckets, heads), param_dtype))

    def __call__(self, positions: jax.Array) -> jax.Array:
        relative = positions[:, None, :] - positions[:, :, None]  # [B, i, j] = pos_j - pos_i
        buckets = t5_relative_bucket(relative, self.num_buckets, self.max_distance)
        values = jnp.take(self.weight[...].astype(jnp.float32), buckets, axis=0)  # [B, i, j, H]
        return rearrange(values, "b i j h -> b h i j") * self.scale
