"""Multi-device checks of dpo_jax.sharding, run by tests/test_sharding.py in a subprocess with 8 CPU devices.

`python tests/sharding_worker.py [OUT.json]`: trains a tiny model (dim 64, depth 2) 3 steps on meshes 8x1, 1x8
and 2x4 (data x fsdp) and on one device; checks losses, metrics and parameters agree, that parameters and adam
state are really sharded, that a checkpoint saved on 2x4 restores onto 8x1 and continues identically, and the
bad-layout errors. Exits non-zero on the first failed check; writes the measured differences as JSON.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import json  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from dpo_jax import sharding  # noqa: E402
from dpo_jax.train import step as train_module  # noqa: E402
from dpo_jax.train import Checkpointer  # noqa: E402
from dpo_jax.data import PreferenceDataset, PreferenceExample  # noqa: E402
from dpo_jax.models.x_transformers import Transformer, TransformerConfig  # noqa: E402
from dpo_jax.train import TrainConfig, init_train_state, make_train_step  # noqa: E402

MODEL = TransformerConfig(num_tokens=32, max_seq_len=16, dim=64, depth=2, heads=4, attn_dim_head=16)
CONFIG = TrainConfig(beta=0.5, learning_rate=1e-3, grad_accum=2, total_steps=10)
BATCH = 16
MESHES = ("data=8,fsdp=1", "data=1,fsdp=8", "data=2,fsdp=4")
TOLERANCE = 1e-5  # relative, per tensor / per metric (DESIGN.md section 7)
FIRST, MORE = 3, 2


def dataset():
    rng = np.random.default_rng(0)
    examples = [PreferenceExample(rng.integers(2, 32, 5).tolist(), rng.integers(2, 32, rng.integers(2, 7)).tolist(),
                                  rng.integers(2, 32, rng.integers(2, 7)).tolist()) for _ in range(64)]
    return PreferenceDataset(examples, batch_size=BATCH, seed=0, max_len=16, pad_id=0, pad_to_multiple_of=16)


DATA = dataset()


def fresh_state():
    policy, reference = Transformer(MODEL, rngs=nnx.Rngs(0)), Transformer(MODEL, rngs=nnx.Rngs(1))
    return init_train_state(policy, reference, CONFIG, seed=0)


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / scale) if scale > 0 else float(np.linalg.norm(a - b))


def run_steps(step_fn, state, start, count, mesh=None):
    history = []
    for step in range(start, start + count):
        arrays = DATA.get_batch(step).as_dict()
        batch = sharding.make_global_batch(arrays, mesh) if mesh is not None else arrays
        state, metrics = step_fn(state, batch)
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return state, history


def max_diffs(state, history, ref_state, ref_history):
    """Largest relative difference per tensor: each parameter / optimizer array, and each metric's series
    over the compared steps (a scalar near zero - rewards/margins can be 9e-4 as the difference of two 5e-2
    rewards - would measure cancellation, not the sharding, if compared on its own)."""
    metric_diff = max(rel_diff([m[k] for m in history], [r[k] for r in ref_history]) for k in ref_history[0])
    param_diff = max(rel_diff(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)))
    opt_diff = max(rel_diff(a, b) for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(ref_state.opt_state)))
    return {"metrics": metric_diff, "params": param_diff, "opt_state": opt_diff}


def check_close(name, diffs):
    for key, value in diffs.items():
        assert value <= TOLERANCE, f"{name}: {key} relative difference {value:.3g} > {TOLERANCE}"


def check_sharded(name, state, mesh):
    fsdp = mesh.shape["fsdp"]
    params = dict(jax.tree_util.tree_leaves_with_path(state.params))
    mus = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state) if "mu" in jax.tree_util.keystr(path)]
    sharded = 0
    for (path, leaf), ref_leaf, mu in zip(params.items(), jax.tree.leaves(state.ref_params), mus):
        expected = sharding.leaf_spec(leaf.shape, leaf.dtype, fsdp)
        assert leaf.sharding.spec == expected, f"{name}: {jax.tree_util.keystr(path)} spec {leaf.sharding.spec}"
        assert ref_leaf.sharding.spec == expected and mu.sharding.spec == expected, f"{name}: ref/mu spec differs"
        shard_shape = leaf.sharding.shard_shape(leaf.shape)
        if "fsdp" in tuple(expected):
            sharded += 1
            assert np.prod(shard_shape) * fsdp == leaf.size, f"{name}: shard {shard_shape} of {leaf.shape}"
        else:
            assert shard_shape == leaf.shape
    assert state.step.sharding.is_fully_replicated and state.rng.sharding.is_fully_replicated
    if fsdp > 1:
        assert sharded >= len(params) // 2, f"{name}: only {sharded} of {len(params)} parameters sharded"
        embedding = [leaf for path, leaf in params.items() if leaf.shape == (MODEL.num_tokens, MODEL.dim)]
        assert embedding and "fsdp" in tuple(embedding[0].sharding.spec), f"{name}: embedding not sharded"
    return sharded


def check_bad_layouts():
    errors = {}
    for spec in ("data=3,fsdp=4", "data=2,tensor=4", "data=2,fsdp=0", "data=2;fsdp=4"):
        try:
            sharding.make_mesh(spec)
        except ValueError as err:
            errors[spec] = str(err)
        else:
            raise AssertionError(f"make_mesh({spec!r}) did not raise")
    mesh = sharding.make_mesh("data=2,fsdp=4")
    graphdef, state = fresh_state()
    calls = []
    original = train_module.make_train_step
    train_module.make_train_step = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        for batch_size, config in ((12, CONFIG), (16, CONFIG.replace(grad_accum=4)), (16, CONFIG.replace(grad_accum=3))):
            try:
                train_module.make_sharded_train_step(graphdef, config, state, mesh, batch_size)
            except ValueError as err:
                errors[f"batch={batch_size},grad_accum={config.grad_accum}"] = str(err)
            else:
                raise AssertionError(f"batch {batch_size} grad_accum {config.grad_accum} on 2x4 did not raise")
    finally:
        train_module.make_train_step = original
    assert not calls, "make_train_step (jit) was reached before the layout was validated"
    return errors


def main(out_path=None):
    assert jax.device_count() == 8, f"expected 8 CPU devices, got {jax.device_count()}"
    report = {"devices": jax.device_count(), "tolerance": TOLERANCE, "meshes": {}}

    graphdef, state = fresh_state()
    single = make_train_step(graphdef, CONFIG, donate=False)
    ref3, ref_hist3 = run_steps(single, state, 0, FIRST)
    ref5, ref_hist5 = run_steps(single, ref3, FIRST, MORE)

    states = {}
    for spec in MESHES:
        mesh = sharding.make_mesh(spec)
        graphdef, state = fresh_state()
        state, step_fn = train_module.make_sharded_train_step(graphdef, CONFIG, state, mesh, BATCH)
        state, history = run_steps(step_fn, state, 0, FIRST, mesh)
        diffs = max_diffs(state, history, ref3, ref_hist3)
        check_close(spec, diffs)
        diffs["sharded_params"] = check_sharded(spec, state, mesh)
        report["meshes"][spec] = diffs
        states[spec] = (mesh, step_fn, state)

    # checkpoint on 2x4, restore onto 8x1, continue both; both must equal the single-device steps 4-5
    mesh24, step24, state24 = states["data=2,fsdp=4"]
    mesh81, step81, _ = states["data=8,fsdp=1"]
    with tempfile.TemporaryDirectory() as directory:
        checkpointer = Checkpointer(directory)
        checkpointer.save(FIRST, state24, {"mesh": "data=2,fsdp=4"})
        _, template = fresh_state()
        template = sharding.shard_train_state(template, mesh81)
        restored, meta = checkpointer.restore(template, shardings=sharding.state_shardings(template, mesh81))
        checkpointer.close()
    assert meta["step"] == FIRST and int(restored.step) == FIRST
    for leaf, target in zip(jax.tree.leaves(restored), jax.tree.leaves(sharding.state_shardings(template, mesh81))):
        assert leaf.sharding == target, f"restored leaf on {leaf.sharding}, expected {target}"
    restored_diff = max(rel_diff(a, b) for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state24)))
    assert restored_diff == 0.0, f"restore changed values by {restored_diff}"
    cont24, hist24 = run_steps(step24, state24, FIRST, MORE, mesh24)
    cont81, hist81 = run_steps(step81, restored, FIRST, MORE, mesh81)
    resumed = {"8x1_vs_2x4": max_diffs(cont81, hist81, cont24, hist24),
               "8x1_vs_single": max_diffs(cont81, hist81, ref5, ref_hist5),
               "2x4_vs_single": max_diffs(cont24, hist24, ref5, ref_hist5)}
    for name, diffs in resumed.items():
        check_close(f"resumed {name}", diffs)
    report["resumed"] = resumed
    report["errors"] = check_bad_layouts()
    text = json.dumps(report, indent=2)
    print(text)
    if out_path:
        with open(out_path, "w") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
