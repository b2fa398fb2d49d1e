"""sample(): greedy matches a naive full-forward argmax loop, seeded sampling is reproducible, the
sampled distribution follows softmax(logits / temperature), eos stops a row, and bad inputs are refused."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpo_jax.models.x_transformers import Transformer, TransformerConfig
from dpo_jax.sampling import sample

CONFIG = TransformerConfig(num_tokens=11, max_seq_len=12, dim=32, depth=1, heads=2, attn_dim_head=16)


@pytest.fixture(scope="module")
def model():
    return Transformer(CONFIG, rngs=nnx.Rngs(3))


class SizeConfig(NamedTuple):
    num_tokens: int
    max_seq_len: int


class FixedLogits(nnx.Module):
    """A 'model' whose next-token logits are a fixed parameter, so the target distribution is known."""

    def __init__(self, logits, max_seq_len=8):
        self.config = SizeConfig(len(logits), max_seq_len)
        self.logits = nnx.Param(jnp.asarray(logits, jnp.float32))

    def __call__(self, tokens):
        return jnp.broadcast_to(self.logits[...], tokens.shape + self.logits.shape)


def naive_greedy(model, prompts, max_new_tokens):
    forward = nnx.jit(lambda m, t: m(t))  # jit only to avoid eager per-op compiles; one compile per length
    tokens = np.asarray(prompts)
    for _ in range(max_new_tokens):
        logits = np.asarray(forward(model, jnp.asarray(tokens)))
        tokens = np.concatenate([tokens, logits[:, -1].argmax(-1)[:, None]], axis=1)
    return tokens


def test_greedy_matches_naive_argmax_loop(model):
    prompts = np.random.default_rng(0).integers(0, CONFIG.num_tokens, size=(3, 4))
    out = sample(model, prompts, max_new_tokens=6, temperature=0.0)
    assert out.shape == (3, 10)
    np.testing.assert_array_equal(np.asarray(out), naive_greedy(model, prompts, 6))


def test_seeded_sampling_is_reproducible(model):
    prompts = np.zeros((4, 2), np.int32)
    first = sample(model, prompts, max_new_tokens=8, rng=jax.random.key(7))
    again = sample(model, prompts, max_new_tokens=8, rng=jax.random.key(7))
    other = sample(model, prompts, max_new_tokens=8, rng=jax.random.key(8))
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    np.testing.assert_array_equal(np.asarray(first)[:, :2], prompts)
    assert not np.array_equal(np.asarray(first), np.asarray(other))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_frequencies_follow_tempered_softmax(temperature):
    probs = np.array([0.3, 0.7])
    fixed = FixedLogits(np.log(probs))
    out = np.asarray(sample(fixed, np.zeros((4000, 1), np.int32), max_new_tokens=1, temperature=temperature,
                            rng=jax.random.key(0)))
    tempered = probs ** (1 / temperature) / (probs ** (1 / temperature)).sum()
    share = (out[:, 1] == 1).mean()
    assert abs(share - tempered[1]) < 4 * np.sqrt(tempered[1] * tempered[0] / 4000)  # within 4 sigma


def test_rows_emit_pad_after_eos():
    fixed = FixedLogits([0.0, 5.0, 0.0])  # greedy always picks token 1
    out = np.asarray(sample(fixed, np.zeros((2, 2), np.int32), max_new_tokens=4, temperature=0, eos_id=1, pad_id=2))
    np.testing.assert_array_equal(out, [[0, 0, 1, 2, 2, 2]] * 2)


def test_invalid_inputs_are_refused(model):
    ok = np.zeros((2, 3), np.int32)
    with pytest.raises(ValueError, match="max_seq_len"):
        sample(model, ok, max_new_tokens=10, temperature=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sample(model, np.full((2, 3), CONFIG.num_tokens), max_new_tokens=2, temperature=0)
    with pytest.raises(ValueError, match="2-D"):
        sample(model, np.zeros(3, np.int32), max_new_tokens=2, temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        sample(model, ok, max_new_tokens=2, temperature=-1.0)
    with pytest.raises(ValueError, match="random key"):
        sample(model, ok, max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="pad_id"):
        sample(model, ok, max_new_tokens=2, temperature=0, pad_id=99)
