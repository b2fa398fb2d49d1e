"""Backend "splash": the Pallas TPU splash-attention kernel (`jax.experimental.pallas.ops.tpu.splash_attention`).

What it expresses, as Tunix and MaxText use it: a static mask shared by every row (causal, full, or a local
window over row indices) AND-ed with segment ids, which carry packing (a query sees only its own segment) and
key padding (a padding key joins a segment no real query has; padding queries come back as 0 from the seam
anyway). GQA through the MQA kernel, one kv head at a time; score softcapping natively (`attn_logits_soft_cap`).
Rows are padded to a multiple of the 128-lane block with a segment of their own, so any length works.

What it cannot express: prefix sharing's branch ids (segment ids are equality-only, so the prompt cannot be
visible to two branches that cannot see each other), dense masks and windows over restarted positions. The
kernel's dynamic-mask path would take those as a materialised mask, but building it under `jax.jit` fails in
jax 0.10.2 (`TracerBoolConversionError` in `SplashAttentionKernel.__call__`), so they are refused here.
Residual scores, memory key/values and an additive bias are refused too.

On TPU it compiles through Mosaic; on CPU it runs in Pallas interpret mode (slow: for tests); GPUs are refused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dpo_jax.ops.attention.call import AttentionCall
from dpo_jax.ops.attention.heads import grouped_heads, ungrouped_heads
from dpo_jax.ops.attention.mask import AttentionMask

LANES = 128  # splash's block sizes are multiples of the TPU's 128 lanes
BLOCK_CHOICES = (512, 256, 128)  # the largest that divides the padded row is used
SEGMENT_RULES = ("key_padding", "segment_ids", "sliding_window")


def unsupported(call: AttentionCall) -> str | None:
    if call.platform.name not in ("tpu", "cpu"):
        return (f"splash is a TPU kernel (Pallas Mosaic; CPU runs it in interpret mode for tests), "
                f"not for {call.platform.name}")
    extras = [extra for extra in call.extras() if not extra.startswith("score softcapping")]
    if extras:
        return "splash attention cannot take " + "; ".join(extras)
    refused = [rule for rule in call.rules if rule not in SEGMENT_RULES]
    if refused:
        return (f"splash attention expresses causal/local masks and segment ids only, not {', '.join(refused)} "
                f"(its dynamic-mask path fails under jit in this JAX)")
    if not call.same_dtypes:
        return "splash attention needs q, k and v in one dtype"
    return None


def _block_for(length: int) -> int:
    return next(block for block in BLOCK_CHOICES if length % block == 0)


def _segments(mask: AttentionMask, batch: int, length: int, padded: int):
    """[B, padded] int32 segment ids carrying segments, key padding and the block padding, or None."""
    if mask.segment_ids is None and mask.key_padding is None and padded == length:
        return None
    segments = (jnp.zeros((batch, length), jnp.int32) if mask.segment_ids is None
                else jnp.broadcast_to(jnp.asarray(mask.segment_ids, jnp.int32), (batch, length)))
    if mask.key_padding is not None:  # a padding key gets an odd id that no real query (even ids) has
        segments = jnp.where(jnp.asarray(mask.key_padding), 2 * segments, 2 * segments + 1)
    if padded > length:  # the block padding: one segment above every other id
        fill = jnp.max(segments, axis=1, keepdims=True) + 1
        segments = jnp.concatenate([segments, jnp.broadcast_to(fill, (batch, padded - length))], axis=1)
    return segments


def _static_mask(splash_mask, mask: AttentionMask, padded: int):
    shape = (padded, padded)
    if mask.sliding_window is not None:
        return splash_mask.LocalMask(shape, window_size=(mask.sliding_window - 1, 0 if mask.causal else None),
                                     offset=0)
    return splash_mask.CausalMask(shape) if mask.causal else splash_mask.FullMask(shape)


def splash_attention(q, k, v, *, mask: AttentionMask, scale: float, bias=None, prev_scores=None,
                     num_prefix_keys: int = 0, kv_layout: str = "grouped", softcap=None, return_scores=False):
    """(out [B, H, N, D], None) through splash: q scaled, rows padded to the block, vmapped over the batch."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernels
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    batch, heads, length, dim = q.shape
    kv_heads = k.shape[1]
    padded = -(-length // LANES) * LANES
    block = _block_for(padded)
    segments = _segments(mask, batch, length, padded)

    def pad(t):
        return jnp.pad(t, ((0, 0), (0, 0), (0, padded - length), (0, 0))) if padded > length else t

    q, k, v = pad(grouped_heads(q * jnp.asarray(scale, q.dtype), kv_heads, kv_layout)), pad(k), pad(v)
    mqa = kv_heads != heads
    kernel_heads = heads // kv_heads if mqa else heads
    make = kernels.make_splash_mqa if mqa else kernels.make_splash_mha
    blocks = kernels.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                                block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    kernel = make(masks.MultiHeadMask([_static_mask(masks, mask, padded)] * kernel_heads), block_sizes=blocks,
                  head_shards=1, q_seq_shards=1, attn_logits_soft_cap=softcap,
                  interpret=jax.default_backend() != "tpu")

    def one_row(q, k, v, segment):  # q [H, T, D], k/v [KVH, T, D]
        ids = None if segment is None else kernels.SegmentIds(q=segment, kv=segment)
        if not mqa:
            return kernel(q, k, v, segment_ids=ids)
        grouped = q.reshape(kv_heads, kernel_heads, padded, dim)
        out = jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=ids))(grouped, k, v)
        return out.reshape(heads, padded, dim)

    if segments is None:
        out = jax.vmap(lambda q, k, v: one_row(q, k, v, None))(q, k, v)
    else:
        out = jax.vmap(one_row)(q, k, v, segments)
    return ungrouped_heads(out[:, :, :length], kv_heads, kv_layout), None
