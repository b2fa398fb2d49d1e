"""Hugging Face directories without torch: config.json read strictly (refusals name the key), written back the
same, safetensors shards and index, bad directories, dtypes, and loading straight onto a device mesh (a subprocess
with 8 CPU devices). Parity with transformers itself is in parity_tests/test_hf_families.py."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import dpo_jax
from dpo_jax.models.gemma import GemmaConfig, GemmaForCausalLM
from dpo_jax.models.hf.checkpoint import parse_size
from dpo_jax.models.hf.config_reader import UnsupportedCheckpointError
from dpo_jax.models.hf.rope import RopeSpec
from dpo_jax.models.llama import LlamaConfig, LlamaForCausalLM
from dpo_jax.models.pretrained import config_from_hf, state_dict_from_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


def llama_dict(**changes):
    return {"model_type": "llama", **SMALL, "max_position_embeddings": 64, **changes}


def gemma_dict(model_type="gemma2", **changes):
    return {"model_type": model_type, **SMALL, "head_dim": 8, **changes}


REFUSED = [
    (llama_dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling.*yarn"),
    (llama_dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}), "rope_parameters.*dynamic"),
    (llama_dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    (llama_dict(hidden_act="relu"), "hidden_act.*relu"),
    (llama_dict(attention_dropout=0.1), "attention_dropout"),
    (llama_dict(quantization_config={"quant_method": "bitsandbytes"}), "quantization_config"),
    (llama_dict(is_encoder_decoder=True), "is_encoder_decoder"),
    ({"model_type": "qwen3", **SMALL, "num_experts": 8}, r"\['num_experts'\]"),
    ({"model_type": "qwen3_moe", **SMALL}, "qwen3_moe.*not ported: mixture-of-experts"),
    ({"model_type": "mixtral", **SMALL}, "mixtral.*not ported"),
    ({"model_type": "mistral", **SMALL, "layer_types": ["full_attention"] * 2}, "layer_types"),
    (gemma_dict("gemma3"), "not ported: it is the multimodal"),
    (gemma_dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
    (gemma_dict("gemma3_text", rope_parameters={"sliding_attention": {"rope_type": "linear", "factor": 2.0}}),
     "sliding_attention"),
    ({**llama_dict(), "model_type": None, "architectures": ["GPT2LMHeadModel"]}, "not ported"),
]


@pytest.mark.parametrize("data, message", REFUSED, ids=lambda x: str(x)[:40] if isinstance(x, dict) else x)
def test_unsupported_config_is_refused_naming_it(data, message):
    with pytest.raises((UnsupportedCheckpointError, ValueError), match=message):
        config_from_hf(data)


def test_an_unsupported_checkpoint_error_is_both_not_implemented_and_a_value_error():
    with pytest.raises(NotImplementedError):
        config_from_hf(llama_dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}))


def test_metadata_keys_are_kept_and_a_config_without_model_type_is_found_by_architecture():
    data = llama_dict(eos_token_id=[1, 2], bos_token_id=0, architectures=["LlamaForCausalLM"], use_cache=True,
                      transformers_version="4.44.0", torch_dtype="bfloat16")
    config = config_from_hf(data)
    written = config.to_hf()
    assert written["eos_token_id"] == [1, 2] and written["bos_token_id"] == 0 and written["use_cache"] is True
    del data["model_type"]
    assert config_from_hf(data) == config


CONFIGS = [
    LlamaConfig(**SMALL),
    LlamaConfig(**SMALL, tie_word_embeddings=True, attention_bias=True, mlp_bias=True, rope=RopeSpec(
        theta=5e5, rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32), max_position_embeddings=128),
    LlamaConfig(**SMALL, model_type="mistral", sliding_window=16, head_dim=16),
    LlamaConfig(**SMALL, model_type="qwen2", sliding_window=8, layer_types=("full_attention", "sliding_attention"),
                max_window_layers=1, rope=RopeSpec(theta=1e6, rope_type="linear", factor=2.0)),
    LlamaConfig(**SMALL, model_type="qwen3", head_dim=16, attention_bias=True),
    GemmaConfig(**SMALL, head_dim=8, attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=16),
    GemmaConfig(**SMALL, head_dim=8, model_type="gemma3_text", query_pre_attn_scalar=8, tie_word_embeddings=False,
                layer_types=("sliding_attention", "full_attention"), rope=RopeSpec(theta=1e6, rope_type="linear",
                                                                                   factor=8.0)),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.model_type)
def test_config_round_trips_through_config_json(config):
    data = json.loads(json.dumps(config.to_hf()))
    assert config_from_hf(data) == config


def random_model(config, seed=0):
    """A randomly initialised model with every parameter (norm gains too) away from its init."""
    model = (GemmaForCausalLM if isinstance(config, GemmaConfig) else LlamaForCausalLM)(config, rngs=nnx.Rngs(seed))
    key = jax.random.key(seed + 1)
    for path, param in nnx.iter_graph(model):
        if isinstance(param, nnx.Param):
            key, sub = jax.random.split(key)
            param.set_value(param.get_value() + 0.1 * jax.random.normal(sub, param.get_value().shape))
    return model


def params_of(model):
    return {key: np.asarray(value) for key, value in state_dict_from_model(model).items()}


@pytest.mark.parametrize("config", [CONFIGS[1], CONFIGS[6]], ids=lambda c: c.model_type)
def test_save_then_load_gives_the_same_weights_and_logits(config, tmp_path):
    model = random_model(config)
    files = dpo_jax.save_pretrained(model, tmp_path, max_shard_size="20KB")
    assert len(files) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    loaded = dpo_jax.from_pretrained(tmp_path)
    assert loaded.config == config and loaded.config.name_or_path == str(tmp_path)
    for key, value in params_of(model).items():
        assert np.array_equal(params_of(loaded)[key], value), key
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 12))
    assert np.array_equal(np.asarray(loaded(tokens)), np.asarray(model(tokens)))
    with open(tmp_path / "config.json") as handle:
        assert json.load(handle)["dtype"] == "float32"


def test_dtype_option_casts_and_none_keeps_the_checkpoint_dtype(tmp_path):
    model = random_model(CONFIGS[0])
    dpo_jax.save_pretrained(model, tmp_path)
    as_bf16 = dpo_jax.from_pretrained(tmp_path, dtype=jnp.bfloat16)
    assert as_bf16.config.dtype == jnp.bfloat16 and as_bf16.embed_tokens.weight.get_value().dtype == jnp.bfloat16
    dpo_jax.save_pretrained(as_bf16, tmp_path / "bf16")
    assert dpo_jax.from_pretrained(tmp_path / "bf16").embed_tokens.weight.get_value().dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="floating"):
        dpo_jax.from_pretrained(tmp_path, dtype=jnp.int32)


def test_saving_again_replaces_the_earlier_weight_files(tmp_path):
    model = random_model(CONFIGS[0])
    dpo_jax.save_pretrained(model, tmp_path, max_shard_size="20KB")
    dpo_jax.save_pretrained(model, tmp_path)  # one file now: the old shards and index must go
    names = sorted(os.listdir(tmp_path))
    assert [n for n in names if "safetensors" in n] == ["model.safetensors"]
    dpo_jax.save_pretrained(model, tmp_path, max_shard_size="20KB")
    assert "model.safetensors" not in os.listdir(tmp_path)  # it would shadow the index in transformers


def test_tied_checkpoint_with_an_lm_head_copy_loads(tmp_path):
    config = CONFIGS[1]  # tied
    model = random_model(config)
    dpo_jax.save_pretrained(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)  # old checkpoints have it
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = dpo_jax.from_pretrained(tmp_path)
    assert np.array_equal(np.asarray(loaded.embed_tokens.weight.get_value()),
                          np.asarray(model.embed_tokens.weight.get_value()))


def test_bad_directories_are_refused_with_the_reason(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        dpo_jax.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        dpo_jax.from_pretrained(tmp_path)
    model = random_model(CONFIGS[0])
    dpo_jax.save_pretrained(model, tmp_path / "ok")
    tensors = load_file(tmp_path / "ok" / "model.safetensors")

    def variant(name, tensors):
        os.makedirs(tmp_path / name)
        with open(tmp_path / "ok" / "config.json") as source, open(tmp_path / name / "config.json", "w") as target:
            target.write(source.read())
        if tensors is not None:
            save_file(tensors, tmp_path / name / "model.safetensors", metadata={"format": "pt"})
        return tmp_path / name

    missing = dict(tensors)
    missing.pop("model.norm.weight")
    with pytest.raises(ValueError, match=r"missing keys \['model.norm.weight'\]"):
        dpo_jax.from_pretrained(variant("missing", missing))
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        dpo_jax.from_pretrained(variant("extra", {**tensors, "extra": np.zeros(3, np.float32)}))
    wrong = {**tensors, "model.norm.weight": np.zeros(33, np.float32)}
    with pytest.raises(ValueError, match=r"model.norm.weight has shape \(33,\)"):
        dpo_jax.from_pretrained(variant("shape", wrong))
    bin_only = variant("bin", None)
    (bin_only / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(UnsupportedCheckpointError, match="safetensors"):
        dpo_jax.from_pretrained(bin_only)
    index_only = variant("index", None)
    (index_only / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="missing"):
        dpo_jax.from_pretrained(index_only)


@pytest.mark.parametrize("size, expected", [(10, 10), ("5GB", 5 * 10 ** 9), ("500MB", 5 * 10 ** 8),
                                            ("2GiB", 2 * 2 ** 30), ("20KB", 20_000)])
def test_parse_size(size, expected):
    assert parse_size(size) == expected


@pytest.mark.parametrize("size", ["5 parsecs", 0, "-1GB"])
def test_parse_size_refuses_nonsense(size):
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_size(size)


def test_loading_onto_a_mesh_places_each_tensor_on_its_fsdp_sharding(tmp_path):
    """tests/hf_load_worker.py: 8 CPU devices, a sharded checkpoint loaded with and without a 2 x 4 mesh."""
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, os.path.join(REPO, "tests", "hf_load_worker.py"), str(tmp_path), str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["sharded"] > 0 and result["replicated"] > 0, result
