"""The model contract from a user's side: a model written outside the package, in the contract's two forms (a
plain callable returning logits, and an NNX module exposing hidden states and its output head), gives the
loss and gradients of an independent float64 NumPy computation of the same model and DPO loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dpo_jax
from dpo_jax.models import CausalLM, HiddenStatesLM, OutputHead

VOCAB, DIM, BATCH, LENGTH, PROMPT = 11, 8, 3, 7, 3
BETA = 0.5


class TinyLM(nnx.Module):
    """A user's causal LM: h_t = tanh(mean_{s<=t} E[x_s] @ W); logits = h @ U (no attention, still causal)."""

    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Param(jax.random.normal(rngs.params(), (VOCAB, DIM)))
        self.mix = nnx.Param(jax.random.normal(rngs.params(), (DIM, DIM)) / np.sqrt(DIM))
        self.unembed = nnx.Param(jax.random.normal(rngs.params(), (DIM, VOCAB)) / np.sqrt(DIM))

    vocab_size = VOCAB
    max_seq_len = None

    def hidden_states(self, tokens, *, positions=None, attention=None, remat=None, attention_backend=None):
        x = self.embed[...][tokens]
        running = jnp.cumsum(x, axis=1) / jnp.arange(1, tokens.shape[1] + 1)[None, :, None]
        return jnp.tanh(running @ self.mix[...])

    def output_head(self):
        return OutputHead(self.unembed[...])

    def __call__(self, tokens):
        return self.hidden_states(tokens) @ self.unembed[...]


def numpy_loss(params, preferred, unpreferred, prompt_mask, ref_logps):
    """float64: the model, a log-softmax, the masked mean of the response tokens, sigmoid DPO."""
    embed, mix, unembed = (np.asarray(params[k], np.float64) for k in ("embed", "mix", "unembed"))

    def sequence_logps(seq):
        x = embed[seq[:, :-1]]
        running = np.cumsum(x, axis=1) / np.arange(1, x.shape[1] + 1)[None, :, None]
        logits = np.tanh(running @ mix) @ unembed
        logits = logits - logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        token = np.take_along_axis(logp, seq[:, 1:, None], axis=-1)[..., 0]
        scored = ~prompt_mask[:, 1:]
        return (token * scored).sum(-1) / scored.sum(-1)

    margin = (sequence_logps(preferred) - sequence_logps(unpreferred)) - (ref_logps[0] - ref_logps[1])
    return float(np.mean(np.logaddexp(0.0, -BETA * margin)))


def numpy_grads(params, *args, eps=1e-6):
    grads = {}
    for name, value in params.items():
        value = np.asarray(value, np.float64)
        grad = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            up, down = value.copy(), value.copy()
            up[index] += eps
            down[index] -= eps
            grad[index] = (numpy_loss({**params, name: up}, *args) - numpy_loss({**params, name: down}, *args)) / (2 * eps)
        grads[name] = grad
    return grads


def batch(seed=0):
    rng = np.random.default_rng(seed)
    preferred = rng.integers(0, VOCAB, (BATCH, LENGTH))
    unpreferred = rng.integers(0, VOCAB, (BATCH, LENGTH))
    unpreferred[:, :PROMPT] = preferred[:, :PROMPT]
    prompt_mask = np.broadcast_to(np.arange(LENGTH) < PROMPT, (BATCH, LENGTH)).copy()
    ref = rng.normal(-2.5, 0.3, (2, BATCH)).astype(np.float32)
    return preferred, unpreferred, prompt_mask, ref


@pytest.mark.parametrize("form", ["callable", "module", "module-chunked"])
def test_user_model_matches_float64_numpy(form):
    model = TinyLM(nnx.Rngs(0))
    assert isinstance(model, HiddenStatesLM) and isinstance(model, CausalLM)
    graphdef, params = nnx.split(model, nnx.Param)
    numpy_params = {name: np.asarray(params[name][...]) for name in ("embed", "mix", "unembed")}
    preferred, unpreferred, prompt_mask, ref = batch()
    reference = dpo_jax.ReferenceLogps(*ref)

    def loss(params):
        user_model = nnx.merge(graphdef, params)
        if form == "callable":  # a plain function closed over the parameters: only `tokens -> logits`
            policy = lambda tokens: user_model(tokens)  # noqa: E731
        else:
            policy = user_model
        options = dict(logprob_head="chunked", head_chunk_size=4) if form == "module-chunked" else {}
        return dpo_jax.dpo_loss(policy, reference, preferred, unpreferred, prompt_mask=prompt_mask, beta=BETA,
                                **options)[0]

    value, grads = jax.value_and_grad(loss)(params)
    expected = numpy_loss(numpy_params, preferred, unpreferred, prompt_mask, ref)
    assert abs(float(value) - expected) <= 1e-6 * max(1.0, abs(expected))
    expected_grads = numpy_grads(numpy_params, preferred, unpreferred, prompt_mask, ref)
    for name, expected_grad in expected_grads.items():
        got = np.asarray(grads[name][...], np.float64)
        err = np.linalg.norm(got - expected_grad) / np.linalg.norm(expected_grad)
        assert err <= 1e-5, (form, name, err)


def test_user_model_under_jit_and_its_vocabulary_checked():
    model = TinyLM(nnx.Rngs(1))
    preferred, unpreferred, prompt_mask, ref = batch(1)
    function = lambda tokens: model(tokens)  # noqa: E731  (no vocab_size: the logits say it)
    eager = dpo_jax.dpo_loss(function, dpo_jax.ReferenceLogps(*ref), preferred, unpreferred, prompt_mask=prompt_mask)
    jitted = jax.jit(lambda p, u, m: dpo_jax.dpo_loss(function, dpo_jax.ReferenceLogps(*ref), p, u,
                                                      prompt_mask=m))(preferred, unpreferred, prompt_mask)
    assert abs(float(eager[0]) - float(jitted[0])) <= 1e-6
    bad = preferred.copy()
    bad[1, 5] = VOCAB
    with pytest.raises(ValueError, match=f"token id {VOCAB} at \\(row 1, position 5\\)"):
        dpo_jax.dpo_loss(function, dpo_jax.ReferenceLogps(*ref), bad, unpreferred, prompt_mask=prompt_mask)
    with pytest.raises(NotImplementedError, match="plain callable"):
        dpo_jax.batch_loss(function, None, {}, layout="prefix_shared", loss_type="simpo")
