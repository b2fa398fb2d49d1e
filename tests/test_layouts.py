"""The training run with each batch layout: prefix sharing trains on the same batches as padded rows and must
give the same per-step losses; packing groups pairs differently, so it must run, log and learn."""

import numpy as np
import pytest

from dpo_jax.layouts import layout_batches, validate_layout
from dpo_jax.train import RunConfig, run as train
from dpo_jax.train.outputs import read_metrics
from dpo_jax.train import TrainConfig
from tests.test_checkpointing import write_data


def run(tmp_path, name, **changes):
    options = dict(steps=4, batch_size=4, checkpoint_every=4, dim=32, depth=1, heads=2, max_seq_len=12,
                   progress=False, out_dir=str(tmp_path / name), data=write_data(tmp_path / "data.jsonl"),
                   train=TrainConfig(learning_rate=1e-3))
    options.update(changes)
    summary = train(RunConfig(**options))
    return summary, [(r["step"], r["loss"]) for r in read_metrics(tmp_path / name)]


def test_prefix_shared_run_reproduces_the_padded_run(tmp_path):
    _, padded = run(tmp_path, "padded")
    _, shared = run(tmp_path, "shared", layout="prefix_shared")
    assert [s for s, _ in shared] == [s for s, _ in padded] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(shared, padded):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b))


def test_packed_run_trains_and_writes_its_files(tmp_path):
    summary, losses = run(tmp_path, "packed", layout="packed", steps=6, rows=2)
    assert [s for s, _ in losses] == list(range(1, 7))
    assert all(np.isfinite(loss) for _, loss in losses)
    assert (tmp_path / "packed" / "policy.safetensors").exists()
    assert summary["tokens_per_s"] > 0


def test_packed_batches_are_random_access_across_epochs(tmp_path):
    from dpo_jax.data import read_preference_jsonl
    from dpo_jax.tokenizer import ByteTokenizer

    examples = read_preference_jsonl(write_data(tmp_path / "data.jsonl"), ByteTokenizer())
    options = dict(batch_size=4, seed=3, max_len=12, pad_id=256, mask_alignment="next_token", rows=2)
    walked = layout_batches("packed", examples, **options)
    fresh = layout_batches("packed", examples, **options)
    sequence = [walked.get_batch(step)[0] for step in range(12)]  # crosses epoch boundaries
    for step in (11, 0, 7):
        for key, value in fresh.get_batch(step)[0].items():
            np.testing.assert_array_equal(value, sequence[step][key])


@pytest.mark.parametrize("layout, kwargs, message", [
    ("diagonal", {}, "unknown layout"),
    ("packed", dict(num_devices=8), "runs on one device"),
    ("prefix_shared", dict(grad_accum=2), "grad_accum 1"),
    ("packed", dict(precompute_ref=True), "computes the reference online"),
])
def test_unsupported_layout_combinations_raise(layout, kwargs, message):
    options = {**dict(num_devices=1, grad_accum=1, precompute_ref=False), **kwargs}
    with pytest.raises(ValueError, match=message):
        validate_layout(layout, **options)
