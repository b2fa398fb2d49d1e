"""The log-prob head: token log-probs from final hidden states, with or without the [rows, T, V] logits.

`OutputHead(weight [d, V], scale, softcap)` describes a model's output projection: logits =
softcap(hidden @ weight * scale), softcap(x) = tanh(x / c) * c when c is set (Gemma 2's final-logit
softcapping), and `head_token_logprobs` turns hidden states into target log-probs two ways:

- "full": the logits, then a float32 logsumexp and a gather (`token_logprobs`); simplest, O(rows x T x V);
- "chunked" (Liger-style): the tokens are cut into chunks of `chunk_size`; per chunk the head matmul, a
  float32 logsumexp and the target logit are computed and the chunk's logits dropped. A `jax.custom_vjp`
  recomputes each chunk's logits in the backward pass, so the peak head memory is O(chunk_size x V) in both
  directions. Gradients flow to the hidden states and to the head weight; a tied embedding is the same weight
  with its scale, and the weight's gradient reaches the embedding table through the transpose autodiff
  applies outside this function.

Targets may carry several ids per position (`targets [..., k]` when `targets.ndim == hidden.ndim`): prefix
sharing scores the prompt's last position twice (chosen's and rejected's first token) from one logit row.

`head_token_statistics` is the same computation with per-position statistics of the logits beside the log-probs,
each computed only when asked for (a static tuple of `HEAD_STATISTICS` names), in float32 and without gradient:
- "sq_probs": log sum_v p_v^2 = logsumexp(2 z) - 2 logsumexp(z) (WPO's per-token weight denominator);
- "mean_logits": the mean of the logits over the vocabulary (TRL's `logits/chosen`, `logits/rejected`).
The chunked head computes them inside its scan, from the chunk's logits it builds anyway; the default path
(no statistics) is unchanged.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_CHUNK_SIZE = 1024
LOGPROB_HEADS = ("full", "chunked")
HEAD_STATISTICS = ("sq_probs", "mean_logits")


class OutputHead(NamedTuple):
    """A model's output projection: logits = softcap((hidden @ weight) * scale); weight [d, V]."""
    weight: jax.Array
    scale: float = 1.0
    softcap: float | None = None


def token_logprobs(logits, targets):
    """Target logit minus float32 logsumexp [B, T]: log_softmax + gather without the [B, T, V] copy."""
    logits = logits.astype(jnp.float32)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return target_logits - jax.nn.logsumexp(logits, axis=-1)


def _softcap(logits, softcap):
    return logits if softcap is None else jnp.tanh(logits / softcap) * softcap


def head_logits(hidden, head: OutputHead):
    """The logits of `hidden` [..., d] (in hidden's dtype, as the model's own unembedding computes them)."""
    logits = hidden @ head.weight.astype(hidden.dtype)
    logits = logits * head.scale if head.scale != 1.0 else logits
    return _softcap(logits, head.softcap)


def head_token_logprobs(hidden, head: OutputHead, targets, *, method="full", chunk_size=DEFAULT_CHUNK_SIZE):
    """float32 log-probs of `targets` under the head's logits of `hidden`, by `method` ("full" | "chunked")."""
    if method == "chunked":
        return chunked_token_logprobs(hidden, head.weight, targets, scale=head.scale, softcap=head.softcap,
                                      chunk_size=chunk_size)
    if method != "full":
        raise ValueError(f"unknown logprob head {method!r}; expected one of {', '.join(LOGPROB_HEADS)}")
    logits = head_logits(hidden, head)
    if targets.ndim == hidden.ndim:  # several targets per position
        return jnp.stack([token_logprobs(logits, targets[..., i]) for i in range(targets.shape[-1])], axis=-1)
    return token_logprobs(logits, targets)


def check_head_statistics(statistics):
    """The statistics as a tuple of known names (a static jit argument)."""
    statistics = tuple(statistics)
    unknown = [name for name in statistics if name not in HEAD_STATISTICS]
    if unknown:
        raise ValueError(f"unknown head statistic(s) {unknown}; expected some of {', '.join(HEAD_STATISTICS)}")
    return statistics


def _statistic(name, logits, lse):
    """One per-position statistic of float32 logits [..., V] whose logsumexp is `lse` [...]."""
    if name == "sq_probs":
        return jax.nn.logsumexp(2.0 * logits, axis=-1) - 2.0 * lse
    return logits.mean(axis=-1)


def logit_statistics(logits, statistics=()):
    """{name: [...] float32} per-position statistics of `logits` [..., V] (no gradient flows through them)."""
    logits = jax.lax.stop_gradient(logits).astype(jnp.float32)
    statistics = check_head_statistics(statistics)
    if not statistics:
        return {}
    lse = jax.nn.logsumexp(logits, axis=-1)
    return {name: _statistic(name, logits, lse) for name in statistics}


def head_token_statistics(hidden, head: OutputHead, targets, *, statistics=(), method="full",
                          chunk_size=DEFAULT_CHUNK_SIZE):
    """(log-probs as `head_token_logprobs`, {name: [positions]} `logit_statistics` of the same logits).

    With the chunked head the statistics come out of the same scan as the log-probs; they carry no gradient.
    """
    statistics = check_head_statistics(statistics)
    if not statistics:
        return head_token_logprobs(hidden, head, targets, method=method, chunk_size=chunk_size), {}
    if method == "chunked":
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        lead = targets.shape
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
        flat_targets = targets.reshape(flat_hidden.shape[0], -1).astype(jnp.int32)
        logps, values = _chunked_logps_and_statistics(
            flat_hidden, head.weight, flat_targets, float(head.scale),
            None if head.softcap is None else float(head.softcap), int(chunk_size), statistics)
        positions = hidden.shape[:-1]
        return logps.reshape(lead), {name: jax.lax.stop_gradient(value).reshape(positions)
                                     for name, value in zip(statistics, values)}
    if method != "full":
        raise ValueError(f"unknown logprob head {method!r}; expected one of {', '.join(LOGPROB_HEADS)}")
    logits = head_logits(hidden, head)
    if targets.ndim == hidden.ndim:
        logps = jnp.stack([token_logprobs(logits, targets[..., i]) for i in range(targets.shape[-1])], axis=-1)
    else:
        logps = token_logprobs(logits, targets)
    return logps, logit_statistics(logits, statistics)


def chunked_token_logprobs(hidden, weight, targets, *, scale=1.0, softcap=None, chunk_size=DEFAULT_CHUNK_SIZE):
    """log softmax(softcap((hidden @ weight) * scale))[target] as float32, shape `targets.shape`.

    hidden [..., d], weight [d, V], targets [...] int (or [..., k]: k targets per position). Equals
    `token_logprobs(head_logits(hidden, head), targets)`. `chunk_size` need not divide the number of tokens
    (the tail chunk is zero-padded and dropped).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    lead = targets.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(flat_hidden.shape[0], -1).astype(jnp.int32)
    logps = _chunked_logps(flat_hidden, weight, flat_targets, float(scale),
                           None if softcap is None else float(softcap), int(chunk_size))
    return logps.reshape(lead)


def _pad_to_chunks(x, chunk_size):
    """[M, ...] -> [num_chunks, chunk_size, ...], zero-padded at the end."""
    num = x.shape[0]
    num_chunks = max(1, -(-num // chunk_size))
    pad = num_chunks * chunk_size - num
    x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    return x.reshape(num_chunks, chunk_size, *x.shape[1:])


def _chunk_raw_logits(h, weight, scale):
    """float32 logits of one chunk [c, V] before softcapping (matmul accumulated in float32)."""
    logits = jnp.matmul(h, weight.astype(h.dtype), preferred_element_type=jnp.float32)
    return logits * scale if scale != 1.0 else logits


def _forward(hidden, weight, targets, scale, softcap, chunk_size, statistics=()):
    """(token log-probs [M, k], logsumexp [M], statistics: one [M] per name); the scan keeps only one chunk's
    logits alive."""
    num = hidden.shape[0]

    def body(_, chunk):
        h, t = chunk
        logits = _softcap(_chunk_raw_logits(h, weight, scale), softcap)
        lse = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, t, axis=-1)
        values = tuple(_statistic(name, logits, lse) for name in statistics)
        return None, (target_logit - lse[:, None], lse, values)

    _, (logps, lse, values) = jax.lax.scan(body, None, (_pad_to_chunks(hidden, chunk_size),
                                                        _pad_to_chunks(targets, chunk_size)))
    values = tuple(value.reshape(-1)[:num] for value in values)
    return logps.reshape(-1, targets.shape[1])[:num], lse.reshape(-1)[:num], values


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _chunked_logps(hidden, weight, targets, scale, softcap, chunk_size):
    return _forward(hidden, weight, targets, scale, softcap, chunk_size)[0]


def _chunked_logps_fwd(hidden, weight, targets, scale, softcap, chunk_size):
    logps, lse, _ = _forward(hidden, weight, targets, scale, softcap, chunk_size)
    return logps, (hidden, weight, targets, lse)


def _chunked_logps_bwd(scale, softcap, chunk_size, residuals, grad_logps):
    """d logp / d logits = onehot(target) - softmax; per chunk: recompute logits, accumulate dW, emit dh."""
    hidden, weight, targets, lse = residuals
    num, vocab = hidden.shape[0], weight.shape[1]
    compute_dtype = hidden.dtype

    def body(grad_weight, chunk):
        h, t, chunk_lse, g = chunk
        raw = _chunk_raw_logits(h, weight, scale)
        probs = jnp.exp(_softcap(raw, softcap) - chunk_lse[:, None])
        if t.shape[1] == 1:
            onehot = jax.nn.one_hot(t[:, 0], vocab, dtype=jnp.float32)
            grad_logits = g[:, 0, None] * (onehot - probs)
        else:  # sum over the position's targets: sum_k g_k onehot_k - (sum_k g_k) probs (scattered: no [c, k, V])
            weighted = jnp.zeros(probs.shape, jnp.float32).at[jnp.arange(t.shape[0])[:, None], t].add(g)
            grad_logits = weighted - g.sum(axis=1)[:, None] * probs
        if softcap is not None:  # through softcap(x) = c tanh(x / c): d/dx = 1 - tanh(x / c)^2
            grad_logits = grad_logits * (1.0 - jnp.square(jnp.tanh(raw / softcap)))
        grad_logits = (grad_logits * scale).astype(compute_dtype)  # through logits = (h @ W) * scale
        grad_h = jnp.matmul(grad_logits, weight.astype(compute_dtype).T, preferred_element_type=jnp.float32)
        grad_weight = grad_weight + jnp.matmul(h.T, grad_logits, preferred_element_type=jnp.float32)
        return grad_weight, grad_h

    chunks = tuple(_pad_to_chunks(x, chunk_size) for x in (hidden, targets, lse, grad_logps.astype(jnp.float32)))
    grad_weight, grad_hidden = jax.lax.scan(body, jnp.zeros(weight.shape, jnp.float32), chunks)
    grad_hidden = grad_hidden.reshape(-1, hidden.shape[-1])[:num]
    targets_cotangent = np.zeros(targets.shape, jax.dtypes.float0)
    return grad_hidden.astype(hidden.dtype), grad_weight.astype(weight.dtype), targets_cotangent


_chunked_logps.defvjp(_chunked_logps_fwd, _chunked_logps_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _chunked_logps_and_statistics(hidden, weight, targets, scale, softcap, chunk_size, statistics):
    logps, _, values = _forward(hidden, weight, targets, scale, softcap, chunk_size, statistics)
    return logps, values


def _chunked_statistics_fwd(hidden, weight, targets, scale, softcap, chunk_size, statistics):
    logps, lse, values = _forward(hidden, weight, targets, scale, softcap, chunk_size, statistics)
    return (logps, values), (hidden, weight, targets, lse)


def _chunked_statistics_bwd(scale, softcap, chunk_size, statistics, residuals, cotangents):
    """The log-probs' backward pass; the statistics are stop_gradient-ed by their caller (zero cotangent)."""
    return _chunked_logps_bwd(scale, softcap, chunk_size, residuals, cotangents[0])


_chunked_logps_and_statistics.defvjp(_chunked_statistics_fwd, _chunked_statistics_bwd)
