"""The losses that read more than the reduced log-probs (sigmoid_norm, sft, orpo), the batch-sorted ones (aot,
aot_unpaired) with empty packed slots, weighted combinations, and WPO weights: torch and JAX against the float64
NumPy oracle (`loss_oracle.py`, written from the papers) and against each other.

Per case: torch float64 and JAX float64 vs the oracle (1e-12 relative to max(1, |x|)), then torch float32 vs JAX
float32 on the loss and every metric (1e-6) and on the gradient w.r.t. every differentiable input, the
per-sequence log-probs and the token sums (1e-5 relative). Inputs are per-token scale (a mean log-prob per
sequence) with token counts 1-24, so the float32 comparison measures the formulas, not summed-log-prob rounding.
"""

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
from dpo_jax.logprobs import SequenceStats as JaxStats
from dpo_torch import losses as tl
from dpo_torch.logprobs import SequenceStats as TorchStats
from parity_tests.loss_oracle import oracle_batch_loss, oracle_logits_metric, oracle_metrics, oracle_sft

# 16 pairs, 8 of them empty in the weighted cases: both faces average rewards/accuracies in float32, which is
# exact only for power-of-two counts
BATCH = 16
EMPTY = (1, 4, 6, 9, 10, 12, 13, 15)  # pair slots that stand for empty packed slots in the weighted cases

CASES = {
    **{f"sigmoid_norm-{d}": dict(loss_type="sigmoid_norm", divergence=d, alpha=0.3) for d in tl.DIVERGENCES},
    "sft": dict(loss_type="sft"),
    "orpo": dict(loss_type="orpo"),
    "orpo-beta1": dict(loss_type="orpo", beta=1.0),
    "aot-smoothed": dict(loss_type="aot", label_smoothing=0.2),
    "aot_unpaired-smoothed": dict(loss_type="aot_unpaired", label_smoothing=0.2),
    "rpo": dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.3]),
    "mpo": dict(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0]),
    "orpo+simpo": dict(loss_type=["orpo", "simpo"], beta=2.0),
    "sigmoid_norm+ipo-forward_kl": dict(loss_type=["sigmoid_norm", "ipo"], divergence="forward_kl"),
    "aot+sigmoid-smoothed": dict(loss_type=["aot", "sigmoid"], label_smoothing=0.1, loss_weights=[0.5, 2.0]),
    "robust+sft-smoothed": dict(loss_type=["robust", "sft"], label_smoothing=0.2),
    "wpo-sigmoid": dict(loss_type="sigmoid", use_weighting=True),
    "wpo-hinge": dict(loss_type="hinge", use_weighting=True),
    "wpo-nca_pair": dict(loss_type="nca_pair", use_weighting=True),
    "wpo-sigmoid_norm": dict(loss_type="sigmoid_norm", use_weighting=True),
    "wpo-simpo": dict(loss_type="simpo", use_weighting=True, beta=2.0),
    "wpo-sigmoid+ipo": dict(loss_type=["sigmoid", "ipo"], use_weighting=True, loss_weights=[1.0, 0.1]),
}


def make_inputs(seed, batch=BATCH):
    """Per-sequence log-probs (per-token scale), reference log-probs and statistics as float64 numpy."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 25, size=(2, batch)).astype(np.float64)
    ref = -rng.gamma(2.0, 1.0, size=(2, batch))
    policy = ref + rng.normal(0.0, 0.7, size=(2, batch))
    policy = np.minimum(policy, -1e-3)
    sides = [dict(tokens=tokens[i], logp_sum=policy[i] * tokens[i],
                  wpo_sum=rng.normal(0.5, 1.0, size=batch) * tokens[i],
                  logit_sum=rng.normal(0.0, 2.0, size=batch) * tokens[i]) for i in range(2)]
    return [policy[0], policy[1], ref[0], ref[1]], sides


def case_seed(name, draw):
    return zlib.crc32(repr((name, draw)).encode())


def options_of(case):
    return dict(dict(beta=0.1, label_smoothing=0.0, divergence="reverse_kl", alpha=0.5, gamma=0.5), **case)


def relative(a, b):
    return abs(float(a) - float(b)) / max(1.0, abs(float(b)))


def library_loss(module, logps, sides, options, weights=None, dtype=None):
    """(loss, metrics) of `module`'s preference_loss on arrays of `dtype`; inputs already framework arrays."""
    Stats = TorchStats if module is tl else JaxStats
    chosen, rejected = (Stats(side["tokens"], side["logp_sum"], side["wpo_sum"], side["logit_sum"])
                        for side in sides)
    reference_free = not module.needs_reference(options["loss_type"])
    pc, pr, rc, rr = logps
    if reference_free:
        rc = rr = None
    return module.preference_loss(pc, pr, rc, rr, weights=weights, chosen_stats=chosen, rejected_stats=rejected,
                                  **options)


def torch_arrays(logps, sides, dtype, requires_grad=False):
    logps = [torch.tensor(x, dtype=dtype, requires_grad=requires_grad) for x in logps]
    sides = [{k: torch.tensor(v, dtype=dtype, requires_grad=requires_grad and k == "logp_sum")
              for k, v in side.items()} for side in sides]
    return logps, sides


def jax_arrays(logps, sides, dtype):
    return [jnp.asarray(x, dtype) for x in logps], [{k: jnp.asarray(v, dtype) for k, v in side.items()}
                                                    for side in sides]


def expected(logps, sides, options, weights=None):
    reference_free = not tl.needs_reference(options["loss_type"])
    loss, terms = oracle_batch_loss(*logps, chosen=sides[0], rejected=sides[1], weights=weights, **options)
    real = slice(None) if weights is None else np.asarray(weights) > 0
    metrics = oracle_metrics(logps[0][real], logps[1][real], None if reference_free else logps[2][real],
                             None if reference_free else logps[3][real], beta=options["beta"])
    metrics["loss"] = loss
    if tl.is_combination(options["loss_type"]):
        metrics.update({f"loss/{name}": value for name, value in terms.items()})
    if any(name in ("sft", "orpo") for name in tl.loss_terms(options["loss_type"])[0]):
        metrics["nll_loss"] = oracle_sft(sides[0], weights)
    metrics["logits/chosen"] = oracle_logits_metric(sides[0], weights)
    metrics["logits/rejected"] = oracle_logits_metric(sides[1], weights)
    return loss, metrics


@pytest.mark.parametrize("weighted", [False, True], ids=["all-real", "empty-slots"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_oracle_and_each_other(name, weighted):
    options = options_of(CASES[name])
    logps, sides = make_inputs(case_seed(name, weighted))
    weights = None
    if weighted:  # empty slots hold what an empty packed slot holds: zero log-probs and zero tokens
        weights = np.ones(BATCH)
        weights[list(EMPTY)] = 0.0
        for x in logps:
            x[list(EMPTY)] = 0.0
        for side in sides:
            for value in side.values():
                value[list(EMPTY)] = 0.0
    want_loss, want_metrics = expected(logps, sides, options, weights)

    t64 = torch_arrays(logps, sides, torch.float64)
    loss_t64, metrics_t64 = library_loss(tl, *t64, options,
                                         None if weights is None else torch.tensor(weights, dtype=torch.float64))
    with jax.enable_x64(True):
        j64 = jax_arrays(logps, sides, jnp.float64)
        loss_j64, metrics_j64 = library_loss(jl, *j64, options, None if weights is None else jnp.asarray(weights))
        loss_j64, metrics_j64 = float(loss_j64), {k: float(v) for k, v in metrics_j64.items()}
    for got, metrics in ((loss_t64.item(), metrics_t64), (loss_j64, metrics_j64)):
        assert relative(got, want_loss) <= 1e-12, (name, got, want_loss)
        # logits/* are computed only when the stats carry logit sums, which these do
        assert set(metrics) == set(want_metrics), set(metrics) ^ set(want_metrics)
        for key, value in want_metrics.items():
            assert relative(metrics[key], value) <= 1e-12, (name, key, float(metrics[key]), value)

    # float32: torch and JAX agree on the loss, the metrics and the gradients
    logps32 = [x.astype(np.float32) for x in logps]
    sides32 = [{k: v.astype(np.float32) for k, v in side.items()} for side in sides]
    t32_logps, t32_sides = torch_arrays(logps32, sides32, torch.float32, requires_grad=True)
    loss_t, metrics_t = library_loss(tl, t32_logps, t32_sides, options,
                                     None if weights is None else torch.tensor(weights, dtype=torch.float32))
    loss_t.backward()

    jax_sides = jax_arrays(logps32, sides32, jnp.float32)[1]

    def jax_loss(logps, logp_sums):  # differentiable inputs: the log-probs and the token sums
        sides = [dict(side, logp_sum=logp_sum) for side, logp_sum in zip(jax_sides, logp_sums)]
        return library_loss(jl, logps, sides, options, None if weights is None else jnp.asarray(weights, jnp.float32))

    (loss_j, metrics_j), (grad_logps, grad_sums) = jax.value_and_grad(jax_loss, argnums=(0, 1), has_aux=True)(
        [jnp.asarray(x) for x in logps32], [jnp.asarray(side["logp_sum"]) for side in sides32])
    assert relative(loss_j, loss_t.item()) <= 1e-6, name
    for key in want_metrics:
        assert relative(metrics_j[key], metrics_t[key].item()) <= 1e-6, (name, key)
    reference_free = not tl.needs_reference(options["loss_type"])
    torch_grads = [x.grad for x in t32_logps] + [side["logp_sum"].grad for side in t32_sides]
    jax_grads = list(grad_logps) + list(grad_sums)
    checked = 0
    for index, (g_t, g_j) in enumerate(zip(torch_grads, jax_grads)):
        if reference_free and index in (2, 3):
            continue  # the reference is dropped: neither face differentiates it
        g_t = np.zeros(BATCH, np.float32) if g_t is None else g_t.numpy()
        g_j = np.asarray(g_j)
        norm = np.linalg.norm(g_t)
        if norm == 0:
            assert np.all(g_j == 0), (name, index)
            continue
        assert np.linalg.norm(g_j - g_t) / norm <= 1e-5, (name, index, np.linalg.norm(g_j - g_t) / norm)
        checked += 1
    assert checked >= 1, f"{name}: no non-zero gradient, the test could not fail"


def test_aot_sorts_change_the_pairing():
    """On these inputs aot differs from sigmoid (the sort re-pairs), so the aot tests above can fail."""
    logps, _ = make_inputs(1)
    options = dict(beta=0.1)
    assert abs(float(jl.preference_loss(*map(jnp.asarray, logps), loss_type="aot", **options)[0])
               - float(jl.preference_loss(*map(jnp.asarray, logps), loss_type="sigmoid", **options)[0])) > 1e-4


def test_empty_slots_do_not_enter_the_aot_sort():
    """Garbage in an empty slot (weight 0) changes nothing: it is sorted after every real pair and dropped."""
    logps, _ = make_inputs(2)
    weights = np.ones(BATCH)
    weights[list(EMPTY)] = 0.0
    results = []
    for garbage in (0.0, -1e3, 5.0):
        noisy = [x.copy() for x in logps]
        for x in noisy:
            x[list(EMPTY)] = garbage
        for module, array in ((jl, jnp.asarray), (tl, torch.tensor)):
            for loss_type in ("aot", "aot_unpaired"):
                loss, _ = module.preference_loss(*map(array, noisy), loss_type=loss_type, beta=0.1,
                                                 weights=array(weights))
                results.append((loss_type, float(loss)))
    real = np.asarray(weights) > 0
    for loss_type in ("aot", "aot_unpaired"):
        want, _ = oracle_batch_loss(*[x[real] for x in logps], beta=0.1, loss_type=loss_type)
        for got_type, got in results:
            if got_type == loss_type:
                assert relative(got, want) <= 1e-6


def test_sigmoid_norm_is_sigmoid_on_averaged_log_probs_for_reverse_kl_only():
    """sigmoid_norm on summed log-probs and token counts equals sigmoid on the averages (reverse KL, float64),
    and differs under another divergence: it averages the score of the summed log-ratio (TRL), not the score of
    the averaged log-ratio. That is why it is a loss of its own rather than an alias of sigmoid + reduction mean."""
    logps, sides = make_inputs(3)
    counts = [sides[0]["tokens"], sides[1]["tokens"], sides[0]["tokens"], sides[1]["tokens"]]
    sums = [x * n for x, n in zip(logps, counts)]
    with jax.enable_x64(True):
        stats = [JaxStats(jnp.asarray(side["tokens"]), jnp.asarray(side["logp_sum"])) for side in sides]
        for divergence, equal in (("reverse_kl", True), ("forward_kl", False), ("js_divergence", False)):
            norm, _ = jl.preference_loss(*map(jnp.asarray, sums), loss_type="sigmoid_norm", divergence=divergence,
                                         chosen_stats=stats[0], rejected_stats=stats[1])
            averaged, _ = jl.preference_loss(*map(jnp.asarray, logps), loss_type="sigmoid", divergence=divergence)
            gap = abs(float(norm) - float(averaged))
            assert (gap <= 1e-12) == equal, (divergence, gap)


def test_ipo_with_mean_reduction_is_trls_length_averaged_ipo_for_reverse_kl_only():
    """TRL's ipo divides the score of the summed log-ratio by the token count; `ipo` on averaged log-probs
    scores the averaged log-ratio: the same for reverse KL (the score is linear), not for other divergences."""
    logps, sides = make_inputs(4)
    counts = [sides[0]["tokens"], sides[1]["tokens"]] * 2
    sums = [x * n for x, n in zip(logps, counts)]
    from parity_tests.loss_oracle import f_score

    def trl_ipo(divergence, beta=0.1):
        delta = (f_score(sums[0] - sums[2], divergence, 0.5) / counts[0]
                 - f_score(sums[1] - sums[3], divergence, 0.5) / counts[1])
        return ((delta - 1 / (2 * beta)) ** 2).mean()

    with jax.enable_x64(True):
        for divergence, equal in (("reverse_kl", True), ("forward_kl", False)):
            ours, _ = jl.preference_loss(*map(jnp.asarray, logps), loss_type="ipo", divergence=divergence)
            assert (relative(ours, trl_ipo(divergence)) <= 1e-12) == equal, divergence


def test_wpo_weights_are_detached_and_change_the_loss():
    logps, sides = make_inputs(5)
    stats = [JaxStats(*(jnp.asarray(side[k], jnp.float32) for k in ("tokens", "logp_sum", "wpo_sum")))
             for side in sides]

    def loss(wpo_sums, use_weighting):
        chosen, rejected = (s._replace(wpo_sum=w) for s, w in zip(stats, wpo_sums))
        return jl.preference_loss(*map(jnp.asarray, logps), use_weighting=use_weighting, chosen_stats=chosen,
                                  rejected_stats=rejected)[0]

    wpo = [s.wpo_sum for s in stats]
    assert abs(float(loss(wpo, True)) - float(loss(wpo, False))) > 1e-3
    grads = jax.grad(loss)(wpo, True)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)


def test_orpo_stays_finite_when_every_token_is_certain():
    """A length-averaged log-prob of exactly 0 (P = 1, infinite odds) is clamped at ORPO_MAX_MEAN_LOGP."""
    sums = [np.array([0.0, -1e-3, -2e4, 0.0], np.float32), np.array([0.0, 0.0, -1.0, -5e3], np.float32)]
    tokens = np.array([3.0, 2.0, 40.0, 1.0], np.float32)
    for module, array in ((jl, jnp.asarray), (tl, torch.tensor)):
        Stats = JaxStats if module is jl else TorchStats
        if module is jl:
            def f(c, r):
                return module.preference_loss(c, r, loss_type="orpo", chosen_stats=Stats(array(tokens), c),
                                              rejected_stats=Stats(array(tokens), r))[0]
            loss, grads = jax.value_and_grad(f, argnums=(0, 1))(*map(array, sums))
            assert math.isfinite(float(loss)) and all(bool(jnp.isfinite(g).all()) for g in grads)
        else:
            c, r = (torch.tensor(x, requires_grad=True) for x in sums)
            loss, _ = module.preference_loss(c, r, loss_type="orpo", chosen_stats=Stats(array(tokens), c),
                                             rejected_stats=Stats(array(tokens), r))
            loss.backward()
            assert math.isfinite(loss.item()) and torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()


@pytest.mark.parametrize("module", [tl, jl], ids=["torch", "jax"])
@pytest.mark.parametrize("bad, message", [
    (dict(loss_type=[]), "non-empty list"),
    (dict(loss_type=["sigmoid", "dpo"]), "unknown loss_type 'dpo'"),
    (dict(loss_type=["sigmoid", "sigmoid"]), "more than once"),
    (dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0]), "one weight per loss_type term"),
    (dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, -0.5]), "finite numbers >= 0"),
    (dict(loss_type=["sigmoid", "sft"], loss_weights=[0.0, 0.0]), "at least one weight > 0"),
    (dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, float("nan")]), "finite numbers >= 0"),
    (dict(loss_type=["sigmoid", "nca_pair"], divergence="forward_kl"), "not defined for loss_type 'nca_pair'"),
    (dict(loss_type="aot", divergence="js_divergence"), "not defined for loss_type 'aot'"),
    (dict(loss_type="sft", divergence="forward_kl"), "has no effect on loss_type 'sft'"),
    (dict(loss_type=["hinge", "sft"], label_smoothing=0.1), "not used by loss_type any of 'hinge', 'sft'"),
    (dict(loss_type=["exo_pair", "sigmoid"], label_smoothing=0.0), r"'exo_pair' must lie in \(0.0, 1.0\)"),
    (dict(loss_type="orpo"), "'orpo' is reference-free"),
    (dict(loss_type=["orpo", "sigmoid"]), "'orpo' is reference-free"),
    (dict(loss_type=["sft", "sigmoid"], has_reference=False), "'sigmoid' needs a reference"),
    (dict(loss_type="sft", use_weighting=True), "does not apply to loss_type 'sft'"),
    (dict(loss_type="aot", use_weighting=True), "does not apply to loss_type 'aot'"),
    (dict(loss_type="orpo", use_weighting=True, has_reference=False), "does not apply to loss_type 'orpo'"),
    (dict(use_weighting=1), "use_weighting must be True or False"),
    (dict(ld_alpha=1.5), r"ld_alpha must be None or a number in \[0, 1\]"),
    (dict(ld_alpha=True), r"ld_alpha must be None or a number in \[0, 1\]"),
    (dict(ld_alpha=0.5, reduction="mean"), "needs reduction='sum'"),
    (dict(loss_type="sft", ld_alpha=0.5, reduction="sum"), "ld_alpha has no effect on loss_type 'sft'"),
    (dict(loss_type="sigmoid_norm", reduction="mean"), "'sigmoid_norm' length-normalises summed log-probs"),
])
def test_bad_options_raise(module, bad, message):
    options = dict(beta=0.1, loss_type="sigmoid", label_smoothing=0.0, divergence="reverse_kl", alpha=0.5, gamma=0.5)
    options.update(bad)
    with pytest.raises(ValueError, match=message):
        module.validate_loss_options(**options)


@pytest.mark.parametrize("module, array", [(tl, torch.tensor), (jl, jnp.asarray)], ids=["torch", "jax"])
def test_missing_statistics_raise(module, array):
    logps = array(np.full(3, -1.0, np.float32))
    for loss_type in ("sft", "orpo", "sigmoid_norm"):
        reference = None if loss_type != "sigmoid_norm" else logps
        with pytest.raises(ValueError, match="reads token statistics"):
            module.preference_loss(logps, logps, reference, reference, loss_type=loss_type)
    with pytest.raises(ValueError, match="use_weighting reads the per-token sq_probs statistic"):
        module.preference_loss(logps, logps, logps, logps, use_weighting=True)


def test_required_statistics_are_empty_on_the_default_path():
    for module in (tl, jl):
        assert module.required_statistics("sigmoid") == ()
        assert module.required_statistics(["sigmoid", "aot"]) == ()
        assert module.required_statistics(["sigmoid", "sft"]) == ("token_sums",)
        assert module.required_statistics("sigmoid", use_weighting=True) == ("token_sums", "sq_probs")
        assert module.required_statistics("sigmoid", logits_metrics=True) == ("token_sums", "mean_logits")


def test_batch_level_losses_are_not_per_pair():
    logps = jnp.full(3, -1.0)
    for loss_type in ("sft", "orpo"):
        with pytest.raises(ValueError, match="batch-level loss"):
            jl.pair_losses(logps, logps, loss_type=loss_type)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), loss_type=st.sampled_from(["aot", "aot_unpaired", "sft", "orpo", "sigmoid"]))
def test_batch_losses_do_not_depend_on_the_order_of_the_pairs(seed, loss_type):
    """A batch sort, a token mean and a mean of per-pair losses are all invariant to shuffling the pairs."""
    logps, sides = make_inputs(seed, batch=8)
    order = np.random.default_rng(seed).permutation(8)
    options = dict(beta=0.1, loss_type=loss_type)

    def loss(permutation):
        with jax.enable_x64(True):
            stats = [JaxStats(*(jnp.asarray(side[k][permutation]) for k in ("tokens", "logp_sum"))) for side in sides]
            reference = ([jnp.asarray(x[permutation]) for x in logps[2:]] if loss_type not in ("sft", "orpo")
                         else [None, None])
            return float(jl.preference_loss(*[jnp.asarray(x[permutation]) for x in logps[:2]], *reference,
                                            chosen_stats=stats[0], rejected_stats=stats[1], **options)[0])

    assert relative(loss(order), loss(np.arange(8))) <= 1e-12
