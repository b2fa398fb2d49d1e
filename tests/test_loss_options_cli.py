"""`dpo-jax train` with the loss family's options: a weighted combination and ORPO run end to end and log their
per-term metrics; the TrainConfig carries the options through run_config.json (a resumed run rebuilds them);
bad combinations exit with argparse's clear messages. Tiny model and data (dim 32, depth 1, 2 steps).
"""

import json

import pytest

from dpo_jax.cli import main
from dpo_jax.train import TrainConfig, load_run_config
from tests.test_checkpointing import write_data

TINY = ["--dim", "32", "--depth", "1", "--heads", "2", "--max-seq-len", "12", "--batch-size", "4", "--steps", "2",
        "--checkpoint-every", "2", "--no-progress"]


def train(tmp_path, name, *options):
    out = tmp_path / name
    code = main(["train", "--data", write_data(tmp_path / "data.jsonl"), "--out", str(out), *TINY, *options])
    assert code == 0
    return out, [json.loads(line) for line in open(out / "metrics.jsonl")]


def test_weighted_combination_runs_and_logs_each_term(tmp_path):
    out, records = train(tmp_path, "rpo", "--loss-type", "sigmoid,sft", "--loss-weights", "1,0.5", "--logits-metrics")
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert abs(record["loss/sigmoid"] + 0.5 * record["loss/sft"] - record["loss"]) <= 1e-6
        assert record["nll_loss"] == record["loss/sft"]
        assert "logits/chosen" in record and "logits/rejected" in record
    config = load_run_config(out)
    assert config.train.loss_type == ("sigmoid", "sft") and config.train.loss_weights == (1.0, 0.5)


def test_orpo_runs_reference_free(tmp_path):
    out, records = train(tmp_path, "orpo", "--loss-type", "orpo")
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["loss"] > r["nll_loss"] > 0 for r in records)  # NLL + beta * (a positive odds-ratio loss)
    assert load_run_config(out).train.reference_free


def test_ld_dpo_and_wpo_run(tmp_path):
    _, records = train(tmp_path, "ld-wpo", "--reduction", "sum", "--ld-alpha", "0.5", "--use-weighting")
    assert [r["step"] for r in records] == [1, 2]


def test_train_config_round_trips_the_loss_options():
    config = TrainConfig(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0], reduction="sum",
                         ld_alpha=0.3, logits_metrics=True)
    assert config.loss_type == ("sigmoid", "bco_pair", "sft") and hash(config)  # hashable: one compiled step
    restored = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert TrainConfig(loss_type="orpo").reference_free and not config.reference_free


@pytest.mark.parametrize("argv, message", [
    (["--loss-type", "sigmoid,nope"], "invalid choice: 'nope'"),
    (["--loss-type", "sigmoid,sft", "--loss-weights", "1"], "one weight per loss_type term"),
    (["--loss-type", "sigmoid", "--loss-weights", "a,b"], "comma-separated numbers"),
    (["--loss-type", "orpo,sigmoid"], "'orpo' is reference-free"),
    (["--ld-alpha", "0.5", "--reduction", "mean"], "needs reduction='sum'"),
    (["--ld-alpha", "1.5", "--reduction", "sum"], r"ld_alpha must be None or a number in [0, 1]"),
    (["--loss-type", "aot", "--use-weighting"], "does not apply to loss_type 'aot'"),
    (["--loss-type", "sigmoid_norm", "--reduction", "mean"], "needs reduction='sum'"),
])
def test_bad_loss_options_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
