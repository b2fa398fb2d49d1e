"""`dpo-jax train --model DIR --lora-r R`: a Hugging Face directory to a DPO-trained PEFT adapter directory in one
command; the log states what trains and what it costs; checkpoints hold the adapters only and a resumed run
continues the same trajectory (adapter dropout on, so the RNG is part of it); `--init-adapter` continues an
adapter with a frozen copy of it as the reference; peft loads the result; the refused options."""

import json
import math
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import dpo_jax
from dpo_jax.cli import main
from dpo_jax.hf_demo import write_tokenizer
from dpo_jax.models import lora
from dpo_jax.models.llama import LlamaConfig, LlamaForCausalLM
from dpo_jax.train import RunConfig, TrainConfig, load_run_config, run
from dpo_jax.train.outputs import read_metrics

LLAMA = LlamaConfig(vocab_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64)
RANK = 4
# r * (in + out) per layer: q, o (32 + 32), k, v (32 + 16), gate, up (32 + 64), down (64 + 32)
TRAINABLE = LLAMA.num_hidden_layers * RANK * (2 * 64 + 2 * 48 + 3 * 96)


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-cli")
    dpo_jax.save_pretrained(LlamaForCausalLM(LLAMA, rngs=nnx.Rngs(0)), root / "model")
    write_tokenizer(str(root / "model"))
    rng = np.random.default_rng(0)
    with open(root / "pairs.jsonl", "w") as handle:
        for _ in range(16):
            digits = "".join(str(d) for d in rng.permutation(10)[:rng.integers(2, 6)])
            handle.write(json.dumps({"prompt": digits + ">", "chosen": "".join(sorted(digits)),
                                     "rejected": "".join(sorted(digits, reverse=True))}) + "\n")
    return root


def train_args(root, out, *extra, steps=3):
    return ["train", "--model", str(root / "model"), "--data", str(root / "pairs.jsonl"), "--out", str(out),
            "--steps", str(steps), "--batch-size", "8", "--lr", "1e-2", "--no-progress", "--max-seq-len", "16", *extra]


def test_one_command_from_a_model_directory_to_a_peft_adapter(model_and_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(model_and_data, out, "--lora-r", str(RANK), "--lora-alpha", "8")) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    base = dpo_jax.from_pretrained(model_and_data / "model")
    total = TRAINABLE + sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(base, nnx.Param)))
    assert f"LoRA: trainable {TRAINABLE:,} / total {total:,} parameters" in captured.err
    assert f"optimizer state {8 * TRAINABLE + 8:,} bytes" in captured.err  # adam's mu, nu (float32), two counters
    assert "the reference is the adapter-off base" in captured.err
    assert summary["lora"]["trainable_params"] == TRAINABLE
    assert sorted(os.listdir(out / "adapter")) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not (out / "hf_policy").exists()
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (
        RANK, 8.0, os.path.abspath(model_and_data / "model"))
    trained = dpo_jax.load_adapter(base, out / "adapter")
    assert all(np.any(np.asarray(b)) for _, _, b in lora.adapter_pairs(trained))  # B moved off zero
    tokens = np.random.default_rng(0).integers(0, LLAMA.vocab_size, (2, 8))
    assert np.abs(np.asarray(trained(tokens)) - np.asarray(base(tokens))).max() > 1e-4
    records = read_metrics(out)
    assert abs(records[0]["loss"] - math.log(2)) <= 1e-6
    stored = ocp.StandardCheckpointer().restore(out / "checkpoints" / "3" / "state")  # what is on disk
    assert {name.split("_")[0] for name in stored} == {"step", "params", "opt", "rng"}, sorted(stored)
    assert sum(np.asarray(v).size for k, v in stored.items() if k.startswith("params")) == TRAINABLE


def test_peft_loads_the_run_adapter(model_and_data, tmp_path):
    import peft
    import torch
    import transformers

    out = tmp_path / "run"
    assert main(train_args(model_and_data, out, "--lora-r", str(RANK), "--lora-targets", "q_proj,v_proj",
                           steps=2)) == 0
    base = transformers.AutoModelForCausalLM.from_pretrained(model_and_data / "model")
    model = peft.PeftModel.from_pretrained(base, out / "adapter").eval()
    tokens = np.random.default_rng(1).integers(0, LLAMA.vocab_size, (2, 8))
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens)).logits.numpy()
    ours = np.asarray(dpo_jax.load_adapter(dpo_jax.from_pretrained(model_and_data / "model"), out / "adapter")(tokens))
    assert np.abs(theirs - ours).max() <= 1e-5 * max(1.0, np.abs(theirs).max())


def test_resume_continues_the_same_trajectory(model_and_data, tmp_path):
    def config(out, stop=None):
        return RunConfig(out_dir=str(out), model=str(model_and_data / "model"), data=str(model_and_data / "pairs.jsonl"),
                         steps=4, batch_size=8, max_seq_len=16, checkpoint_every=2, progress=False,
                         lora=dpo_jax.LoraConfig(r=RANK, alpha=8, dropout=0.3),
                         train=TrainConfig(learning_rate=1e-2, beta=0.1), stop_after_step=stop)
    run(config(tmp_path / "full"))
    assert run(config(tmp_path / "killed", stop=2)) == {"stopped_at_step": 2}
    resumed = load_run_config(tmp_path / "killed")  # what --resume DIR reads back
    assert resumed.lora == dpo_jax.LoraConfig(r=RANK, alpha=8, dropout=0.3)
    resumed.progress = False
    run(resumed)
    full, again = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "killed")
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    assert [r["loss"] for r in again] == [r["loss"] for r in full]


def test_init_adapter_continues_with_a_frozen_copy_as_reference(model_and_data, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(train_args(model_and_data, first, "--lora-r", str(RANK), steps=3)) == 0
    capsys.readouterr()
    second = tmp_path / "second"
    assert main(train_args(model_and_data, second, "--init-adapter", str(first / "adapter"), steps=2)) == 0
    err = capsys.readouterr().err
    assert f"the reference is the initial adapter from {first / 'adapter'}, frozen" in err
    records = read_metrics(second)
    assert abs(records[0]["loss"] - math.log(2)) <= 1e-6  # the policy starts at its reference
    # precomputed, the reference log-probs are the frozen adapter's too
    assert main(train_args(model_and_data, tmp_path / "cached", "--init-adapter", str(first / "adapter"),
                           "--precompute-ref", steps=1)) == 0
    assert abs(read_metrics(tmp_path / "cached")[0]["loss"] - math.log(2)) <= 1e-6


@pytest.mark.parametrize("extra, message", [
    (["--lora-r", "4", "--load-in-4bit"], "QLoRA"),
    (["--load-in-8bit"], "QLoRA"),
    (["--lora-alpha", "8"], "--lora-alpha need --lora-r"),
    (["--init-adapter", "somewhere", "--lora-r", "4"], "--init-adapter brings its own rank"),
    (["--lora-r", "4", "--lora-dropout", "1.5"], "dropout must be in"),
])
def test_refused_lora_options(model_and_data, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(train_args(model_and_data, tmp_path / "run", *extra))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_targets_that_match_nothing_end_with_a_clear_error(model_and_data, tmp_path, capsys):
    assert main(train_args(model_and_data, tmp_path / "run", "--lora-r", "4", "--lora-targets", "qproj")) == 2
    assert "'qproj' matches no linear layer" in capsys.readouterr().err


def test_hf_demo_lora_recipe_trains_adapters_and_reads_them_back(model_and_data, tmp_path):
    """`python -m dpo_jax.hf_demo --lora-r R`: step 2 asks for rank-R adapters (alpha 2R, the LoRA learning rate)
    and step 3 evaluates the SFT model with the run's adapter directory on it (no training here: see README)."""
    from dpo_jax import cli, hf_demo

    command = hf_demo.train_command(str(tmp_path), lora_r=4)
    parser = cli.build_parser()
    config = cli.run_config_from_args(parser.parse_args(command), parser)
    assert (config.lora.r, config.lora.alpha, config.train.learning_rate) == (4, 8.0, hf_demo.LORA_LEARNING_RATE)
    assert cli.run_config_from_args(parser.parse_args(hf_demo.train_command(str(tmp_path))), parser).lora is None
    os.symlink(model_and_data / "model", tmp_path / hf_demo.SFT_DIR)
    base = dpo_jax.from_pretrained(str(model_and_data / "model"))
    adapted = lora.apply_lora(base, dpo_jax.LoraConfig(r=4, alpha=8, init="zero_a"))
    for _, adapter in lora.adapters(adapted):  # both factors non-zero, as after training
        adapter.a.set_value(adapter.a.get_value() + 0.1)
    dpo_jax.save_adapter(adapted, str(tmp_path / hf_demo.RUN_DIR / "adapter"))
    policy = hf_demo.trained_policy(str(tmp_path))
    tokens = np.array([[3, 1, 4, 10, 1, 3, 4]])
    logits = nnx.jit(lambda model: model(tokens))  # one compilation per model instead of op by op
    np.testing.assert_allclose(np.asarray(logits(policy)), np.asarray(logits(adapted)), rtol=1e-6, atol=1e-6)
    assert not np.allclose(np.asarray(logits(policy)), np.asarray(logits(base)), atol=1e-4)
