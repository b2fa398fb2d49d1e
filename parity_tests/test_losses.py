"""The loss family: torch and JAX against the float64 NumPy oracle, and against each other.

Three independent comparisons per case: torch in float64 vs the oracle (formula check, 1e-12), JAX in
float64 vs the oracle (1e-12), and torch float32 vs JAX float32 on loss, metrics and gradients (1e-6 / 1e-5)
at per-token ("mean reduction") scale. At summed-sequence scale (|logp| ~ 100s) a float32 reward margin is a
difference of operands ~1e2-1e3 whose last-bit rounding alone exceeds 1e-6 of the result, so there the
float64 comparisons carry the formula check and the model-level parity tests carry float32.
"""

import itertools
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_jax import losses as jl
from dpo_torch import losses as tl
from parity_tests.loss_oracle import oracle_metrics, oracle_pair_losses

SMOOTHING = {"sigmoid": [0.0, 0.1], "robust": [0.0, 0.2], "simpo": [0.0, 0.1], "exo_pair": [1e-3, 0.3]}


def valid_cases():
    for loss_type in tl.LOSS_TYPES:
        if loss_type in tl.TOKEN_STATISTICS_LOSSES:  # they read SequenceStats too: test_loss_extensions.py
            continue
        divergences = tl.DIVERGENCES if loss_type in tl.DIVERGENCE_LOSSES else ("reverse_kl",)
        for divergence, smoothing in itertools.product(divergences, SMOOTHING.get(loss_type, [0.0])):
            alphas = (0.1, 0.5, 0.9) if divergence == "alpha_divergence" else (0.5,)
            for alpha in alphas:
                yield loss_type, divergence, smoothing, alpha


CASES = list(valid_cases())


def make_logps(seed, scale, batch=16):
    """Policy/reference per-sequence log-probs; `scale` ~ sequence length (1 for mean reduction)."""
    rng = np.random.default_rng(seed)
    ref = -rng.gamma(2.0, 1.5, size=(2, batch)) * scale
    policy = ref + rng.normal(0.0, 0.7, size=(2, batch)) * math.sqrt(scale)
    return [a.astype(np.float32) for a in (policy[0], policy[1], ref[0], ref[1])]


def kwargs_of(case, beta):
    loss_type, divergence, smoothing, alpha = case
    return dict(beta=beta, loss_type=loss_type, label_smoothing=smoothing, divergence=divergence, alpha=alpha,
                gamma=0.5)


def case_seed(case, scale, draw):
    return zlib.crc32(repr((case, scale, draw)).encode())


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("scale", [1.0, 40.0], ids=["mean-scale", "sum-scale"])
@pytest.mark.parametrize("draw", [0, 1])
def test_loss_family_matches_oracle_and_each_other(case, scale, draw):
    beta = 0.1 if case[0] != "simpo" else 2.0
    kwargs = kwargs_of(case, beta)
    logps = make_logps(case_seed(case, scale, draw), scale)
    reference_free = case[0] in tl.REFERENCE_FREE_LOSSES
    expected = oracle_pair_losses(*logps, **kwargs).mean()
    expected_metrics = oracle_metrics(logps[0], logps[1], None if reference_free else logps[2],
                                      None if reference_free else logps[3], beta=beta)

    torch64 = [torch.tensor(a, dtype=torch.float64) for a in logps]
    loss_t64, metrics_t64 = tl.preference_loss(*torch64, **kwargs)
    assert abs(loss_t64.item() - expected) <= 1e-12 * max(1.0, abs(expected))

    with jax.enable_x64(True):
        loss_j64, metrics_j64 = jl.preference_loss(*[jnp.asarray(a, jnp.float64) for a in logps], **kwargs)
        assert abs(float(loss_j64) - expected) <= 1e-12 * max(1.0, abs(expected))
    for name, value in expected_metrics.items():
        assert abs(metrics_t64[name].item() - value) <= 1e-12 * max(1.0, abs(value)), name
        assert abs(float(metrics_j64[name]) - value) <= 1e-12 * max(1.0, abs(value)), name

    if scale != 1.0:
        return  # float32 cross-check at per-token scale only (module docstring)
    # float32: torch and JAX agree on the loss, every metric and the gradient w.r.t. every input.
    torch32 = [torch.tensor(a, requires_grad=True) for a in logps]
    loss_t, metrics_t = tl.preference_loss(*torch32, **kwargs)
    loss_t.backward()

    def jax_loss(*args):
        return jl.preference_loss(*args, **kwargs)

    (loss_j, metrics_j), grads_j = jax.value_and_grad(jax_loss, argnums=(0, 1, 2, 3), has_aux=True)(
        *[jnp.asarray(a) for a in logps])
    assert abs(loss_t.item() - float(loss_j)) <= 1e-6 * max(1.0, abs(expected))
    for name in tl.METRIC_NAMES:
        assert abs(metrics_t[name].item() - float(metrics_j[name])) <= 1e-6 * max(1.0, abs(float(metrics_j[name])))
    for tensor, grad_j in zip(torch32, grads_j):
        grad_t = tensor.grad.numpy() if tensor.grad is not None else np.zeros_like(logps[0])
        denominator = max(np.linalg.norm(grad_t), 1e-12)
        assert np.linalg.norm(np.asarray(grad_j) - grad_t) / denominator <= 1e-5 or np.linalg.norm(grad_t) == 0


@pytest.mark.parametrize("module", [tl, jl], ids=["torch", "jax"])
@pytest.mark.parametrize("bad, message", [
    (dict(loss_type="dpo"), "unknown loss_type 'dpo'"),
    (dict(divergence="kl"), "unknown divergence 'kl'"),
    (dict(beta=0.0), "beta must be a finite number > 0"),
    (dict(beta=float("nan")), "beta must be a finite number > 0"),
    (dict(divergence="alpha_divergence", alpha=1.0), r"alpha must lie in \(0, 1\)"),
    (dict(divergence="alpha_divergence", alpha=0.0), r"alpha must lie in \(0, 1\)"),
    (dict(loss_type="robust", label_smoothing=0.5), r"must lie in \[0.0, 0.5\)"),
    (dict(loss_type="exo_pair", label_smoothing=0.0), r"must lie in \(0.0, 1.0\)"),
    (dict(loss_type="hinge", label_smoothing=0.1), "label_smoothing is not used by loss_type 'hinge'"),
    (dict(loss_type="nca_pair", divergence="forward_kl"), "not defined for loss_type 'nca_pair'"),
])
def test_bad_options_raise(module, bad, message):
    kwargs = dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0, divergence="reverse_kl", alpha=0.5, gamma=0.5)
    kwargs.update(bad)
    with pytest.raises(ValueError, match=message):
        module.validate_loss_options(**kwargs)


@pytest.mark.parametrize("module, array", [(tl, torch.tensor), (jl, jnp.asarray)], ids=["torch", "jax"])
def test_reference_missing_raises(module, array):
    logps = array(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="needs a reference"):
        module.preference_loss(logps, logps, loss_type="sigmoid")
    loss, _ = module.preference_loss(logps, logps, loss_type="simpo", beta=2.0)
    assert math.isfinite(float(loss))


finite_logps = st.lists(st.floats(-200, 0, width=32), min_size=4, max_size=4)


@settings(max_examples=60, deadline=None)
@given(policy=finite_logps, beta=st.floats(0.01, 5.0))
def test_sigmoid_is_log2_when_policy_equals_reference(policy, beta):
    pc, pr = np.float32(policy[0:2]), np.float32(policy[2:4])
    loss, metrics = jl.preference_loss(jnp.asarray(pc), jnp.asarray(pr), jnp.asarray(pc), jnp.asarray(pr), beta=beta)
    assert float(loss) == pytest.approx(math.log(2.0), abs=1e-6)
    assert float(metrics["rewards/accuracies"]) == 0.0  # strict >


@settings(max_examples=60, deadline=None)
@given(logps=st.lists(st.floats(-100, 0, width=32), min_size=4, max_size=4), beta=st.floats(0.01, 2.0))
def test_swapping_chosen_and_rejected_negates_the_margin(logps, beta):
    pc, pr, rc, rr = (jnp.asarray([v], jnp.float32) for v in logps)
    _, forward = jl.preference_loss(pc, pr, rc, rr, beta=beta)
    _, swapped = jl.preference_loss(pr, pc, rr, rc, beta=beta)
    assert float(swapped["rewards/margins"]) == pytest.approx(-float(forward["rewards/margins"]), abs=1e-5)
    # sigmoid: loss(-z) - loss(z) = z (softplus identity), with z = beta * D = the reward margin
    z = float(forward["rewards/margins"])
    loss_forward, _ = jl.preference_loss(pc, pr, rc, rr, beta=beta)
    loss_swapped, _ = jl.preference_loss(pr, pc, rr, rc, beta=beta)
    assert float(loss_swapped) - float(loss_forward) == pytest.approx(z, abs=1e-4 * max(1.0, abs(z)))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_extreme_logps_stay_finite(case):
    """Log-probs from logits of +-1e4 reach -2e4 per token: no loss or gradient may turn NaN or Inf."""
    extremes = np.array([-2e4, -1e-3, -5e3, 0.0, -1.0, -2e4], np.float32)
    logps = [extremes, extremes[::-1].copy(), np.roll(extremes, 1), np.roll(extremes, 2)]
    kwargs = kwargs_of(case, 0.1)

    def jax_loss(*args):
        return jl.preference_loss(*args, **kwargs)[0]

    loss, grads = jax.value_and_grad(jax_loss, argnums=(0, 1))(*[jnp.asarray(a) for a in logps])
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    torch_args = [torch.tensor(a, requires_grad=True) for a in logps]
    torch_loss, _ = tl.preference_loss(*torch_args, **kwargs)
    torch_loss.backward()
    assert math.isfinite(torch_loss.item())
    assert all(torch.isfinite(t.grad).all() for t in torch_args[:2])
