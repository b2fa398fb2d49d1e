"""Chunked log-prob head: token log-probs from hidden states without building the [rows, T, V] logits.

Liger-style (DESIGN.md section 6): the tokens are cut into chunks of `chunk_size`; per chunk the head matmul,
a float32 logsumexp and the target logit are computed and the chunk's logits are dropped. A `jax.custom_vjp`
recomputes each chunk's logits in the backward pass, so the peak head memory is O(chunk_size x V) in both
directions instead of O(rows x T x V). Gradients flow to the hidden states and to the head weight; the
tied-embedding case is the same weight with `scale = dim ** -0.5` (`Transformer.head_weight()`), and the
weight's gradient reaches the embedding table through the transpose autodiff applies outside this function.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_CHUNK_SIZE = 1024


def chunked_token_logprobs(hidden, weight, targets, *, scale=1.0, chunk_size=DEFAULT_CHUNK_SIZE):
    """log softmax((hidden @ weight) * scale)[target] as float32, shape `targets.shape`.

    hidden [..., d], weight [d, V], targets [...] int. Equals `token_logprobs(unembed(hidden), targets)`.
    `chunk_size` need not divide the number of tokens (the tail chunk is zero-padded and dropped).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    lead = targets.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1).astype(jnp.int32)
    logps = _chunked_logps(flat_hidden, weight, flat_targets, float(scale), int(chunk_size))
    return logps.reshape(lead)


def _pad_to_chunks(x, chunk_size):
    """[M, ...] -> [num_chunks, chunk_size, ...], zero-padded at the end."""
    num = x.shape[0]
    num_chunks = max(1, -(-num // chunk_size))
    pad = num_chunks * chunk_size - num
    x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    return x.reshape(num_chunks, chunk_size, *x.shape[1:])


def _chunk_logits(h, weight, scale):
    """float32 logits of one chunk [c, V] (matmul accumulated in float32 whatever the input dtype)."""
    logits = jnp.matmul(h, weight.astype(h.dtype), preferred_element_type=jnp.float32)
    return logits * scale if scale != 1.0 else logits


def _forward(hidden, weight, targets, scale, chunk_size):
    """(token log-probs [M], logsumexp [M]); the scan keeps only one chunk's logits alive."""
    num = hidden.shape[0]

    def body(_, chunk):
        h, t = chunk
        logits = _chunk_logits(h, weight, scale)
        lse = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
        return None, (target_logit - lse, lse)

    _, (logps, lse) = jax.lax.scan(body, None, (_pad_to_chunks(hidden, chunk_size),
                                                _pad_to_chunks(targets, chunk_size)))
    return logps.reshape(-1)[:num], lse.reshape(-1)[:num]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _chunked_logps(hidden, weight, targets, scale, chunk_size):
    return _forward(hidden, weight, targets, scale, chunk_size)[0]


def _chunked_logps_fwd(hidden, weight, targets, scale, chunk_size):
    logps, lse = _forward(hidden, weight, targets, scale, chunk_size)
    return logps, (hidden, weight, targets, lse)


def _chunked_logps_bwd(scale, chunk_size, residuals, grad_logps):
    """d logp / d logits = onehot(target) - softmax; per chunk: recompute logits, accumulate dW, emit dh."""
    hidden, weight, targets, lse = residuals
    num, vocab = hidden.shape[0], weight.shape[1]
    compute_dtype = hidden.dtype

    def body(grad_weight, chunk):
        h, t, chunk_lse, g = chunk
        probs = jnp.exp(_chunk_logits(h, weight, scale) - chunk_lse[:, None])
        onehot = jax.nn.one_hot(t, vocab, dtype=jnp.float32)
        grad_logits = (g[:, None] * (onehot - probs)) * scale  # through logits = (h @ W) * scale
        grad_logits = grad_logits.astype(compute_dtype)
        grad_h = jnp.matmul(grad_logits, weight.astype(compute_dtype).T, preferred_element_type=jnp.float32)
        grad_weight = grad_weight + jnp.matmul(h.T, grad_logits, preferred_element_type=jnp.float32)
        return grad_weight, grad_h

    chunks = tuple(_pad_to_chunks(x, chunk_size) for x in (hidden, targets, lse, grad_logps.astype(jnp.float32)))
    grad_weight, grad_hidden = jax.lax.scan(body, jnp.zeros(weight.shape, jnp.float32), chunks)
    grad_hidden = grad_hidden.reshape(-1, hidden.shape[-1])[:num]
    targets_cotangent = np.zeros(targets.shape, jax.dtypes.float0)
    return grad_hidden.astype(hidden.dtype), grad_weight.astype(weight.dtype), targets_cotangent


_chunked_logps.defvjp(_chunked_logps_fwd, _chunked_logps_bwd)
