"""Unit tests of the seed helpers, the log-prob functions and the input-validation helpers (torch side)."""

import math

import numpy as np
import pytest
import torch
from x_transformers import Decoder, TransformerWrapper

from dpo_torch import (
    exists, freeze_all_layers_, log_prob_from_model_and_seq, masked_mean, maybe_and_mask, scored_mask,
    sequence_logprobs, token_logprobs,
)
from dpo_torch import dpo as dpo_module
from dpo_torch.validation import check_scored_rows, model_max_seq_len, model_num_tokens
from parity_tests.numpy_oracle import oracle_scored, oracle_sequence_logprobs, oracle_token_logprobs


def _tiny_model(seed=0, max_seq_len=64):
    torch.manual_seed(seed)
    model = TransformerWrapper(num_tokens=64, max_seq_len=max_seq_len,
                               attn_layers=Decoder(dim=32, depth=1, heads=2))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def test_seed_helpers_importable_from_dpo_module():
    for name in ("exists", "freeze_all_layers_", "log_prob_from_model_and_seq", "masked_mean", "maybe_and_mask"):
        assert callable(getattr(dpo_module, name))


# exists


@pytest.mark.parametrize("value", [0, False, "", [], torch.zeros(0)])
def test_exists_is_true_for_falsy_values_that_are_not_none(value):
    assert exists(value)


def test_exists_is_false_for_none():
    assert not exists(None)


# freeze_all_layers_


def test_freeze_all_layers_freezes_every_parameter_in_place():
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    returned = freeze_all_layers_(module)
    assert returned is module
    assert all(not param.requires_grad for param in module.parameters())
    assert sum(1 for _ in module.parameters()) == 6


def test_frozen_module_gets_no_gradient():
    frozen, trained = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    freeze_all_layers_(frozen)
    trained(frozen(torch.randn(2, 3))).sum().backward()
    assert frozen.weight.grad is None and trained.weight.grad is not None


# masked_mean


def test_masked_mean_without_mask_is_plain_mean():
    values = torch.tensor([[1.0, 2.0, 6.0], [0.0, -3.0, 3.0]])
    assert torch.equal(masked_mean(values), torch.tensor([3.0, 0.0]))


def test_masked_mean_averages_only_the_masked_entries():
    values = torch.tensor([[1.0, 2.0, 6.0], [4.0, -3.0, 100.0]])
    mask = torch.tensor([[True, False, True], [True, True, False]])
    assert torch.equal(masked_mean(values, mask), torch.tensor([3.5, 0.5]))


def test_masked_mean_of_an_empty_row_is_zero_not_nan():
    values = torch.tensor([[1.0, 2.0]])
    assert torch.equal(masked_mean(values, torch.tensor([[False, False]])), torch.tensor([0.0]))


def test_masked_mean_refuses_a_mask_one_longer_than_the_log_probs():
    """x-transformers trims such a mask with mask[:, :-1] (the off-by-one); we refuse it."""
    with pytest.raises(ValueError, match=r"mask of shape \(1, 3\) does not match log_probs of shape \(1, 2\)"):
        masked_mean(torch.zeros(1, 2), torch.ones(1, 3, dtype=torch.bool))


def test_masked_mean_refuses_a_non_bool_mask():
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        masked_mean(torch.zeros(1, 2), torch.ones(1, 2))


# maybe_and_mask


def test_maybe_and_mask_of_nothing_is_none():
    assert maybe_and_mask() is None
    assert maybe_and_mask(None, None) is None


def test_maybe_and_mask_of_one_mask_is_that_mask():
    mask = torch.tensor([True, False])
    assert torch.equal(maybe_and_mask(None, mask), mask)


def test_maybe_and_mask_ands_all_given_masks():
    a = torch.tensor([True, True, False, True])
    b = torch.tensor([True, False, True, True])
    c = torch.tensor([False, True, True, True])
    assert maybe_and_mask(a, None, b, c).tolist() == [False, False, False, True]


# log_prob_from_model_and_seq


def test_log_prob_from_model_and_seq_matches_a_manual_computation():
    model = _tiny_model().eval()
    seq = torch.randint(0, 64, (3, 9), generator=torch.Generator().manual_seed(1))
    log_probs = log_prob_from_model_and_seq(model, seq)
    assert log_probs.shape == (3, 8)

    with torch.no_grad():
        logits = model(seq[:, :-1]).double()
    for b in range(3):
        for t in range(8):
            manual = logits[b, t, seq[b, t + 1]] - torch.logsumexp(logits[b, t], dim=-1)
            assert abs(log_probs[b, t].item() - manual.item()) <= 1e-5
    oracle = oracle_token_logprobs(logits.numpy(), seq.numpy())
    assert np.max(np.abs(log_probs.detach().double().numpy() - oracle)) <= 1e-5


def test_token_logprobs_matches_log_prob_from_model_and_seq():
    model = _tiny_model().eval()
    seq = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        from_logits = token_logprobs(model(seq[:, :-1]), seq[:, 1:])
        from_model = log_prob_from_model_and_seq(model, seq)
    torch.testing.assert_close(from_logits, from_model, rtol=0, atol=1e-6)


def test_log_probs_of_a_uniform_model_are_minus_log_vocab():
    logits = torch.zeros(2, 4, 64)
    targets = torch.randint(0, 64, (2, 4))
    torch.testing.assert_close(token_logprobs(logits, targets), torch.full((2, 4), -math.log(64)))


# scored_mask and sequence_logprobs against the oracle


@pytest.mark.parametrize("alignment", ["next_token", "x_transformers"])
def test_scored_mask_matches_the_oracle(alignment):
    rng = np.random.default_rng(3)
    seq = rng.integers(0, 10, size=(5, 12))
    prompt_mask = np.zeros((5, 12), dtype=bool)
    for row, prompt_len in enumerate([1, 3, 5, 2, 8]):
        prompt_mask[row, :prompt_len] = True
    seq_mask = rng.random((5, 12)) > 0.3
    ours = scored_mask(torch.from_numpy(prompt_mask), torch.from_numpy(seq_mask), alignment)
    assert ours.numpy().tolist() == oracle_scored(seq, prompt_mask, seq_mask, alignment).tolist()


@pytest.mark.parametrize("alignment", ["next_token", "x_transformers"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sequence_logprobs_match_the_oracle(alignment, reduction):
    rng = np.random.default_rng(4)
    token_logps = -rng.random((4, 9)) * 5
    seq = rng.integers(1, 10, size=(4, 10))
    seq[:, -2:] = 0
    prompt_mask = np.zeros((4, 10), dtype=bool)
    prompt_mask[:, :3] = True
    ours = sequence_logprobs(torch.from_numpy(token_logps).float(),
                             scored_mask(torch.from_numpy(prompt_mask), torch.from_numpy(seq != 0), alignment),
                             reduction)
    oracle = oracle_sequence_logprobs(token_logps, seq, prompt_mask, alignment=alignment, reduction=reduction,
                                      pad_id=0)
    assert np.max(np.abs(ours.double().numpy() - oracle)) <= 1e-5


# validation helpers


def test_model_num_tokens_and_max_seq_len_read_the_wrapper():
    model = _tiny_model(max_seq_len=48)
    assert model_num_tokens(model) == 64
    assert model_max_seq_len(model) == 48


def test_model_max_seq_len_zero_means_unbounded():
    model = TransformerWrapper(num_tokens=16, max_seq_len=0,
                               attn_layers=Decoder(dim=16, depth=1, heads=1, rotary_pos_emb=True))
    assert model_max_seq_len(model) is None


def test_check_scored_rows_accepts_rows_with_a_scored_token():
    check_scored_rows(torch.tensor([[True, False], [False, True]]), "preferred_seq")


def test_check_scored_rows_names_the_empty_row():
    with pytest.raises(ValueError, match="unpreferred_seq: row 2 has no scored response token"):
        check_scored_rows(torch.tensor([[True, False], [False, True], [False, False]]), "unpreferred_seq")
