"""`ops.logprob_head`: the chunked head equals the full head (values, gradients to hidden states and weight) for
one or several targets per position, a logit scale and a final-logit softcap, whatever the chunk size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpo_jax.ops.logprob_head import OutputHead, chunked_token_logprobs, head_logits, head_token_logprobs


def inputs(seed, rows=3, length=7, dim=8, vocab=13, targets_per_position=1):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.standard_normal((rows, length, dim)), jnp.float32)
    weight = jnp.asarray(rng.standard_normal((dim, vocab)), jnp.float32)
    shape = (rows, length) if targets_per_position == 1 else (rows, length, targets_per_position)
    targets = jnp.asarray(rng.integers(0, vocab, shape), jnp.int32)
    cotangent = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    return hidden, weight, targets, cotangent


def reference(hidden, weight, targets, scale, softcap):
    """float64 log-softmax of the capped, scaled logits, gathered (the definition, independent of the head)."""
    logits = np.asarray(hidden, np.float64) @ np.asarray(weight, np.float64) * scale
    if softcap is not None:
        logits = np.tanh(logits / softcap) * softcap
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    index = np.asarray(targets)
    if index.ndim == 2:
        return np.take_along_axis(logp, index[..., None], axis=-1)[..., 0]
    return np.take_along_axis(logp, index, axis=-1)


@pytest.mark.parametrize("targets_per_position", [1, 2])
@pytest.mark.parametrize("scale,softcap", [(1.0, None), (0.25, None), (1.0, 3.0), (0.5, 2.0)])
@pytest.mark.parametrize("chunk", [1, 4, 21, 64])
def test_chunked_equals_full(targets_per_position, scale, softcap, chunk):
    hidden, weight, targets, cotangent = inputs(chunk + targets_per_position, targets_per_position=targets_per_position)
    head = OutputHead(weight, scale, softcap)

    def apply(method):
        def fn(hidden, weight):
            logps = head_token_logprobs(hidden, OutputHead(weight, scale, softcap), targets, method=method,
                                        chunk_size=chunk)
            return (logps * cotangent).sum(), logps
        (_, logps), grads = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(hidden, weight)
        return logps, grads

    full, full_grads = apply("full")
    chunked, chunked_grads = apply("chunked")
    np.testing.assert_allclose(np.asarray(full), reference(hidden, weight, targets, scale, softcap), atol=2e-5)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(full), atol=1e-5)
    for got, want in zip(chunked_grads, full_grads):
        err = float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
        assert err <= 1e-5, err
    assert head_logits(hidden, head).shape == hidden.shape[:-1] + (weight.shape[1],)


def test_rejects_a_bad_chunk_size_and_method():
    hidden, weight, targets, _ = inputs(0)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_logprobs(hidden, weight, targets, chunk_size=0)
    with pytest.raises(ValueError, match="unknown logprob head"):
        head_token_logprobs(hidden, OutputHead(weight), targets, method="fused")
