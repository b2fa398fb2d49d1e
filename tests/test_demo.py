"""End-to-end check that the demo task works: the SFT reference sorts correctly and picks ascending about
half the time, and a short DPO run (dpo_loss + adamw) makes ascending the norm without breaking sorting."""

import numpy as np
import optax
import pytest
from flax import nnx

from dpo_jax.data import PreferenceDataset
from dpo_jax.demo import EOS_ID, PAD_ID, SEP_ID, DemoTokenizer, build_demo, sorted_completions
from dpo_jax.dpo import dpo_loss
from dpo_jax.tokenizer import Tokenizer

# DPO settings that work on the quick demo (see the module docstring of dpo_jax.demo for the full demo).
DPO_LR, DPO_BETA, DPO_STEPS, DPO_BATCH, DPO_REDUCTION = 1e-4, 1.0, 75, 32, "sum"


@pytest.fixture(scope="module")
def demo():
    return build_demo(seed=0, quick=True)


def test_tokenizer_round_trip_and_protocol():
    tok = DemoTokenizer()
    assert isinstance(tok, Tokenizer)
    assert tok.encode("3 1 4>") == [3, 1, 4, SEP_ID]
    assert tok.decode([3, 1, 4, SEP_ID, 1, 3, 4, EOS_ID, PAD_ID]) == "314>134"
    with pytest.raises(ValueError, match="cannot encode"):
        tok.encode("3a")


def test_examples_are_sorted_pairs_and_eval_prompts_are_held_out(demo):
    k = demo.settings.num_digits
    ex = demo.train_examples[0]
    assert len(ex.prompt) == k + 1 and ex.prompt[-1] == SEP_ID
    assert ex.chosen == sorted(ex.prompt[:-1]) + [EOS_ID]
    assert ex.rejected == sorted(ex.prompt[:-1], reverse=True) + [EOS_ID]
    assert demo.max_len == demo.config.max_seq_len == 2 * k + 2
    train = {tuple(e.prompt) for e in demo.train_examples}
    assert not train & {tuple(p) for p in demo.eval_prompts.tolist()}
    ascending, descending = sorted_completions(np.array([[2, 0, 1]]))
    np.testing.assert_array_equal(ascending, [[0, 1, 2, EOS_ID]])
    np.testing.assert_array_equal(descending, [[2, 1, 0, EOS_ID]])


def test_dpo_aligns_the_reference(demo):
    before = demo.rates(demo.reference, seed=0)
    assert 0.25 <= before["preferred_rate"] <= 0.75, before
    assert before["valid_rate"] >= 0.8, before

    policy = nnx.clone(demo.reference)
    optimizer = nnx.Optimizer(policy, optax.adamw(DPO_LR, weight_decay=0.0), wrt=nnx.Param)
    dataset = PreferenceDataset(demo.train_examples, batch_size=DPO_BATCH, seed=0, max_len=demo.max_len,
                                pad_id=demo.pad_id)

    @nnx.jit
    def train_step(policy, optimizer, reference, batch):
        def loss_fn(policy):
            return dpo_loss(policy, reference, **batch, beta=DPO_BETA, reduction=DPO_REDUCTION)
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(policy)
        optimizer.update(policy, grads)
        return loss

    losses = [float(train_step(policy, optimizer, demo.reference, dataset.get_batch(step).as_dict()))
              for step in range(DPO_STEPS)]
    assert losses[-1] < losses[0]
    after = demo.rates(policy, seed=0)
    assert after["preferred_rate"] >= 0.9, (before, after)
    assert after["valid_rate"] >= 0.9, (before, after)
    assert demo.preferred_rate(demo.reference, seed=0) == before["preferred_rate"]  # reference stayed frozen
