"""Tests of the PyTorch `DPO` module: oracle agreement, reference handling, metrics, input errors, options."""

import math
from copy import deepcopy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from x_transformers import Decoder, TransformerWrapper

from dpo_torch import DIVERGENCES, DPO, LOSS_TYPES
from dpo_torch.losses import METRIC_NAMES, TOKEN_STATISTICS_LOSSES, validate_loss_options
from parity_tests.numpy_oracle import oracle_sequence_logprobs

NUM_TOKENS = 64
MAX_SEQ_LEN = 64
PAD = 0
LOG2 = math.log(2.0)


def _tiny_model(seed=0, **attn_kwargs):
    """Tiny decoder with every parameter (norm gains included) moved off its initial value."""
    torch.manual_seed(seed)
    model = TransformerWrapper(num_tokens=NUM_TOKENS, max_seq_len=MAX_SEQ_LEN,
                               attn_layers=Decoder(dim=32, depth=1, heads=2, **attn_kwargs))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def _perturb_policy_(dpo, seed=1, scale=0.05):
    """Move the policy away from the reference: at init every loss is log 2 and proves little."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in dpo.policy_model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return dpo


def _batch(seed=0, batch=3, seq_len=12, prompt_lens=(2, 4, 3), response_ends=(9, 12, 7), rejected_ends=(11, 8, 12)):
    """Right-padded preferred/unpreferred pairs with per-row prompt lengths."""
    generator = torch.Generator().manual_seed(seed)
    preferred = torch.randint(1, NUM_TOKENS, (batch, seq_len), generator=generator)
    unpreferred = torch.randint(1, NUM_TOKENS, (batch, seq_len), generator=generator)
    prompt_mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    for row in range(batch):
        prompt_mask[row, :prompt_lens[row]] = True
        unpreferred[row, :prompt_lens[row]] = preferred[row, :prompt_lens[row]]
        preferred[row, response_ends[row]:] = PAD
        unpreferred[row, rejected_ends[row]:] = PAD
    return preferred, unpreferred, prompt_mask


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.fixture
def dpo(model):
    return _perturb_policy_(DPO(deepcopy(model), beta=0.1, pad_id=PAD))


# agreement with the float64 numpy oracle


def _oracle_logps(network, seq, prompt_mask, reduction, alignment="next_token"):
    with torch.no_grad():
        logits = network(seq[:, :-1]).double().numpy()
    return oracle_sequence_logprobs(logits, seq.numpy(), prompt_mask.numpy(), alignment=alignment,
                                    reduction=reduction, pad_id=PAD)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_default_alignment_loss_matches_numpy_oracle(model, reduction):
    dpo = _perturb_policy_(DPO(deepcopy(model), beta=0.1, pad_id=PAD, reduction=reduction))
    preferred, unpreferred, prompt_mask = _batch()
    loss, metrics = dpo(preferred, unpreferred, prompt_mask=prompt_mask, return_metrics=True)

    policy_chosen = _oracle_logps(dpo.policy_model, preferred, prompt_mask, reduction)
    policy_rejected = _oracle_logps(dpo.policy_model, unpreferred, prompt_mask, reduction)
    ref_chosen = _oracle_logps(dpo.ref_model, preferred, prompt_mask, reduction)
    ref_rejected = _oracle_logps(dpo.ref_model, unpreferred, prompt_mask, reduction)
    margin = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    oracle_loss = np.mean(np.logaddexp(0.0, -0.1 * margin))  # -logsigmoid(beta D)

    assert abs(loss.item() - oracle_loss) <= 1e-5
    assert abs(loss.item() - LOG2) > 1e-4  # the policy really moved
    assert abs(metrics["logps/chosen"].item() - policy_chosen.mean()) <= 1e-5
    assert abs(metrics["logps/rejected"].item() - policy_rejected.mean()) <= 1e-5
    ref_logps = dpo.reference_logprobs(preferred, unpreferred, prompt_mask=prompt_mask)
    assert np.max(np.abs(ref_logps[0].double().numpy() - ref_chosen)) <= 1e-5
    assert np.max(np.abs(ref_logps[1].double().numpy() - ref_rejected)) <= 1e-5


def test_mean_and_sum_reductions_differ(model):
    preferred, unpreferred, prompt_mask = _batch()
    losses = [_perturb_policy_(DPO(deepcopy(model), pad_id=PAD, reduction=r))(
        preferred, unpreferred, prompt_mask=prompt_mask).item() for r in ("mean", "sum")]
    assert abs(losses[0] - losses[1]) > 1e-5


def test_pad_id_gives_the_same_loss_as_explicit_non_pad_masks(dpo):
    preferred, unpreferred, prompt_mask = _batch()
    implicit = dpo(preferred, unpreferred, prompt_mask=prompt_mask)
    explicit = dpo(preferred, unpreferred, prompt_mask=prompt_mask,
                   preferred_seq_mask=preferred != PAD, unpreferred_seq_mask=unpreferred != PAD)
    assert torch.equal(implicit, explicit)


# policy == reference


@pytest.mark.parametrize("alignment", ["next_token", "x_transformers"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_is_log2_when_policy_equals_reference(model, alignment, reduction):
    dpo = DPO(deepcopy(model), pad_id=PAD, reduction=reduction, mask_alignment=alignment)
    preferred, unpreferred, prompt_mask = _batch()
    loss = dpo(preferred, unpreferred, prompt_mask=prompt_mask)
    assert abs(loss.item() - LOG2) <= 1e-7


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 4), seq_len=st.integers(3, 20), data=st.data())
def test_loss_is_log2_when_policy_equals_reference_property(model, seed, batch, seq_len, data):
    dpo = DPO(model, pad_id=None)  # policy is the model itself, reference its copy: identical weights
    generator = torch.Generator().manual_seed(seed)
    preferred = torch.randint(0, NUM_TOKENS, (batch, seq_len), generator=generator)
    unpreferred = torch.randint(0, NUM_TOKENS, (batch, seq_len), generator=generator)
    prompt_lens = data.draw(st.lists(st.integers(1, seq_len - 1), min_size=batch, max_size=batch))
    prompt_mask = torch.arange(seq_len)[None, :] < torch.tensor(prompt_lens)[:, None]
    loss = dpo(preferred, unpreferred, prompt_mask=prompt_mask)
    assert abs(loss.item() - LOG2) <= 1e-7


# the reference: frozen, gradient-free, unchanged by training, always in eval mode


def test_parameters_are_the_policys_only(dpo):
    assert [id(p) for p in dpo.parameters()] == [id(p) for p in dpo.policy_model.parameters()]
    ref_ids = {id(p) for p in dpo.ref_model.parameters()}
    assert not ref_ids & {id(p) for p in dpo.parameters()}


def test_gradients_reach_the_policy_only(dpo):
    preferred, unpreferred, prompt_mask = _batch()
    dpo(preferred, unpreferred, prompt_mask=prompt_mask).backward()
    assert all(p.grad is not None for p in dpo.policy_model.parameters())
    assert any(p.grad.abs().sum() > 0 for p in dpo.policy_model.parameters())
    assert all(p.grad is None and not p.requires_grad for p in dpo.ref_model.parameters())


def test_optimizer_step_moves_the_policy_and_leaves_the_reference_unchanged(dpo):
    ref_before = {k: v.clone() for k, v in dpo.ref_model.state_dict().items()}
    policy_before = {k: v.clone() for k, v in dpo.policy_model.state_dict().items()}
    optimizer = torch.optim.Adam(dpo.parameters(), lr=1e-2)
    preferred, unpreferred, prompt_mask = _batch()
    dpo(preferred, unpreferred, prompt_mask=prompt_mask).backward()
    optimizer.step()
    assert all(torch.equal(v, ref_before[k]) for k, v in dpo.ref_model.state_dict().items())
    assert any(not torch.equal(v, policy_before[k]) for k, v in dpo.policy_model.state_dict().items())


def test_reference_stays_in_eval_mode_when_dpo_trains():
    dropout_model = _tiny_model(attn_dropout=0.5, ff_dropout=0.5)
    dpo = DPO(dropout_model, pad_id=PAD)
    dpo.eval()
    dpo.train()
    assert dpo.training and dpo.policy_model.training
    assert not any(module.training for module in dpo.ref_model.modules())

    # Observable: with dropout 0.5 the policy is noisy in train mode, the reference is not.
    preferred, unpreferred, prompt_mask = _batch()
    first = dpo.reference_logprobs(preferred, unpreferred, prompt_mask=prompt_mask)
    second = dpo.reference_logprobs(preferred, unpreferred, prompt_mask=prompt_mask)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    _, metrics_a = dpo(preferred, unpreferred, prompt_mask=prompt_mask, return_metrics=True)
    _, metrics_b = dpo(preferred, unpreferred, prompt_mask=prompt_mask, return_metrics=True)
    assert metrics_a["logps/chosen"].item() != metrics_b["logps/chosen"].item()


def test_reference_is_put_back_in_eval_mode_even_if_switched_by_hand():
    dpo = DPO(_tiny_model(attn_dropout=0.5, ff_dropout=0.5), pad_id=PAD)
    preferred, unpreferred, prompt_mask = _batch()
    expected = dpo.reference_logprobs(preferred, unpreferred, prompt_mask=prompt_mask)
    dpo.ref_model.train()
    got = dpo.reference_logprobs(preferred, unpreferred, prompt_mask=prompt_mask)
    assert torch.equal(expected[0], got[0]) and not dpo.ref_model.training


# metrics


def test_return_metrics_gives_trl_names_and_hand_computed_values(dpo):
    preferred, unpreferred, prompt_mask = _batch()
    loss, metrics = dpo(preferred, unpreferred, prompt_mask=prompt_mask, return_metrics=True)
    assert set(metrics) == set(METRIC_NAMES)

    ref_chosen, ref_rejected = dpo.reference_logprobs(preferred, unpreferred, prompt_mask=prompt_mask)
    policy = DPO(deepcopy(dpo.policy_model), pad_id=PAD)  # its reference is a copy of the perturbed policy
    policy_chosen, policy_rejected = policy.reference_logprobs(preferred, unpreferred, prompt_mask=prompt_mask)
    chosen_rewards = 0.1 * (policy_chosen - ref_chosen)
    rejected_rewards = 0.1 * (policy_rejected - ref_rejected)
    hand = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": policy_chosen.mean(),
        "logps/rejected": policy_rejected.mean(),
        "loss": -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards).mean(),
    }
    for name, value in hand.items():
        torch.testing.assert_close(metrics[name], value, rtol=0, atol=1e-6, msg=name)
    assert torch.equal(metrics["loss"], loss.detach())
    assert not any(value.requires_grad for value in metrics.values())


def test_reward_accuracy_is_strict(dpo):
    """Identical chosen and rejected sequences give equal rewards: accuracy 0 under strict `>`."""
    preferred, _, prompt_mask = _batch()
    _, metrics = dpo(preferred, preferred.clone(), prompt_mask=prompt_mask, return_metrics=True)
    assert metrics["rewards/accuracies"].item() == 0.0
    assert metrics["rewards/margins"].item() == 0.0


# precomputed reference log-probs


def test_precomputed_reference_logps_equal_computed_ones(dpo):
    preferred, unpreferred, prompt_mask = _batch()
    computed = dpo(preferred, unpreferred, prompt_mask=prompt_mask)
    computed.backward()
    computed_grads = [p.grad.clone() for p in dpo.parameters()]
    dpo.zero_grad(set_to_none=True)

    reference_logps = dpo.reference_logprobs(preferred, unpreferred, prompt_mask=prompt_mask)
    assert reference_logps[0].shape == (3,) and not reference_logps[0].requires_grad
    cached = dpo(preferred, unpreferred, prompt_mask=prompt_mask, reference_logps=reference_logps)
    cached.backward()
    assert torch.equal(computed, cached)
    assert all(torch.equal(a, p.grad) for a, p in zip(computed_grads, dpo.parameters()))


def test_reference_logps_of_wrong_shape_raise(dpo):
    preferred, unpreferred, prompt_mask = _batch()
    with pytest.raises(ValueError, match=r"reference_logps\[1\] \(rejected\) must have shape \(3,\)"):
        dpo(preferred, unpreferred, prompt_mask=prompt_mask, reference_logps=(torch.zeros(3), torch.zeros(2)))


def test_reference_logps_not_a_pair_raise(dpo):
    preferred, unpreferred, prompt_mask = _batch()
    with pytest.raises(TypeError, match="reference_logps must be a pair"):
        dpo(preferred, unpreferred, prompt_mask=prompt_mask, reference_logps=torch.zeros(3))


# reference-free losses


def test_simpo_keeps_no_reference_model(model):
    dpo = DPO(deepcopy(model), beta=2.0, pad_id=PAD, loss_type="simpo", gamma=0.5)
    assert dpo.ref_model is None
    preferred, unpreferred, prompt_mask = _batch()
    loss = dpo(preferred, unpreferred, prompt_mask=prompt_mask)
    loss.backward()
    assert math.isfinite(loss.item())
    with pytest.raises(ValueError, match="reference-free: there is no reference model"):
        dpo.reference_logprobs(preferred, unpreferred, prompt_mask=prompt_mask)
    with pytest.raises(ValueError, match="reference-free; reference_logps must be None"):
        dpo(preferred, unpreferred, prompt_mask=prompt_mask, reference_logps=(torch.zeros(3), torch.zeros(3)))


# every loss_type x divergence through forward


def _label_smoothing_for(loss_type):
    return 0.1 if loss_type == "exo_pair" else 0.0


def _allowed(loss_type, divergence):
    try:
        validate_loss_options(beta=0.1, loss_type=loss_type, label_smoothing=_label_smoothing_for(loss_type),
                              divergence=divergence, alpha=0.5, gamma=0.5)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("loss_type", [name for name in LOSS_TYPES if name not in TOKEN_STATISTICS_LOSSES])
def test_every_loss_type_and_divergence_runs_or_is_refused(model, loss_type, divergence):
    kwargs = dict(beta=0.1, pad_id=PAD, loss_type=loss_type, divergence=divergence,
                  label_smoothing=_label_smoothing_for(loss_type))
    if not _allowed(loss_type, divergence):
        with pytest.raises(ValueError, match=f"divergence '{divergence}' is not defined for loss_type"):
            DPO(model, **kwargs)
        return
    dpo = _perturb_policy_(DPO(deepcopy(model), **kwargs))
    preferred, unpreferred, prompt_mask = _batch()
    loss, metrics = dpo(preferred, unpreferred, prompt_mask=prompt_mask, return_metrics=True)
    loss.backward()
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert set(metrics) == set(METRIC_NAMES)


# constructor errors


def test_unknown_reduction_raises(model):
    with pytest.raises(ValueError, match="unknown reduction 'max'; expected one of mean, sum"):
        DPO(model, reduction="max")


def test_unknown_mask_alignment_raises(model):
    with pytest.raises(ValueError, match="unknown mask_alignment 'previous'; expected one of next_token, x_transformers"):
        DPO(model, mask_alignment="previous")


def test_unknown_loss_type_raises(model):
    with pytest.raises(ValueError, match="unknown loss_type 'kto'"):
        DPO(model, loss_type="kto")


def test_non_positive_beta_raises(model):
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        DPO(model, beta=0.0)


def test_options_are_kept_as_attributes(model):
    dpo = DPO(model, beta=0.2, pad_id=3, loss_type="robust", reduction="sum", mask_alignment="x_transformers",
              label_smoothing=0.1, divergence="js_divergence", alpha=0.3, gamma=0.7)
    assert (dpo.beta, dpo.pad_id, dpo.loss_type, dpo.reduction, dpo.mask_alignment, dpo.label_smoothing,
            dpo.divergence, dpo.alpha, dpo.gamma) == (0.2, 3, "robust", "sum", "x_transformers", 0.1,
                                                      "js_divergence", 0.3, 0.7)
    assert dpo.policy_model is model and dpo.ref_model is not model


# input errors: one test per case


def _good():
    preferred, unpreferred, prompt_mask = _batch()
    return dict(preferred_seq=preferred, unpreferred_seq=unpreferred, prompt_mask=prompt_mask)


def _call(dpo, preferred_seq, unpreferred_seq, **kwargs):
    return dpo(preferred_seq, unpreferred_seq, **kwargs)


def test_preferred_seq_not_a_tensor_raises(dpo):
    inputs = _good()
    inputs["preferred_seq"] = inputs["preferred_seq"].tolist()
    with pytest.raises(TypeError, match="preferred_seq must be a torch.Tensor of token ids, got list"):
        _call(dpo, **inputs)


def test_unpreferred_seq_not_a_tensor_raises(dpo):
    inputs = _good()
    inputs["unpreferred_seq"] = inputs["unpreferred_seq"].numpy()
    with pytest.raises(TypeError, match="unpreferred_seq must be a torch.Tensor of token ids, got ndarray"):
        _call(dpo, **inputs)


def test_sequence_not_2d_raises(dpo):
    inputs = _good()
    inputs["preferred_seq"] = inputs["preferred_seq"][0]
    with pytest.raises(ValueError, match=r"preferred_seq must be 2-D \[batch, seq_len\], got 1-D"):
        _call(dpo, **inputs)


def test_sequences_of_different_shapes_raise(dpo):
    inputs = _good()
    inputs["unpreferred_seq"] = inputs["unpreferred_seq"][:, :-1]
    with pytest.raises(ValueError, match=r"must have the same shape, got \(3, 12\) and \(3, 11\)"):
        _call(dpo, **inputs)


def test_float_tokens_raise(dpo):
    inputs = _good()
    inputs["preferred_seq"] = inputs["preferred_seq"].float()
    with pytest.raises(TypeError, match="preferred_seq must hold integer token ids, got dtype torch.float32"):
        _call(dpo, **inputs)


def test_bool_tokens_raise(dpo):
    inputs = _good()
    inputs["unpreferred_seq"] = inputs["unpreferred_seq"] > 3
    with pytest.raises(TypeError, match="unpreferred_seq must hold integer token ids, got dtype torch.bool"):
        _call(dpo, **inputs)


def test_prompt_mask_not_a_tensor_raises(dpo):
    inputs = _good()
    inputs["prompt_mask"] = inputs["prompt_mask"].tolist()
    with pytest.raises(TypeError, match="prompt_mask must be a bool torch.Tensor, got list"):
        _call(dpo, **inputs)


def test_prompt_mask_of_wrong_shape_raises(dpo):
    inputs = _good()
    inputs["prompt_mask"] = inputs["prompt_mask"][:, :-1]
    with pytest.raises(ValueError, match=r"prompt_mask must have the sequences' shape \(3, 12\), got \(3, 11\)"):
        _call(dpo, **inputs)


def test_prompt_mask_not_bool_raises(dpo):
    inputs = _good()
    inputs["prompt_mask"] = inputs["prompt_mask"].long()
    with pytest.raises(TypeError, match="prompt_mask must be a bool tensor, got dtype torch.int64"):
        _call(dpo, **inputs)


def test_preferred_seq_mask_of_wrong_shape_raises(dpo):
    inputs = _good()
    with pytest.raises(ValueError, match=r"preferred_seq_mask must have the sequences' shape \(3, 12\), got \(2, 12\)"):
        _call(dpo, **inputs, preferred_seq_mask=torch.ones(2, 12, dtype=torch.bool))


def test_unpreferred_seq_mask_not_bool_raises(dpo):
    inputs = _good()
    with pytest.raises(TypeError, match="unpreferred_seq_mask must be a bool tensor, got dtype torch.float32"):
        _call(dpo, **inputs, unpreferred_seq_mask=torch.ones(3, 12))


def test_token_id_at_or_above_vocab_raises_with_position(dpo):
    inputs = _good()
    inputs["unpreferred_seq"][1, 5] = NUM_TOKENS
    with pytest.raises(ValueError, match=r"unpreferred_seq holds token id 64 at \(row 1, col 5\), outside the "
                                         r"vocabulary \[0, 64\)"):
        _call(dpo, **inputs)


def test_negative_token_id_raises_with_position(dpo):
    inputs = _good()
    inputs["preferred_seq"][2, 0] = -1
    with pytest.raises(ValueError, match=r"preferred_seq holds token id -1 at \(row 2, col 0\)"):
        _call(dpo, **inputs)


def test_sequence_too_long_raises(dpo):
    seq = torch.ones(1, MAX_SEQ_LEN + 2, dtype=torch.long)
    prompt_mask = torch.zeros_like(seq, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"length 66 are too long: the model sees N - 1 = 65 tokens \(the last "
                                         r"token is only a target\), which must be <= max_seq_len = 64"):
        dpo(seq, seq, prompt_mask=prompt_mask)


def test_sequence_of_max_seq_len_plus_one_is_accepted(dpo):
    seq = torch.ones(1, MAX_SEQ_LEN + 1, dtype=torch.long)
    prompt_mask = torch.zeros_like(seq, dtype=torch.bool)
    prompt_mask[:, :4] = True
    assert math.isfinite(dpo(seq, seq, prompt_mask=prompt_mask).item())


def test_sequence_shorter_than_two_raises(dpo):
    seq = torch.ones(2, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="sequences must have length >= 2 .* got length 1"):
        dpo(seq, seq, prompt_mask=torch.zeros(2, 1, dtype=torch.bool))


def test_row_with_no_scored_preferred_token_raises_naming_the_row(dpo):
    inputs = _good()
    inputs["preferred_seq"][1, 4:] = PAD  # row 1: prompt of 4, then only padding
    with pytest.raises(ValueError, match="preferred_seq: row 1 has no scored response token"):
        _call(dpo, **inputs)


def test_all_prompt_row_raises_naming_the_row(dpo):
    inputs = _good()
    inputs["prompt_mask"][2, :] = True  # row 2 is all prompt
    with pytest.raises(ValueError, match="preferred_seq: row 2 has no scored response token"):
        _call(dpo, **inputs)


def test_row_with_no_scored_unpreferred_token_raises_naming_the_row(dpo):
    inputs = _good()
    with pytest.raises(ValueError, match="unpreferred_seq: row 0 has no scored response token"):
        _call(dpo, **inputs, unpreferred_seq_mask=torch.tensor([[False] * 12, [True] * 12, [True] * 12]))


# the README / seed usage example


def test_readme_usage_example_runs_and_backpropagates():
    transformer = TransformerWrapper(num_tokens=256, max_seq_len=64, attn_layers=Decoder(dim=64, depth=2, heads=4))
    dpo_model = DPO(model=transformer, beta=0.1, pad_id=0)

    preferred_seq = torch.tensor([[5, 17, 42, 99, 3, 0, 0], [8, 9, 10, 200, 201, 202, 203]])
    unpreferred_seq = torch.tensor([[5, 17, 42, 7, 0, 0, 0], [8, 9, 10, 11, 12, 13, 0]])
    prompt_mask = torch.tensor([[True, True, True, False, False, False, False],
                                [True, True, True, False, False, False, False]])

    loss = dpo_model(preferred_seq, unpreferred_seq, prompt_mask=prompt_mask)
    loss.backward()
    assert loss.ndim == 0 and abs(loss.item() - LOG2) <= 1e-6
    assert all(p.grad is not None for p in dpo_model.parameters())
