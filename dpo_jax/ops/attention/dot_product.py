"""Backends "cudnn" and "jax_nn": `jax.nn.dot_product_attention` with implementation "cudnn" or "xla".

Both go through one argument mapping, so the CPU tests of "jax_nn" (XLA) check everything of the cuDNN path
but the kernel itself:

- plain causal rows (the padded layout: right padding needs no mask) -> `is_causal=True` and no mask tensor,
  which cuDNN turns into its CAUSAL mask type and skips the masked blocks;
- a sliding window over row indices with causality -> `local_window_size=(window - 1, 0)`, native too;
- every other rule (key padding, segment ids of packed rows, branch ids of prefix-shared rows, dense masks,
  windows over restarted positions) -> one boolean mask [B, 1, N, N] AND-ed with `is_causal`; cuDNN reads it
  as a bias in the compute dtype (no block skipping beyond causality);
- GQA in either head convention (`heads.grouped_heads`); layout [B, H, N, D] <-> jax.nn's [B, N, H, D].

cuDNN computes in bfloat16/float16 only, takes no residual scores, memory key/values, additive bias or
softcap, and needs head_dim <= 256 on Hopper (128 before) in multiples of 8 and, with a mask, an even length;
`unsupported_cudnn` names what a call asks beyond that. "jax_nn" (XLA) also takes an additive bias and prefix
keys, as an explicit mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dpo_jax.ops.attention.call import AttentionCall
from dpo_jax.ops.attention.heads import grouped_heads, ungrouped_heads
from dpo_jax.ops.attention.mask import AttentionMask

NATIVE_RULES = ("sliding_window",)  # with causality, a window over row indices needs no mask tensor
HALF_DTYPES = ("bfloat16", "float16")


def jax_version() -> tuple[int, ...]:
    parts = []
    for part in jax.__version__.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


# From jax 0.11.1 on, cuDNN's backward no longer computes a [B, H, N, N] bias gradient for a boolean mask that
# nobody can use (jax-ml/jax#34685); before, a masked cuDNN call wastes that memory and time.
MASKED_CUDNN_MIN_JAX = (0, 11, 1)


def needs_mask_tensor(call: AttentionCall) -> bool:
    """True if the call needs the explicit boolean mask (anything beyond causality and an index window)."""
    native = NATIVE_RULES if call.causal else ()
    return call.num_prefix_keys > 0 or any(rule not in native for rule in call.rules)


def unsupported_jax_nn(call: AttentionCall) -> str | None:
    if call.return_scores or call.prev_scores:
        return "jax.nn.dot_product_attention returns no scores: residual attention needs backend 'xla'"
    if call.softcap is not None:
        return "jax.nn.dot_product_attention has no score softcapping (softcap); use backend 'xla'"
    if not call.same_dtypes:
        return "jax.nn.dot_product_attention needs q, k and v in one dtype"
    return None


def unsupported_cudnn(call: AttentionCall) -> str | None:
    platform = call.platform
    if platform.name != "gpu" or not platform.cuda:
        return f"cuDNN needs an NVIDIA GPU; this computation runs on {platform.name}"
    if call.dtype not in HALF_DTYPES:
        return (f"cuDNN attention computes in bfloat16/float16 only, got {call.dtype} (set compute_dtype="
                f"'bfloat16'; float32 parity runs use backend 'xla')")
    if not call.same_dtypes:
        return "cuDNN attention needs q, k and v in one dtype"
    extras = call.extras()
    if extras:
        return "cuDNN's fused attention cannot take " + "; ".join(extras)
    limit = 256 if platform.hopper_or_later else 128
    if call.head_dim > limit or call.head_dim % 8:
        return f"cuDNN attention needs head_dim <= {limit} and a multiple of 8 on this GPU, got {call.head_dim}"
    if needs_mask_tensor(call) and call.length % 2:
        return (f"cuDNN's masked training kernel needs an even sequence length, got {call.length} "
                f"(mask rules: {', '.join(call.rules)})")
    return None


def dot_product_arguments(mask: AttentionMask, length: int, num_prefix_keys: int):
    """(is_causal, boolean mask [B or 1, 1, N, P + N] or None, local_window_size or None) for jax.nn."""
    window = None
    if num_prefix_keys == 0:
        if mask.causal and mask.sliding_window is not None and mask.positions is None:
            window = (mask.sliding_window - 1, 0)
            allowed = mask.allowed(length, window=False)
        else:
            allowed = mask.allowed(length)
        if allowed is None:
            return mask.causal, None, window
        rows = allowed.shape[0]
        return mask.causal, jnp.broadcast_to(allowed, (rows, length, length))[:, None], window
    # prefix keys (memory key/values) are seen by every query: an explicit mask, causality shifted by P
    allowed = mask.allowed(length)
    allowed = jnp.ones((1, length, length), bool) if allowed is None else allowed
    allowed = jnp.broadcast_to(allowed, (allowed.shape[0], length, length))
    allowed = jnp.pad(allowed, ((0, 0), (0, 0), (num_prefix_keys, 0)), constant_values=True)
    if mask.causal:
        allowed = allowed & jnp.tril(jnp.ones((length, length + num_prefix_keys), bool), k=num_prefix_keys)
    return False, allowed[:, None], None


def dot_product_attention(q, k, v, *, mask: AttentionMask, scale: float, bias=None, num_prefix_keys: int = 0,
                          kv_layout: str = "grouped", implementation: str):
    """out [B, H, N, D] through `jax.nn.dot_product_attention(implementation=...)`."""
    kv_heads, length = k.shape[1], q.shape[2]
    is_causal, allowed, window = dot_product_arguments(mask, length, num_prefix_keys)
    if bias is not None:
        if bias.shape[1] != 1:
            bias = grouped_heads(bias, kv_heads, kv_layout)
        bias = jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (num_prefix_keys, 0)))
    q = grouped_heads(q, kv_heads, kv_layout)
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=allowed, scale=scale, is_causal=is_causal,
                                       local_window_size=window, implementation=implementation)
    return ungrouped_heads(jnp.swapaxes(out, 1, 2), kv_heads, kv_layout)


def jax_nn_attention(q, k, v, *, mask, scale, bias=None, prev_scores=None, num_prefix_keys=0, kv_layout="grouped",
                     softcap=None, return_scores=False):
    """Backend "jax_nn": jax.nn.dot_product_attention's XLA implementation."""
    out = dot_product_attention(q, k, v, mask=mask, scale=scale, bias=bias, num_prefix_keys=num_prefix_keys,
                                kv_layout=kv_layout, implementation="xla")
    return out, None


def cudnn_attention(q, k, v, *, mask, scale, bias=None, prev_scores=None, num_prefix_keys=0, kv_layout="grouped",
                    softcap=None, return_scores=False):
    """Backend "cudnn": cuDNN's fused flash attention (bfloat16/float16, NVIDIA GPUs)."""
    out = dot_product_attention(q, k, v, mask=mask, scale=scale, bias=bias, num_prefix_keys=num_prefix_keys,
                                kv_layout=kv_layout, implementation="cudnn")
    return out, None
