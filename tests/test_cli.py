"""CLI: the --quick demo end to end writes every run-dir file; the policy loads into torch with the same logits;
bad arguments exit with argparse's clear messages."""

import json
import os

import numpy as np
import pytest

from dpo_jax.cli import main

DESIGN_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                  "logps/chosen", "logps/rejected", "grad_norm", "lr", "tokens_per_s")


def test_demo_aligns_the_model_writes_every_file_and_policy_loads_in_torch(tmp_path, capsys):
    """The full demo (`dpo-jax train` with no option but the output folder and the checkpoint cadence) with its
    default recipe: DPO lifts the sampled preferred rate from ~0.5 to >= 0.9 and the model still sorts."""
    out = tmp_path / "run"
    assert main(["train", "--checkpoint-every", "50", "--out", str(out), "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for name in ("metrics.jsonl", "summary.json", "training.png", "policy.safetensors", "run_config.json"):
        assert (out / name).exists(), name
    assert sorted(os.listdir(out / "checkpoints"), key=int) == ["50", "100", "150"]
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in records] == list(range(1, 151))
    assert all(key in records[-1] for key in DESIGN_METRICS)
    summary = json.load(open(out / "summary.json"))
    assert summary == printed
    assert 0.25 <= summary["preferred_rate_before"] <= 0.75, summary
    assert summary["preferred_rate_after"] >= 0.9, summary
    assert summary["valid_rate_after"] >= 0.9, summary

    import torch
    from safetensors.torch import load_file

    from dpo_jax.models.x_transformers.safetensors_file import load_safetensors
    from dpo_jax.models.x_transformers.weights import build_torch_model

    policy = load_safetensors(out / "policy.safetensors")
    wrapper = build_torch_model(policy.config)
    wrapper.load_state_dict(load_file(str(out / "policy.safetensors")), strict=True)
    wrapper.eval()
    tokens = np.random.default_rng(0).integers(0, policy.config.num_tokens, (2, policy.config.max_seq_len))
    with torch.no_grad():
        torch_logits = wrapper(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(np.asarray(policy(tokens)), torch_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("argv, message", [
    (["train", "--steps", "0"], "must be a positive integer"),
    (["train", "--loss-type", "nope"], "invalid choice"),
    (["train", "--optimizer", "sgd"], "invalid choice"),
    (["train", "--lr", "-1"], "must be > 0"),
    (["train", "--batch-size", "3", "--grad-accum", "2"], "divisible by --grad-accum"),
    (["train", "--dim", "30", "--heads", "4"], "divisible by --heads"),
    (["train", "--ref-sync-every", "2", "--precompute-ref"], "ref_sync_every needs a live reference"),
    (["train", "--resume", "/nonexistent/run"], "not a run directory"),
    ([], "required"),
])
def test_bad_arguments_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_file_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err
