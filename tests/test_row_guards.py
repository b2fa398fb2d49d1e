"""Inside jit, a bad row cannot be refused on the host: its pair's log-prob is NaN (only that pair's), so the loss is
NaN and a train step refuses the update; `checks="raise"` names the row through checkify. Left padding here (the
red-team rows j02, j03 and j06 cover out-of-range ids and rows with nothing to score)."""

import jax
import numpy as np
from flax import nnx
from jax.experimental import checkify

from dpo_jax.layouts import get_layout
from dpo_jax.models.x_transformers import Transformer, TransformerConfig

B, T, P, V, PAD = 3, 10, 3, 64, 0


def batch():
    rng = np.random.default_rng(0)
    chosen, rejected = rng.integers(1, V, (B, T)), rng.integers(1, V, (B, T))
    rejected[:, :P] = chosen[:, :P]
    chosen[1, :2] = PAD  # row 1 is left-padded: two pads, then its prompt
    return dict(preferred_seq=chosen, unpreferred_seq=rejected, prompt_mask=np.arange(T)[None].repeat(B, 0) < P + 2)


def pair_logps(checks):
    model = Transformer(TransformerConfig(num_tokens=V, max_seq_len=16, dim=16, depth=1, heads=2, attn_dim_head=8),
                        rngs=nnx.Rngs(0))
    layout = get_layout("padded", pad_id=PAD, checks=checks)
    return lambda arrays: layout.pair_logprobs(model, arrays)


def test_a_left_padded_row_is_nan_under_jit_and_only_that_pair():
    logps = jax.jit(pair_logps("nan"))(batch())
    chosen, rejected = np.asarray(logps.chosen), np.asarray(logps.rejected)
    assert np.isnan(chosen[1]) and np.isfinite(np.delete(chosen, 1)).all() and np.isfinite(rejected).all()


def test_checks_raise_names_the_left_padded_row():
    error, _ = jax.jit(checkify.checkify(pair_logps("raise")))(batch())
    message = error.get()
    assert message is not None and "preferred_seq row 1 starts with 2 pad token(s)" in message, message
