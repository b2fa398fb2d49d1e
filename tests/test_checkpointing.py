"""Checkpoints and faults: orbax round trip, keep-last-N, unfinished saves ignored, kill-and-resume gives the
same losses as an uninterrupted run, a NaN stops the run with a clear message and leaves the last good checkpoint.

Runs use `--data` with a tiny model; every run here shares one TrainConfig, so the step compiles once.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpo_jax.train import Checkpointer
from dpo_jax.train import NonFiniteError, RunConfig, load_run_config, run as train
from dpo_jax.train.outputs import read_metrics
from dpo_jax.train import TrainConfig


def write_data(path, count=24, seed=0):
    rng = np.random.default_rng(seed)
    letters = "abcdefgh"
    with open(path, "w") as handle:
        for _ in range(count):
            word = lambda n: "".join(rng.choice(list(letters), n))  # noqa: E731
            handle.write(json.dumps({"prompt": word(3), "chosen": word(3), "rejected": word(2)}) + "\n")
    return str(path)


def run_config(tmp_path, out, **changes):
    train_config = changes.pop("train", TrainConfig(learning_rate=1e-3))
    options = dict(steps=6, batch_size=4, checkpoint_every=2, dim=32, depth=1, heads=2, max_seq_len=12,
                   progress=False)
    options.update(changes)
    return RunConfig(out_dir=str(tmp_path / out), data=write_data(tmp_path / "data.jsonl"), train=train_config,
                     **options)


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir)]


def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    full = train(run_config(tmp_path, "full"))
    # "killed" after step 5: checkpoint at 4, metrics already logged for step 5
    killed = run_config(tmp_path, "resumed", stop_after_step=5)
    assert train(killed) == {"stopped_at_step": 5}
    assert [s for s, _ in losses(tmp_path / "resumed")] == [1, 2, 3, 4, 5]
    resumed_config = load_run_config(tmp_path / "resumed")
    assert resumed_config.steps == 6 and resumed_config.train == killed.train
    resumed = train(resumed_config)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "full")  # no duplicated step 5, same floats
    assert resumed["loss"] == full["loss"]
    for name in ("summary.json", "training.png", "policy.safetensors", "metrics.jsonl", "run_config.json"):
        assert os.path.exists(tmp_path / "resumed" / name), name
    assert Checkpointer(tmp_path / "resumed" / "checkpoints").all_steps() == [2, 4, 6]


def test_non_finite_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    config = run_config(tmp_path, "nan", checkpoint_every=1, train=TrainConfig(learning_rate=1e30, grad_clip=None))
    with pytest.raises(NonFiniteError, match=r"non-finite value at step \d+: (loss|grad_norm|updated)") as info:
        train(config)
    bad_step = int(str(info.value).split("at step ")[1].split(":")[0])
    checkpointer = Checkpointer(tmp_path / "nan" / "checkpoints")
    assert checkpointer.latest_step() == bad_step - 1
    assert f"step {bad_step - 1}" in str(info.value)
    meta = checkpointer.read_meta()
    assert meta["step"] == bad_step - 1 and meta["train_config"]["learning_rate"] == 1e30
    assert [r["step"] for r in read_metrics(tmp_path / "nan")] == list(range(1, bad_step))


def test_checkpointer_round_trip_keep_last_and_ignore_unfinished(tmp_path):
    state = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}, "step": jnp.array(3, jnp.int32),
             "rng": jax.random.key_data(jax.random.key(1))}
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=2)
    for step in (1, 2, 3):
        checkpointer.save(step, jax.tree.map(lambda x: x + step, state), {"note": "hi"})
    assert checkpointer.all_steps() == [2, 3]
    # an unfinished save (killed mid-write) sits in a temporary folder: restore must not pick it up
    os.makedirs(tmp_path / "ckpt" / "4.orbax-checkpoint-tmp-1234" / "state")
    assert checkpointer.latest_step() == 3
    restored, meta = checkpointer.restore(state)
    assert meta == {"note": "hi", "step": 3}
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(jax.tree.map(lambda x: x + 3, state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert Checkpointer(tmp_path / "ckpt").latest_step() == 3  # a fresh manager sees the same
