"""`dpo-jax train --model DIR --data FILE`: policy, reference and tokenizer from a Hugging Face directory, the
policy written back as one (`hf_policy/`), with the prefix-shared layout and on an 8-device data x fsdp mesh."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

import dpo_jax
from dpo_jax.cli import main
from dpo_jax.hf_demo import write_tokenizer
from dpo_jax.models.llama import LlamaConfig, LlamaForCausalLM
from dpo_jax.models.pretrained import state_dict_from_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    config = LlamaConfig(vocab_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    dpo_jax.save_pretrained(LlamaForCausalLM(config, rngs=nnx.Rngs(0)), root / "model")
    write_tokenizer(str(root / "model"))
    rng = np.random.default_rng(0)
    with open(root / "pairs.jsonl", "w") as handle:
        for _ in range(16):
            digits = "".join(str(d) for d in rng.permutation(10)[:rng.integers(2, 6)])
            handle.write(json.dumps({"prompt": digits + ">", "chosen": "".join(sorted(digits)),
                                     "rejected": "".join(sorted(digits, reverse=True))}) + "\n")
    return root


def train_args(root, out, *extra):
    return ["train", "--model", str(root / "model"), "--data", str(root / "pairs.jsonl"), "--out", str(out),
            "--steps", "2", "--batch-size", "8", "--lr", "1e-2", "--no-progress", "--max-seq-len", "16", *extra]


def check_run(root, out):
    policy_dir = out / "hf_policy"
    assert sorted(os.listdir(policy_dir)) == ["config.json", "generation_config.json", "model.safetensors",
                                              "tokenizer.json", "tokenizer_config.json"]
    start = state_dict_from_model(dpo_jax.from_pretrained(root / "model"))
    trained = state_dict_from_model(dpo_jax.from_pretrained(policy_dir))
    assert set(start) == set(trained) and any(not np.array_equal(start[k], trained[k]) for k in start)
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    assert not (out / "policy.safetensors").exists()


def test_train_from_a_model_directory_with_prefix_sharing(model_and_data, tmp_path, capsys):
    assert main(train_args(model_and_data, tmp_path / "run", "--layout", "prefix_shared")) == 0
    check_run(model_and_data, tmp_path / "run")
    assert json.loads(capsys.readouterr().out)["steps"] == 2


def test_train_from_a_model_directory_on_an_8_device_mesh(model_and_data, tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.run([sys.executable, "-m", "dpo_jax", *train_args(model_and_data, tmp_path / "run", "--mesh",
                                                                         "data=2,fsdp=4")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    check_run(model_and_data, tmp_path / "run")


def test_model_option_errors(model_and_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", str(model_and_data / "model")])
    assert exit_info.value.code == 2 and "--model needs --data" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((model_and_data / "model" / "config.json").read_text())
    (bare / "model.safetensors").write_bytes((model_and_data / "model" / "model.safetensors").read_bytes())
    assert main(train_args(model_and_data, tmp_path / "run", "--model", str(bare))) == 2
    assert "no tokenizer.json" in capsys.readouterr().err


def test_conversational_data_uses_the_model_directory_chat_template(model_and_data, tmp_path, capsys):
    """`--model DIR` brings its tokenizer's chat template: conversational pairs render and train with it."""
    model_dir = tmp_path / "chat-model"
    model_dir.mkdir()
    for name in os.listdir(model_and_data / "model"):
        (model_dir / name).write_bytes((model_and_data / "model" / name).read_bytes())
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'user' %}>{% endif %}"
                               "{% endfor %}{% if not add_generation_prompt %}</s>{% endif %}")
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    with open(tmp_path / "chat.jsonl", "w") as handle:
        for prompt in ("314", "52", "9071", "86"):
            handle.write(json.dumps({"prompt": [{"role": "user", "content": prompt}],
                                     "chosen": [{"role": "assistant", "content": "".join(sorted(prompt))}],
                                     "rejected": [{"role": "assistant",
                                                   "content": "".join(sorted(prompt, reverse=True))}]}) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--model", str(model_dir), "--data", str(tmp_path / "chat.jsonl"), "--out", str(out),
                 "--steps", "1", "--batch-size", "4", "--no-progress", "--max-seq-len", "16"]) == 0
    summary = json.loads(capsys.readouterr().out)
    (report,) = summary["data"]["files"]
    assert report["format"] == "conversational_preference"
    assert report["chat_template"] == str(model_dir / "tokenizer_config.json")
