"""The demo task: its tokenizer, its preference pairs, held-out prompts, and an SFT reference that sorts
correctly and picks ascending about half the time (tests/test_cli.py checks that DPO then aligns it)."""

import numpy as np
import pytest

from dpo_jax.demo import EOS_ID, PAD_ID, SEP_ID, DemoTokenizer, build_demo, sorted_completions
from dpo_jax.tokenizer import Tokenizer


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


def test_reference_is_balanced_between_both_behaviours(demo):
    """The SFT reference continues about half the held-out prompts ascending, and sorts correctly.

    That DPO then lifts the preferred rate to >= 0.9 is checked through the real CLI in tests/test_cli.py."""
    before = demo.rates(demo.reference, seed=0)
    assert 0.25 <= before["preferred_rate"] <= 0.75, before
    assert before["valid_rate"] >= 0.8, before
