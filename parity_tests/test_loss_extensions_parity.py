"""The new loss options through the models: `dpo_torch.DPO` against `dpo_jax.dpo_loss` on converted weights, the
log-prob step's statistics against a float64 token-by-token oracle, every layout against the padded one, and
AdamW training steps through a combination. Float32 on CPU.

- statistics (token counts and sums, WPO's sum of logp_t - log sum_v p_v^2, the vocabulary-mean logit) and
  LD-DPO log-probs, both faces (JAX: full and chunked head, scored window or every position) vs
  `numpy_oracle`: 1e-5 relative to max(1, |x|);
- loss and every metric <= 1e-6, gradients w.r.t. every policy tensor <= 1e-5 relative, for combinations (RPO,
  MPO, orpo + simpo), sft, orpo, sigmoid_norm, aot, LD-DPO, WPO and logits/*: end to end (jit + grad) with
  length-averaged log-probs, and for every cell with the same log-probs in and the gradient pulled back through
  JAX's log-prob step (the scheme of test_dpo_parity's grid, which summed log-probs need);
- padded, prefix-shared and packed (with an empty slot) give the same loss, metrics and gradients (1e-5);
- 5 AdamW steps of torch and of `make_train_step` through a combination: per-step loss and final parameters 1e-5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from dpo_jax import from_torch
from dpo_jax.data import PreferenceDataset, PreferenceExample, collate_pairs
from dpo_jax.dpo import batch_loss, dpo_loss, reference_logprobs, sequence_masks
from dpo_jax.layouts.packed import pack_examples
from dpo_jax.layouts.padded import padded_pair_logps
from dpo_jax.layouts.prefix_shared import shared_batch_from_batch
from dpo_jax import losses as jl
from dpo_jax.logprobs import SequenceStats as JaxStats
from dpo_jax.losses import METRIC_NAMES, required_statistics
from dpo_jax.models.x_transformers.weights import state_dict_from_model
from dpo_jax.train import TrainConfig, init_train_state, make_train_step
from dpo_torch import DPO
from dpo_torch.logprobs import (STATISTICS, ld_sequence_logprobs, log_prob_and_statistics_from_model_and_seq)
from dpo_torch.logprobs import sequence_logprobs as torch_sequence_logprobs
from dpo_torch.logprobs import sequence_statistics as torch_sequence_statistics
from parity_tests.model_helpers import make_torch_model, perturb_
from parity_tests.numpy_oracle import oracle_ld_logprobs, oracle_sequence_statistics, oracle_token_logprobs
from parity_tests.test_dpo_parity import (as_torch, assert_grads_match, jax_grads_as_state_dict, make_batch,
                                          relative, torch_dpo, torch_grads)

CELLS = {
    "rpo-mean": dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]),
    "mpo-sum-logits": dict(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0], reduction="sum",
                           logits_metrics=True),
    "sft-mean": dict(loss_type="sft"),
    "orpo-mean": dict(loss_type="orpo"),
    "orpo+simpo-sum": dict(loss_type=["orpo", "simpo"], reduction="sum"),
    "sigmoid_norm-sum-js": dict(loss_type="sigmoid_norm", reduction="sum", divergence="js_divergence"),
    "aot+sft-sum": dict(loss_type=["aot", "sft"], reduction="sum", label_smoothing=0.1),
    "ld-sigmoid": dict(loss_type="sigmoid", reduction="sum", ld_alpha=0.5),
    "ld0-ipo": dict(loss_type="ipo", reduction="sum", ld_alpha=0.0),
    "wpo-sigmoid-logits": dict(loss_type="sigmoid", use_weighting=True, logits_metrics=True),
    "wpo-ld-hinge": dict(loss_type="hinge", reduction="sum", use_weighting=True, ld_alpha=0.3),
    "robust+sft-logits": dict(loss_type=["robust", "sft"], label_smoothing=0.1, logits_metrics=True),
}


@pytest.fixture(scope="module")
def models():
    """(torch policy, reference state_dict, JAX policy, JAX reference): policy != reference != init."""
    reference = perturb_(make_torch_model(seed=3), seed=11)
    reference_state = {k: v.clone() for k, v in reference.state_dict().items()}
    policy = perturb_(reference, seed=12, scale=0.05)
    torch_reference = make_torch_model(seed=3)
    torch_reference.load_state_dict(reference_state)
    return policy, reference_state, from_torch(policy), from_torch(torch_reference)


def masks_of(batch, pad_id):
    jnp_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    return jnp_batch, sequence_masks(jnp_batch["preferred_seq"], jnp_batch["unpreferred_seq"],
                                     prompt_mask=jnp_batch["prompt_mask"],
                                     preferred_seq_mask=jnp_batch.get("preferred_seq_mask"),
                                     unpreferred_seq_mask=jnp_batch.get("unpreferred_seq_mask"), pad_id=pad_id)


@pytest.mark.parametrize("forward", [dict(logprob_head="full", score_positions="all"),
                                     dict(logprob_head="chunked", head_chunk_size=5, score_positions="scored"),
                                     dict(logprob_head="full", score_positions="scored")],
                         ids=["full-all", "chunked-scored", "full-scored"])
def test_statistics_and_ld_logprobs_match_the_oracle(models, forward):
    policy, reference_state, jax_policy, _ = models
    batch, pad_id = make_batch("pad_id", seed=1)
    jnp_batch, (chosen_mask, rejected_mask) = masks_of(batch, pad_id)
    masks = [np.asarray(chosen_mask), np.asarray(rejected_mask)]
    oracle_tokens, oracle_stats = [], []
    for key, mask in zip(("preferred_seq", "unpreferred_seq"), masks):
        with torch.no_grad():
            logits64 = policy(torch.from_numpy(batch[key][:, :-1])).double().numpy()
        oracle_tokens.append(oracle_token_logprobs(logits64, batch[key]))
        oracle_stats.append(oracle_sequence_statistics(logits64, batch[key], mask))
    oracle_ld = oracle_ld_logprobs(*oracle_tokens, *masks, 0.3)

    jax_logps = padded_pair_logps(jax_policy, jnp_batch["preferred_seq"], jnp_batch["unpreferred_seq"], chosen_mask,
                                  rejected_mask, "sum", ld_alpha=0.3, statistics=STATISTICS, forward=forward)
    torch_logps = torch_pair_values(policy, batch, masks, dict(reduction="sum", ld_alpha=0.3), STATISTICS)
    faces = {"jax": (jax_logps.chosen, jax_logps.rejected, jax_logps.chosen_stats, jax_logps.rejected_stats),
             "torch": torch_logps}
    for face, (chosen, rejected, chosen_stats, rejected_stats) in faces.items():
        for side, (logps, stats) in enumerate(((chosen, chosen_stats), (rejected, rejected_stats))):
            assert relative_max(logps, oracle_ld[side]) <= 1e-5, (face, side, "ld")
            for name, want in oracle_stats[side].items():
                assert relative_max(getattr(stats, name), want) <= 1e-5, (face, side, name)


def relative_max(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))


def test_ld_alpha_one_is_the_plain_sum_and_zero_drops_the_tail(models):
    _, _, jax_policy, _ = models
    batch, pad_id = make_batch("pad_id", seed=2)
    jnp_batch, masks = masks_of(batch, pad_id)
    seqs = (jnp_batch["preferred_seq"], jnp_batch["unpreferred_seq"])
    plain = padded_pair_logps(jax_policy, *seqs, *masks, "sum")
    one = padded_pair_logps(jax_policy, *seqs, *masks, "sum", ld_alpha=1.0)
    zero = padded_pair_logps(jax_policy, *seqs, *masks, "sum", ld_alpha=0.0)
    assert relative_max(one.chosen, plain.chosen) <= 1e-6 and relative_max(one.rejected, plain.rejected) <= 1e-6
    counts = [np.asarray(m).sum(axis=-1) for m in masks]
    longer = counts[0] != counts[1]
    assert longer.any(), "the batch needs pairs of different lengths"
    # with alpha 0 the longer completion loses its tail; the shorter one keeps every token
    for side, logps in enumerate((zero.chosen, zero.rejected)):
        full = (plain.chosen, plain.rejected)[side]
        is_shorter = counts[side] <= counts[1 - side]
        np.testing.assert_allclose(np.asarray(logps)[is_shorter], np.asarray(full)[is_shorter], rtol=1e-6)
        assert np.all(np.abs(np.asarray(logps)[~is_shorter] - np.asarray(full)[~is_shorter]) > 1e-3)


def expected_metric_names(cell):
    names = set(METRIC_NAMES)
    types = [cell["loss_type"]] if isinstance(cell["loss_type"], str) else list(cell["loss_type"])
    if not isinstance(cell["loss_type"], str):
        names |= {f"loss/{t}" for t in types}
    if {"sft", "orpo"} & set(types):
        names.add("nll_loss")
    if cell.get("logits_metrics"):
        names |= {"logits/chosen", "logits/rejected"}
    return names


MEAN_CELLS = [name for name, cell in CELLS.items() if cell.get("reduction", "mean") == "mean"]


@pytest.mark.parametrize("name", MEAN_CELLS)
def test_dpo_loss_end_to_end_matches_torch(models, name, record_worst_diff):
    """The public dpo_loss under jit + grad against DPO.forward + backward: loss and every metric (TRL's and the
    new ones) 1e-6, every policy gradient 1e-5. Length-averaged log-probs: the float32 forward gap stays ~1e-7."""
    cell = CELLS[name]
    policy, reference_state, jax_policy, jax_reference = models
    batch, pad_id = make_batch("pad_id", seed=5)
    dpo = torch_dpo(policy, reference_state, pad_id=pad_id, beta=0.1, **cell)
    policy.zero_grad(set_to_none=True)
    loss_torch, metrics_torch = dpo(**as_torch(batch), return_metrics=True)
    loss_torch.backward()
    reference = None if dpo.is_reference_free else jax_reference
    graphdef, params = nnx.split(jax_policy)

    @jax.jit
    def loss_and_grad(params, batch):
        def loss_fn(params):
            return dpo_loss(nnx.merge(graphdef, params), reference, **batch, pad_id=pad_id, beta=0.1, **cell)
        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss_jax, metrics_jax), grad_state = loss_and_grad(params, {k: jnp.asarray(v) for k, v in batch.items()})
    assert set(metrics_jax) == set(metrics_torch) == expected_metric_names(cell)
    worst = relative(loss_jax, loss_torch.item())
    assert worst <= 1e-6, (name, worst)
    for key in metrics_torch:
        diff = relative(metrics_jax[key], metrics_torch[key].item())
        assert diff <= 1e-6, (name, key, diff)
        worst = max(worst, diff)
    assert_grads_match(torch_grads(policy), jax_grads_as_state_dict(graphdef, grad_state), name)
    record_worst_diff(f"dpo_loss vs DPO end to end: {name}", worst)


def torch_pair_values(model, batch, masks, cell, statistics):
    """(chosen, rejected, chosen SequenceStats, rejected SequenceStats) float32 numpy, through dpo_torch's public
    log-prob functions (what DPO.forward computes)."""
    tokens, heads = [], []
    with torch.no_grad():
        for key in ("preferred_seq", "unpreferred_seq"):
            token_logps, head = log_prob_and_statistics_from_model_and_seq(model, torch.from_numpy(batch[key]),
                                                                          statistics)
            tokens.append(token_logps)
            heads.append(head)
        masks = [torch.from_numpy(np.asarray(m)) for m in masks]
        if cell.get("ld_alpha") is not None:
            logps = ld_sequence_logprobs(*tokens, *masks, cell["ld_alpha"])
        else:
            logps = [torch_sequence_logprobs(t, m, cell.get("reduction", "mean")) for t, m in zip(tokens, masks)]
        stats = [torch_sequence_statistics(t, m, statistics, h) for t, m, h in zip(tokens, masks, heads)]

    def as_numpy(stats):
        return None if stats is None else JaxStats(*(None if x is None else jnp.asarray(x.numpy()) for x in stats))
    return [jnp.asarray(x.numpy()) for x in logps] + [as_numpy(x) for x in stats]


@pytest.mark.parametrize("name", list(CELLS))
def test_same_log_probs_in_same_loss_out_and_pulled_back_gradients(models, name, record_worst_diff):
    """Three checks per cell, as the option grid of test_dpo_parity does for summed log-probs.

    1. Same per-sequence log-probs and statistics in (torch's): JAX's loss and metrics equal DPO.forward's (1e-6).
    2. End to end: JAX's own log-probs differ from torch's by float32 forward-pass rounding; the loss gap must not
       exceed 1e-6 * max(1, |loss|) plus the first-order propagation sum_i |dL/dx_i| |dx_i| of the measured gaps
       (summed log-probs of ~-40 make an IPO margin error of 1e-6 a loss error of ~1e-5).
    3. Gradients w.r.t. every policy tensor (1e-5): JAX's backward pass of its log-prob step, pulled back with
       d loss / d (log-probs, statistics) taken at torch's values.
    """
    cell = CELLS[name]
    policy, reference_state, jax_policy, jax_reference = models
    batch, pad_id = make_batch("pad_id", seed=5)
    dpo = torch_dpo(policy, reference_state, pad_id=pad_id, beta=0.1, **cell)
    policy.zero_grad(set_to_none=True)
    loss_torch, metrics_torch = dpo(**as_torch(batch), return_metrics=True)
    loss_torch.backward()
    jnp_batch, masks = masks_of(batch, pad_id)
    statistics = required_statistics(cell["loss_type"], use_weighting=cell.get("use_weighting", False),
                                     logits_metrics=cell.get("logits_metrics", False))
    reduction, ld_alpha = cell.get("reduction", "mean"), cell.get("ld_alpha")
    loss_options = {k: v for k, v in cell.items() if k not in ("reduction", "ld_alpha", "logits_metrics")}
    reference_free = dpo.is_reference_free
    torch_values = torch_pair_values(policy, batch, masks, cell, statistics)
    torch_reference = make_torch_model(seed=3)
    torch_reference.load_state_dict(reference_state)
    ref = None if reference_free else torch_pair_values(torch_reference, batch, masks, cell, ())[:2]
    graphdef, params = nnx.split(jax_policy)

    def policy_values(params):
        logps = padded_pair_logps(nnx.merge(graphdef, params), jnp_batch["preferred_seq"],
                                  jnp_batch["unpreferred_seq"], *masks, reduction, ld_alpha=ld_alpha,
                                  statistics=statistics)
        return [logps.chosen, logps.rejected, logps.chosen_stats, logps.rejected_stats]

    def loss_of(values):
        chosen, rejected, chosen_stats, rejected_stats = values
        rc, rr = (None, None) if ref is None else ref
        return jl.preference_loss(chosen, rejected, rc, rr, beta=0.1, chosen_stats=chosen_stats,
                                  rejected_stats=rejected_stats, **loss_options)

    # 1. the same values in
    loss_same, metrics_same = loss_of(torch_values)
    assert set(metrics_same) == set(metrics_torch) == expected_metric_names(cell)
    worst = relative(loss_same, loss_torch.item())
    assert worst <= 1e-6, (name, worst)
    for key in metrics_torch:
        diff = relative(metrics_same[key], metrics_torch[key].item())
        assert diff <= 1e-6, (name, key, diff)
        worst = max(worst, diff)

    # 2. end to end, within the propagated float32 forward-pass gap
    jax_values, pull_back = jax.vjp(policy_values, params)
    (loss_jax, metrics_jax), value_grads = jax.value_and_grad(loss_of, has_aux=True)(jax_values)
    gaps = jax.tree.map(lambda a, b: jnp.abs(a - b), jax_values, torch_values)
    propagated = sum(float(jnp.sum(jnp.abs(g) * gap)) for g, gap in zip(jax.tree.leaves(value_grads),
                                                                          jax.tree.leaves(gaps)))
    gap = abs(float(loss_jax) - loss_torch.item())
    assert gap <= 1e-6 * max(1.0, abs(loss_torch.item())) + propagated, (name, gap, propagated)
    for key in metrics_torch:
        assert relative(metrics_jax[key], metrics_torch[key].item()) <= 1e-5, (name, key)

    # 3. gradients, cotangent taken at torch's values
    cotangent = jax.grad(lambda values: loss_of(values)[0])(torch_values)
    (grad_state,) = pull_back(cotangent)
    assert_grads_match(torch_grads(policy), jax_grads_as_state_dict(graphdef, grad_state), name)
    record_worst_diff(f"loss+metrics, same log-probs in: {name}", worst)


def test_precomputed_ld_reference_equals_the_online_reference(models):
    _, _, jax_policy, jax_reference = models
    batch, pad_id = make_batch("pad_id", seed=6)
    options = dict(reduction="sum", ld_alpha=0.4, pad_id=pad_id)
    online, _ = dpo_loss(jax_policy, jax_reference, **batch, **options)
    cached = reference_logprobs(jax_reference, **{k: jnp.asarray(v) for k, v in batch.items()}, **options)
    precomputed, _ = dpo_loss(jax_policy, cached, **batch, **options)
    assert float(precomputed) == float(online)
    plain = reference_logprobs(jax_reference, **{k: jnp.asarray(v) for k, v in batch.items()}, pad_id=pad_id,
                               reduction="sum")
    assert np.abs(np.asarray(plain.chosen) - np.asarray(cached.chosen)).max() > 1e-3  # LD did change them


# ---- every layout gives the same numbers ---------------------------------------------------------------------

PAD, MAX_LEN, ROW_LEN, ROWS, SLOTS = 0, 16, 48, 3, 6
LAYOUT_CELLS = {
    "ld-logits-rpo": dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], reduction="sum", ld_alpha=0.5,
                          logits_metrics=True),
    "wpo-sigmoid_norm": dict(loss_type="sigmoid_norm", reduction="sum", use_weighting=True, logits_metrics=True),
    "orpo": dict(loss_type="orpo"),
    "aot+sft": dict(loss_type=["aot", "sft"], reduction="sum", ld_alpha=0.2),
}


def layout_examples(n=5, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        draw = lambda k: [int(t) for t in rng.integers(1, 96, size=k)]  # noqa: E731
        out.append(PreferenceExample(draw(rng.integers(1, 7)), draw(rng.integers(2, 7)), draw(rng.integers(2, 7)),
                                     line=i + 1))
    return out


@pytest.fixture(scope="module")
def layout_models():
    policy = from_torch(perturb_(make_torch_model(seed=5, max_seq_len=ROW_LEN, depth=1, rotary_pos_emb=True), seed=6))
    reference = from_torch(perturb_(make_torch_model(seed=8, max_seq_len=ROW_LEN, depth=1, rotary_pos_emb=True),
                                    seed=9))
    return policy, reference


@pytest.mark.parametrize("name", list(LAYOUT_CELLS))
def test_every_layout_gives_the_same_loss_metrics_and_gradients(layout_models, name):
    cell = dict(LAYOUT_CELLS[name])
    policy, reference = layout_models
    reference = None if cell["loss_type"] == "orpo" else reference
    exs = layout_examples(seed=1)
    padded = collate_pairs(exs, max_len=MAX_LEN, pad_id=PAD).as_dict()
    shared = shared_batch_from_batch(**padded, pad_id=PAD, row_len=2 * MAX_LEN).as_dict()
    (packed,) = pack_examples(exs, row_len=ROW_LEN, rows=ROWS, pairs_per_batch=SLOTS, max_len=MAX_LEN)
    assert packed.pair_valid.sum() == len(exs) < SLOTS  # an empty slot
    graphdef, params = nnx.split(policy, nnx.Param)
    results = {}
    for layout, arrays in (("padded", padded), ("prefix_shared", shared), ("packed", packed.as_dict())):
        fn = jax.jit(jax.value_and_grad(lambda p, a, layout=layout: batch_loss(
            nnx.merge(graphdef, p), reference, a, layout=layout, beta=0.1, **cell), has_aux=True))
        results[layout] = fn(params, {k: jnp.asarray(v) for k, v in arrays.items() if v is not None})
    (loss_u, metrics_u), grads_u = results["padded"]
    for layout in ("prefix_shared", "packed"):
        (loss, metrics), grads = results[layout]
        assert relative(loss, loss_u) <= 1e-5, (name, layout)
        assert set(metrics) == set(metrics_u)
        for key in metrics_u:
            assert relative(metrics[key], metrics_u[key]) <= 1e-5, (name, layout, key)
        flat = dict(jax.tree_util.tree_leaves_with_path(grads))
        for path, g_u in jax.tree_util.tree_leaves_with_path(grads_u):
            err = float(jnp.linalg.norm(flat[path] - g_u) / jnp.maximum(jnp.linalg.norm(g_u), 1e-30))
            assert err <= 1e-5, (name, layout, jax.tree_util.keystr(path), err)


# ---- training through a combination ----------------------------------------------------------------------------

@pytest.mark.parametrize("cell", [dict(loss_type=("sigmoid", "sft"), loss_weights=(1.0, 0.5)),
                                  dict(loss_type="sigmoid", reduction="sum", ld_alpha=0.5, use_weighting=True)],
                         ids=["rpo", "ld-wpo"])
def test_adamw_steps_through_a_combination_match_torch(cell, record_worst_diff):
    wrapper = perturb_(make_torch_model(seed=0, num_tokens=32, max_seq_len=16, dim=32, depth=1, heads=2,
                                        attn_dim_head=16))
    policy = from_torch(wrapper)
    rng = np.random.default_rng(0)
    examples = [PreferenceExample(rng.integers(1, 32, 5).tolist(), rng.integers(1, 32, rng.integers(2, 7)).tolist(),
                                  rng.integers(1, 32, rng.integers(2, 7)).tolist()) for _ in range(20)]
    data = PreferenceDataset(examples, batch_size=4, seed=0, max_len=16, pad_id=0, pad_to_multiple_of=16)
    torch_cell = {k: list(v) if isinstance(v, tuple) else v for k, v in cell.items()}
    dpo = DPO(wrapper, beta=0.1, **torch_cell)
    optimizer = torch.optim.AdamW(dpo.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    config = TrainConfig(beta=0.1, learning_rate=1e-3, eps=1e-8, grad_clip=None, **cell)
    graphdef, state = init_train_state(policy, None, config)
    step = make_train_step(graphdef, config)
    worst = 0.0
    for index in range(5):
        batch = data.get_batch(index).as_dict()
        torch_batch = {k: torch.from_numpy(v.astype(np.int64) if v.dtype.kind in "iu" else v)
                       for k, v in batch.items()}
        loss = dpo(**torch_batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state, metrics = step(state, batch)
        assert bool(metrics["finite"])
        diff = abs(float(metrics["loss"]) - loss.item()) / max(1.0, abs(loss.item()))
        worst = max(worst, diff)
        assert diff <= 1e-5, (index, float(metrics["loss"]), loss.item())
        if config.loss_type == ("sigmoid", "sft"):
            assert abs(float(metrics["loss/sigmoid"]) + 0.5 * float(metrics["loss/sft"])
                       - float(metrics["loss"])) <= 1e-6
    jax_params = state_dict_from_model(nnx.merge(graphdef, state.params))
    for key, value in wrapper.state_dict().items():
        expected = value.detach().numpy().astype(np.float64)
        err = np.linalg.norm(np.asarray(jax_params[key], np.float64) - expected) / max(np.linalg.norm(expected), 1e-12)
        assert err <= 1e-5, (key, err)
    record_worst_diff(f"training {cell['loss_type']}: loss", worst)


@pytest.mark.parametrize("name", ["sft", "orpo", "sigmoid_norm", "wpo", "ld"])
def test_extreme_logits_give_finite_loss_and_gradients(models, name):
    """Logits of magnitude ~1e4 (token probabilities round to 0 and 1): no NaN or Inf in loss or gradients."""
    _, _, jax_policy, jax_reference = models
    cell = {"sft": dict(loss_type="sft"), "orpo": dict(loss_type="orpo"),
            "sigmoid_norm": dict(loss_type="sigmoid_norm", reduction="sum"),
            "wpo": dict(loss_type=["sigmoid", "ipo"], use_weighting=True, logits_metrics=True),
            "ld": dict(loss_type="sigmoid", reduction="sum", ld_alpha=0.5)}[name]
    extreme = nnx.clone(jax_policy)
    head = extreme.to_logits.kernel
    head[...] = head[...] / jnp.abs(head[...]).max() * 3e3
    batch, pad_id = make_batch("pad_id", seed=4)
    reference = None if name in ("sft", "orpo") else jax_reference
    graphdef, params = nnx.split(extreme)

    def loss_fn(params):
        return dpo_loss(nnx.merge(graphdef, params), reference, **batch, pad_id=pad_id, **cell)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in metrics.values())
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
