"""Run by .ci/run in a venv with `pip install .` only: dpo_jax imports without torch and trains a user's model."""

import importlib.util
import sys

assert importlib.util.find_spec("torch") is None, "this check needs an environment without torch"
import dpo_jax  # noqa: E402

assert "torch" not in sys.modules and "x_transformers" not in sys.modules
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402


class UserLM(nnx.Module):
    def __init__(self, vocab, dim, rngs):
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)
        self.out = nnx.Linear(dim, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        return self.out(jnp.cumsum(x, axis=1) / jnp.arange(1, tokens.shape[1] + 1)[None, :, None])


model = UserLM(32, 16, nnx.Rngs(0))
rng = np.random.default_rng(0)
chosen, rejected = rng.integers(0, 32, (4, 9)), rng.integers(0, 32, (4, 9))
rejected[:, :3] = chosen[:, :3]
prompt_mask = np.arange(9)[None].repeat(4, 0) < 3
loss, grads = nnx.value_and_grad(lambda m: dpo_jax.dpo_loss(m, dpo_jax.ReferenceLogps(np.zeros(4), np.zeros(4)),
                                                            chosen, rejected, prompt_mask=prompt_mask)[0])(model)
assert np.isfinite(float(loss)) and all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
print(f"torch-free dpo_jax {dpo_jax.__name__}: loss {float(loss):.4f} on a user NNX model, torch absent")

# A Hugging Face directory written and read back without torch or transformers.
import tempfile  # noqa: E402

from dpo_jax.models.llama import LlamaConfig, LlamaForCausalLM  # noqa: E402

llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2), rngs=nnx.Rngs(0))
with tempfile.TemporaryDirectory() as directory:
    dpo_jax.save_pretrained(llama, directory)
    loaded = dpo_jax.from_pretrained(directory)
assert np.array_equal(np.asarray(loaded(chosen)), np.asarray(llama(chosen)))
assert not {"torch", "transformers"} & set(sys.modules)
print("torch-free from_pretrained / save_pretrained: round trip exact, torch and transformers absent")
