"""Scaled dot-product attention behind one seam: models call `attend`, a backend computes it.

A model keeps its own numerics (projections, rotary, qk-norm, memory key/values, biases) and hands `attend`
its queries, keys and values with a structured `AttentionMask` - causal or not, key padding, segment ids
(packing), branch ids (prefix sharing), a sliding window - never a dense [N, N] matrix of its own making:
a kernel needs the structure (causal, segment ids) to skip masked blocks instead of reading a mask.

Backends (`ATTENTION_BACKENDS`), one module each:

- "xla" (`einsum.py`): two einsums, float32 scores; computes everything; the parity oracle.
- "jax_nn" (`dot_product.py`): `jax.nn.dot_product_attention(implementation="xla")`, the cuDNN path's argument
  mapping run by XLA (what the CPU tests check the cuDNN mapping with).
- "cudnn" (`dot_product.py`): cuDNN's fused flash attention, bfloat16/float16 on NVIDIA GPUs.
- "splash" (`splash.py`): the Pallas TPU splash kernel (interpret mode on CPU).
- "auto" (`choice.py`): the fastest backend that can express the call on this platform, else "xla"; on CPU
  always "xla". The decision is logged and counted (`attention_report`).

An explicit backend that cannot express a call raises a ValueError naming what it cannot do. Every backend
returns 0 on the rows `AttentionMask.silent_queries` names (padding queries, queries with no visible key).
"""

from __future__ import annotations

import jax.numpy as jnp

from dpo_jax.ops.attention.call import AttentionCall, Platform, current_platform
from dpo_jax.ops.attention.choice import (ATTENTION_BACKENDS, BACKENDS, Choice, attention_report, choose, record,
                                          refusal, reset_attention_report, validate_backend)
from dpo_jax.ops.attention.heads import KV_LAYOUTS, validate_kv_layout
from dpo_jax.ops.attention.mask import MASK_VALUE, PROMPT_BRANCH, AttentionMask

__all__ = ["ATTENTION_BACKENDS", "AttentionCall", "AttentionMask", "Choice", "KV_LAYOUTS", "MASK_VALUE",
           "PROMPT_BRANCH", "Platform", "attend", "attention_report", "choose", "current_platform", "refusal",
           "reset_attention_report", "validate_backend"]

# what cuDNN raises at trace time for a shape or setup it rejects (jax._src.cudnn.fused_attention_stablehlo)
_KERNEL_REFUSALS = (NotImplementedError, ValueError, RuntimeError, TypeError)


def _check_shapes(q, k, v, num_prefix_keys, prev_scores, bias):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attend expects q [B, H, N, D] and k, v [B, KVH, P + N, D], got shapes "
                         f"{q.shape}, {k.shape}, {v.shape}")
    batch, heads, length, _ = q.shape
    if k.shape != v.shape[:3] + (k.shape[3],) or k.shape[0] != batch:
        raise ValueError(f"k {k.shape} and v {v.shape} must share batch, heads and length with each other and "
                         f"batch {batch} with q")
    kv_heads = k.shape[1]
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of kv heads ({kv_heads})")
    if k.shape[2] != num_prefix_keys + length:
        raise ValueError(f"k has {k.shape[2]} positions; expected num_prefix_keys + N = {num_prefix_keys} + "
                         f"{length}")
    if prev_scores is not None and prev_scores.shape[-2:] != (length, num_prefix_keys + length):
        raise ValueError(f"prev_scores {prev_scores.shape} must end in (N, P + N) = "
                         f"({length}, {num_prefix_keys + length})")
    if bias is not None and bias.shape[-2:] != (length, length):
        raise ValueError(f"bias {bias.shape} must end in (N, N) = ({length}, {length})")


def attend(q, k, v, *, mask: AttentionMask | None = None, scale: float, bias=None, prev_scores=None,
           num_prefix_keys: int = 0, kv_layout: str = "grouped", softcap: float | None = None,
           return_scores: bool = False, backend: str = "auto"):
    """Attention of q [B, H, N, D] over k, v [B, KVH, P + N, D] -> (out [B, H, N, D], scores or None).

    The first `num_prefix_keys` keys (x-transformers' memory key/values) are visible to every query and
    outside every mask rule; `mask` describes the other N keys, which are the query positions themselves.
    `scale` multiplies q k^T; `softcap` (Gemma 2) then maps scores to tanh(s / c) * c; `prev_scores`
    [B, H, N, P + N] (x-transformers' residual attention) and `bias` [B or 1, H, N, N] (alibi, T5; 0 on
    prefix keys) are added before masking. With `return_scores` the pre-softmax scores come back too (only
    the "xla" backend can). `kv_layout`: which kv head a query head reads ("grouped" h // G, "tiled" h % KVH).
    `backend`: one of `ATTENTION_BACKENDS`.
    """
    validate_backend(backend)
    validate_kv_layout(kv_layout)
    _check_shapes(q, k, v, num_prefix_keys, prev_scores, bias)
    mask = AttentionMask() if mask is None else mask
    window = mask.sliding_window
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"sliding_window must be a positive int or None, got {window!r}")
    call = AttentionCall.of(q, k, v, mask=mask, bias=bias, prev_scores=prev_scores,
                            num_prefix_keys=num_prefix_keys, softcap=softcap, return_scores=return_scores)
    choice = choose(backend, call)
    arguments = dict(mask=mask, scale=scale, bias=bias, prev_scores=prev_scores, num_prefix_keys=num_prefix_keys,
                     kv_layout=kv_layout, softcap=softcap, return_scores=return_scores)
    function = BACKENDS[choice.backend][0]
    try:
        out, scores = function(q, k, v, **arguments)
    except _KERNEL_REFUSALS as error:
        if backend != "auto" or choice.backend == "xla":
            raise
        # the kernel refused at trace time something the static checks let through: the oracle computes it
        choice = Choice("auto", "xla", f"fallback: {choice.backend} raised {type(error).__name__}: "
                                       f"{str(error).splitlines()[0][:200]}", choice.call)
        out, scores = BACKENDS["xla"][0](q, k, v, **arguments)
    record(choice)
    silent = mask.silent_queries(q.shape[2], num_prefix_keys)
    if silent is not None:
        out = jnp.where(silent[:, None, :, None], jnp.zeros((), out.dtype), out)
    return out, scores
