"""LoRA on a device mesh, run by tests/test_lora_mesh.py in a subprocess with 8 CPU devices.

`python tests/lora_sharding_worker.py [OUT.json]`: a tiny one-layer Llama (hidden 64) with rank-4 adapters on
every linear layer trains 2 steps on a 2x4 mesh (data x fsdp) and on one device. Checks: losses and
adapters agree within 1e-5; the frozen base is split over fsdp by the partitioning rule (the embedding and the
MLP kernels are) and stays bitwise unchanged; a checkpoint of the sharded state (adapters and their optimizer
state only) restores onto the mesh and continues as the single-device run does. Kept small (one mesh, one
compilation per placement, no adapter dropout: tests/test_lora.py covers it) so that it takes seconds. Exits
non-zero on a failed check.
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

import dpo_jax  # noqa: E402
from dpo_jax import sharding  # noqa: E402
from dpo_jax.data import PreferenceDataset, PreferenceExample  # noqa: E402
from dpo_jax.models.llama import LlamaConfig, LlamaForCausalLM  # noqa: E402
from dpo_jax.train import Checkpointer, TrainConfig, init_train_state, make_train_step  # noqa: E402
from dpo_jax.train.step import make_sharded_train_step  # noqa: E402

MODEL = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=16)
LORA = dpo_jax.LoraConfig(r=4, alpha=8)
# eps=1 makes Adam's update ~ lr * g / (|g| + 1), smooth in g: with eps=1e-8 it is lr * sign(g), and float rounding
# of a near-zero gradient (B = 0 at step 0 makes many small) would flip it between meshes (tests/test_train.py)
CONFIG = TrainConfig(beta=0.5, learning_rate=0.5, eps=1.0, total_steps=10, pad_id=0)
MESH, BATCH, TOLERANCE, FIRST, MORE = "data=2,fsdp=4", 8, 1e-5, 2, 1


def dataset():
    rng = np.random.default_rng(0)
    examples = [PreferenceExample(rng.integers(2, 64, 5).tolist(), rng.integers(2, 64, rng.integers(2, 7)).tolist(),
                                  rng.integers(2, 64, rng.integers(2, 7)).tolist()) for _ in range(32)]
    return PreferenceDataset(examples, batch_size=BATCH, seed=0, max_len=16, pad_id=0, pad_to_multiple_of=16)


DATA = dataset()
BASE = LlamaForCausalLM(MODEL, rngs=nnx.Rngs(0))


def fresh_state():
    return init_train_state(dpo_jax.apply_lora(BASE, LORA), None, CONFIG, seed=0)


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / scale) if scale > 0 else float(np.linalg.norm(a - b))


def run_steps(step_fn, state, start, count, mesh=None):
    losses = []
    for step in range(start, start + count):
        arrays = DATA.get_batch(step).as_dict()
        state, metrics = step_fn(state, sharding.make_global_batch(arrays, mesh) if mesh is not None else arrays)
        losses.append(float(metrics["loss"]))
    return state, losses


def diffs(state, losses, ref_state, ref_losses):
    return {"loss": rel_diff(losses, ref_losses),
            "adapters": max(rel_diff(a, b) for a, b in zip(jax.tree.leaves(state.params),
                                                            jax.tree.leaves(ref_state.params))),
            "adapters_moved": min(rel_diff(a, b) for a, b in zip(jax.tree.leaves(state.params),
                                                                 jax.tree.leaves(fresh_state()[1].params)))}


def check_base(state, mesh, before):
    """Every base leaf placed by the partitioning rule and bitwise unchanged; returns how many are split."""
    fsdp = mesh.shape["fsdp"]
    sharded = 0
    for (path, leaf), old in zip(jax.tree_util.tree_leaves_with_path(state.ref_params.base), before):
        expected = sharding.leaf_spec(leaf.shape, leaf.dtype, fsdp)
        assert leaf.sharding.spec == expected, f"base {jax.tree_util.keystr(path)} spec {leaf.sharding.spec}"
        sharded += "fsdp" in tuple(expected)
        assert np.array_equal(np.asarray(leaf), old), f"base {jax.tree_util.keystr(path)} changed"
    for name, leaf in (("embedding", state.ref_params.base["embed_tokens"]["weight"].get_value()),
                       ("mlp", state.ref_params.base["layers"][0]["mlp"]["up_proj"]["kernel"].get_value())):
        assert "fsdp" in tuple(leaf.sharding.spec), f"the {name} is not sharded: {leaf.sharding.spec}"
    return sharded


def main(out_path=None):
    assert jax.device_count() == 8, f"expected 8 CPU devices, got {jax.device_count()}"
    before = [np.asarray(x) for x in jax.tree.leaves(nnx.state(BASE, nnx.Param))]
    graphdef, state = fresh_state()
    single = make_train_step(graphdef, CONFIG, donate=False)
    ref_first, ref_losses_first = run_steps(single, state, 0, FIRST)
    ref_more, ref_losses_more = run_steps(single, ref_first, FIRST, MORE)
    assert abs(ref_losses_first[0] - np.log(2)) <= 1e-6, ref_losses_first

    mesh = sharding.make_mesh(MESH)
    graphdef, state = fresh_state()
    state, step_fn = make_sharded_train_step(graphdef, CONFIG, state, mesh, BATCH, donate=False)
    state, losses = run_steps(step_fn, state, 0, FIRST, mesh)
    report = {"mesh": MESH, "trained": diffs(state, losses, ref_first, ref_losses_first)}
    report["sharded_base_leaves"] = check_base(state, mesh, before)
    report["base_leaves"] = len(before)

    with tempfile.TemporaryDirectory() as directory:
        checkpointer = Checkpointer(directory)
        checkpointer.save(FIRST, state, {})
        _, template = fresh_state()
        template = sharding.shard_train_state(template, mesh)
        restored, _ = checkpointer.restore(template, shardings=sharding.state_shardings(template, mesh))
        checkpointer.close()
    continued, continued_losses = run_steps(step_fn, restored, FIRST, MORE, mesh)
    report["resumed"] = diffs(continued, continued_losses, ref_more, ref_losses_more)
    check_base(continued, mesh, before)
    for key in ("trained", "resumed"):
        found = report[key]
        assert max(found["loss"], found["adapters"]) <= TOLERANCE, (key, found)
        assert found["adapters_moved"] > 0, (key, "an adapter leaf did not train", found)
    text = json.dumps(report, indent=2)
    print(text)
    if out_path:
        with open(out_path, "w") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
