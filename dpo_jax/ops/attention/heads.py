"""Which kv head a query head reads (GQA), in the two conventions the model families use.

"grouped" (Hugging Face's `repeat_kv`): query head h reads kv head h // (H / KVH).
"tiled" (x-transformers' einops repeat): query head h reads kv head h % KVH.

Kernels (jax.nn.dot_product_attention, splash) implement "grouped" natively; `grouped_heads` reorders the
query heads of a "tiled" model so that the grouped rule reads the right kv head, and `ungrouped_heads` puts
the outputs back. The einsum oracle instead repeats the kv heads (`expand_kv`).
"""

from __future__ import annotations

import jax.numpy as jnp

KV_LAYOUTS = ("grouped", "tiled")


def validate_kv_layout(kv_layout: str) -> None:
    if kv_layout not in KV_LAYOUTS:
        raise ValueError(f"unknown kv_layout {kv_layout!r}; expected one of {', '.join(KV_LAYOUTS)}")


def expand_kv(t, heads: int, kv_layout: str):
    """[B, KVH, M, D] -> [B, H, M, D]: kv head of each query head under `kv_layout`."""
    kv_heads = t.shape[1]
    if kv_heads == heads:
        return t
    if kv_layout == "grouped":
        return jnp.repeat(t, heads // kv_heads, axis=1)
    return jnp.tile(t, (1, heads // kv_heads, 1, 1))


def grouped_heads(t, kv_heads: int, kv_layout: str, axis: int = 1):
    """Query heads on `axis` reordered so that position p reads kv head p // G (G = H / KVH).

    Tiled head h = g * KVH + kv goes to position kv * G + g; grouped (or MHA) needs no reorder.
    """
    heads = t.shape[axis]
    if kv_layout == "grouped" or kv_heads == heads or kv_heads == 1:
        return t
    groups = heads // kv_heads
    shape = t.shape[:axis] + (groups, kv_heads) + t.shape[axis + 1:]
    t = jnp.swapaxes(t.reshape(shape), axis, axis + 1)
    return t.reshape(t.shape[:axis] + (heads,) + t.shape[axis + 2:])


def ungrouped_heads(t, kv_heads: int, kv_layout: str, axis: int = 1):
    """The inverse of `grouped_heads`: outputs back in the model's own head order."""
    heads = t.shape[axis]
    if kv_layout == "grouped" or kv_heads == heads or kv_heads == 1:
        return t
    groups = heads // kv_heads
    shape = t.shape[:axis] + (kv_heads, groups) + t.shape[axis + 1:]
    t = jnp.swapaxes(t.reshape(shape), axis, axis + 1)
    return t.reshape(t.shape[:axis] + (heads,) + t.shape[axis + 2:])
