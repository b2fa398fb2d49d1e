"""Train step: gradient accumulation, precomputed reference, TR-DPO sync, bf16, non-finite refusal, schedules.

A tiny model (dim 32, depth 1) keeps every compile short; tests that need a step share compiled functions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpo_jax.data import PreferenceDataset, PreferenceExample
from dpo_jax.models.x_transformers import Transformer, TransformerConfig
from dpo_jax.train.optim import make_schedule
from dpo_jax.train.reference import ReferenceCache, batch_key
from dpo_jax.train import (TrainConfig, init_train_state, make_eval_loss, make_train_step, sync_reference)

MODEL = TransformerConfig(num_tokens=16, max_seq_len=16, dim=32, depth=1, heads=2, attn_dim_head=16)
BF16_LOSS_TOLERANCE = 1e-3  # measured |loss_bf16 - loss_fp32| <= 8.3e-5 on three batches of this model (CPU)


def make_examples(count=16, seed=0):
    rng = np.random.default_rng(seed)
    return [PreferenceExample(rng.integers(2, 16, 4).tolist(), rng.integers(2, 16, rng.integers(2, 6)).tolist(),
                              rng.integers(2, 16, rng.integers(2, 6)).tolist()) for _ in range(count)]


def batch_at(step, batch_size=4):
    dataset = PreferenceDataset(make_examples(), batch_size=batch_size, seed=0, max_len=12, pad_id=0,
                                pad_to_multiple_of=12)
    return {k: jnp.asarray(v) for k, v in dataset.get_batch(step).as_dict().items()}


def models(seed=0):
    """A policy and a different reference (so rewards and gradients are not trivially zero)."""
    return Transformer(MODEL, rngs=nnx.Rngs(seed)), Transformer(MODEL, rngs=nnx.Rngs(seed + 1))


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_grad_accumulation_equals_big_batch_and_ref_sync_math():
    # eps=1 makes Adam's first update ~ lr * g / (|g| + 1), smooth in g: equal gradients give equal parameters
    # (with eps=1e-8 it is lr * sign(g), which float rounding of near-zero gradients can flip)
    base = TrainConfig(learning_rate=1e-2, eps=1.0, ref_sync_every=1, ref_sync_alpha=0.25, grad_clip=None)
    results = {}
    for accum in (1, 2):
        config = base.replace(grad_accum=accum)
        policy, reference = models()
        graphdef, state = init_train_state(policy, reference, config)
        old_ref = leaves(state.ref_params)
        step = make_train_step(graphdef, config)
        state, metrics = step(state, batch_at(0))
        results[accum] = (jax.device_get(metrics), leaves(state.params))
        # TR-DPO with period 1: ref <- alpha * new policy + (1 - alpha) * old ref
        for ref, pol, old in zip(leaves(state.ref_params), leaves(state.params), old_ref):
            np.testing.assert_allclose(ref, 0.25 * pol + 0.75 * old, rtol=1e-6, atol=1e-7)
    (m1, p1), (m2, p2) = results[1], results[2]
    for key in ("loss", "grad_norm", "rewards/margins", "rewards/accuracies"):
        assert abs(float(m1[key]) - float(m2[key])) <= 1e-6 * max(1.0, abs(float(m1[key]))), key
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sync_reference_is_a_convex_mix():
    ref, pol = {"w": jnp.array([0.0, 4.0])}, {"w": jnp.array([2.0, 0.0])}
    np.testing.assert_allclose(sync_reference(ref, pol, 0.5)["w"], [1.0, 2.0])
    np.testing.assert_allclose(sync_reference(ref, pol, 1.0)["w"], pol["w"])
    np.testing.assert_allclose(sync_reference(ref, pol, 0.0)["w"], ref["w"])


def test_precomputed_reference_equals_online_reference():
    policy, reference = models()
    online_config = TrainConfig()
    graphdef, state = init_train_state(policy, reference, online_config)
    batch = batch_at(1)
    online_loss, online_metrics = make_eval_loss(graphdef, online_config)(state.params, state.ref_params, batch)

    cached_config = TrainConfig(precompute_ref=True)
    _, cached_state = init_train_state(policy, reference, cached_config)
    assert cached_state.ref_params is None
    cache = ReferenceCache(graphdef, nnx.split(reference, nnx.Param)[1], cached_config)
    with_ref = cache.with_reference(batch)
    cache.with_reference(dict(batch))  # same content, new dict: a cache hit
    assert cache.misses == 1 and len(cache) == 1
    cached_loss, cached_metrics = make_eval_loss(graphdef, cached_config)(cached_state.params, None, with_ref)
    assert abs(float(online_loss) - float(cached_loss)) <= 1e-6
    for key in online_metrics:
        assert abs(float(online_metrics[key]) - float(cached_metrics[key])) <= 1e-6, key


def test_batch_key_depends_on_content():
    a, b = batch_at(0), batch_at(1)
    assert batch_key(a) == batch_key({k: np.asarray(v) for k, v in a.items()})
    assert batch_key(a) != batch_key(b)


def test_bf16_loss_close_to_float32():
    policy, reference = models()
    # policy and reference differ, so the loss is not exactly log 2 in both precisions
    graphdef, state = init_train_state(policy, reference, TrainConfig())
    batch = batch_at(2)
    fp32_loss, _ = make_eval_loss(graphdef, TrainConfig())(state.params, state.ref_params, batch)
    bf16_config = TrainConfig(bf16=True)
    bf16_loss, _ = make_eval_loss(graphdef, bf16_config)(state.params, state.ref_params, batch)
    assert np.isfinite(float(bf16_loss))
    assert abs(float(bf16_loss) - float(fp32_loss)) <= BF16_LOSS_TOLERANCE
    # master weights stay float32 through a bf16 train step
    _, bf16_state = init_train_state(policy, reference, bf16_config)
    new_state, metrics = make_train_step(graphdef, bf16_config)(bf16_state, batch)
    assert bool(metrics["finite"]) and int(new_state.step) == 1
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new_state.params))
    assert abs(float(metrics["loss"]) - float(fp32_loss)) <= BF16_LOSS_TOLERANCE


def test_non_finite_update_is_refused():
    config = TrainConfig(learning_rate=1e30, grad_clip=None, optimizer="adamw")
    policy, reference = models()
    graphdef, state = init_train_state(policy, reference, config)
    step = make_train_step(graphdef, config, donate=False)
    state, metrics = step(state, batch_at(0))  # finite loss, huge update: parameters become ~1e30
    kept, _ = None, None
    for index in range(1, 4):
        before = leaves(state.params)
        state, metrics = step(state, batch_at(index))
        if not bool(metrics["finite"]):
            kept = before
            break
    assert kept is not None, "a 1e30 learning rate should produce a non-finite loss"
    assert int(state.step) == index  # the step counter did not advance
    for a, b in zip(leaves(state.params), kept):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedules_warm_up_then_decay(schedule):
    config = TrainConfig(learning_rate=1e-3, warmup_steps=10, schedule=schedule, total_steps=110, min_lr_ratio=0.1)
    lr = make_schedule(config)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    end = float(lr(110))
    assert end == pytest.approx(1e-3 if schedule == "constant" else 1e-4, rel=1e-4)


def test_rmsprop_defaults_follow_the_dpo_paper():
    lr = make_schedule(TrainConfig(optimizer="rmsprop"))
    assert float(lr(150)) == pytest.approx(1e-6) and float(lr(75)) == pytest.approx(5e-7)


@pytest.mark.parametrize("bad", [dict(optimizer="sgd"), dict(grad_accum=0), dict(schedule="step"),
                                 dict(ref_sync_every=2, precompute_ref=True), dict(loss_type="nope"),
                                 dict(ref_sync_alpha=1.5)])
def test_bad_train_config_is_rejected(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)
