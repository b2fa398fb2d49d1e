"""Conversion: bit-exact torch -> JAX -> torch, verify can fail, refusals name the option, safetensors."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dpo_jax import (build_torch_model, config_from_torch, from_torch, load_safetensors, model_from_state_dict,
                     save_safetensors, state_dict_from_model, to_torch)
from parity_tests.model_helpers import make_torch_model, perturb_, random_tokens, relative_max_diff, torch_logits

ROUND_TRIP_OPTIONS = [
    dict(),
    dict(rotary_pos_emb=True, use_rmsnorm=True, ff_glu=True, ff_swish=True, heads=4, attn_kv_heads=2,
         ff_no_bias=True),
    dict(macaron=True, scale_residual=True, sandwich_norm=True, attn_num_mem_kv=2, attn_qk_norm=True,
         attn_qk_norm_dim_scale=True),
    dict(pre_norm=False, rel_pos_bias=True, use_scalenorm=True, num_memory_tokens=2, emb_dim=24,
         post_emb_norm=True),
    dict(tie_embedding=True, alibi_pos_bias=True, use_simple_rmsnorm=True, heads=1, dim=16),
]


@pytest.mark.parametrize("options", ROUND_TRIP_OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_torch_jax_torch_state_dict_is_bit_identical(options):
    source = perturb_(make_torch_model(**options), seed=5)
    original = {k: v.clone() for k, v in source.state_dict().items()}
    jax_model = from_torch(source)
    target = build_torch_model(jax_model.config)
    to_torch(jax_model, target)
    restored = target.state_dict()
    assert set(restored) == set(original)
    for key, value in original.items():
        assert torch.equal(restored[key], value), key
    numpy_state = state_dict_from_model(jax_model)
    assert set(numpy_state) == set(original)
    for key, value in original.items():
        if not key.endswith("inv_freq"):
            assert np.array_equal(numpy_state[key], value.numpy()), key


def test_config_round_trips_through_torch_kwargs():
    for options in ROUND_TRIP_OPTIONS:
        config = config_from_torch(make_torch_model(**options))
        assert config_from_torch(build_torch_model(config)) == config


def test_verify_passes_on_good_model_and_fails_on_corrupted_weights():
    from dpo_jax.models.x_transformers.weights import verify_against_torch

    source = perturb_(make_torch_model(rotary_pos_emb=True), seed=2)
    jax_model = from_torch(source, verify=True)
    # random noise: a constant offset would be a uniform shift that the next LayerNorm removes
    kernel = jax_model.layers[1].fn.proj_out.kernel
    noise = np.random.default_rng(0).normal(size=kernel.get_value().shape).astype(np.float32)
    kernel.set_value(kernel.get_value() + 0.05 * noise)
    with pytest.raises(ValueError, match="disagrees"):
        verify_against_torch(jax_model, source)


def test_to_torch_rejects_other_architecture():
    jax_model = from_torch(make_torch_model())
    with pytest.raises(ValueError, match="architecture"):
        to_torch(jax_model, make_torch_model(ff_glu=True))


def test_model_from_state_dict_rejects_missing_keys():
    source = make_torch_model()
    state = dict(source.state_dict())
    state.pop("to_logits.weight")
    with pytest.raises(ValueError, match="to_logits.weight"):
        model_from_state_dict(config_from_torch(source), state)


UNSUPPORTED = {
    "attn_softclamp_logits": dict(attn_softclamp_logits=True),
    "softclamp_output": dict(softclamp_output=True),
    "shift_tokens": dict(shift_tokens=1),
    "gate_residual": dict(gate_residual=True),
    "layer_dropout": dict(layer_dropout=0.1),
    "attn_dropout": dict(attn_dropout=0.1),
    "ff_dropout": dict(ff_dropout=0.1),
    "emb_dropout": dict(emb_dropout=0.1),
    "attn_sparse_topk": dict(attn_sparse_topk=2),
    "attn_pre_talking_heads": dict(attn_pre_talking_heads=True),
    "add_value_residual": dict(add_value_residual=True),
    "custom_layers": dict(custom_layers=("a", "a", "f"), depth=None),
    "use_layerscale": dict(use_layerscale=True),
    "rotary_xpos": dict(rotary_xpos=True),
    "rotary_emb_dim": dict(rotary_pos_emb=True, rotary_emb_dim=4),
    "dynamic_pos_bias": dict(dynamic_pos_bias=True),
    "attn_qk_rmsnorm": dict(attn_qk_rmsnorm=True),
    "attn_head_scale": dict(attn_head_scale=True),
    "attn_gate_value_heads": dict(attn_gate_value_heads=True),
    "attn_sigmoid": dict(attn_sigmoid=True),
    "attn_add_zero_kv": dict(attn_add_zero_kv=True),
    "attn_max_attend_past": dict(attn_max_attend_past=4),
    "ff_post_act_ln": dict(ff_post_act_ln=True),
    "ff_relu_squared": dict(ff_relu_squared=True),
    "ff_glu_mult_bias": dict(ff_glu=True, ff_glu_mult_bias=True),
    "use_dynamic_tanh": dict(use_dynamic_tanh=True),
    "num_residual_streams": dict(num_residual_streams=2),
    "weight_tie_layers": dict(weight_tie_layers=True),
    "scaled_sinu_pos_emb": dict(scaled_sinu_pos_emb=True),
    "emb_frac_gradient": dict(emb_frac_gradient=0.5),
    "tie_embedding_scale": dict(tie_embedding=True, tie_embedding_scale=1.0),
    "disable_abs_pos_emb": dict(rotary_pos_emb=True, disable_abs_pos_emb=False),
    "num_output_heads": dict(num_output_heads=2),
    "alibi_num_heads": dict(alibi_pos_bias=True, alibi_num_heads=1),
}


@pytest.mark.parametrize("option", list(UNSUPPORTED))
def test_unsupported_option_raises_naming_it(option):
    model = make_torch_model(**UNSUPPORTED[option])
    with pytest.raises(NotImplementedError, match=option):
        config_from_torch(model)


def test_encoder_is_refused():
    from x_transformers import Encoder, TransformerWrapper

    model = TransformerWrapper(num_tokens=32, max_seq_len=8, attn_layers=Encoder(dim=16, depth=1, heads=2))
    with pytest.raises(NotImplementedError, match="non-causal"):
        config_from_torch(model)


def test_cross_attention_is_refused():
    model = make_torch_model(cross_attend=True)
    with pytest.raises(NotImplementedError, match="cross_attend"):
        config_from_torch(model)


def test_safetensors_round_trip_into_torch(tmp_path):
    source = perturb_(make_torch_model(rotary_pos_emb=True, ff_glu=True), seed=3)
    jax_model = from_torch(source)
    path = tmp_path / "model.safetensors"
    save_safetensors(jax_model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left behind
    target = build_torch_model(jax_model.config)
    target.load_state_dict(load_file(str(path)), strict=True)
    for key, value in source.state_dict().items():
        if not key.endswith("inv_freq"):
            assert torch.equal(target.state_dict()[key], value), key
    reloaded = load_safetensors(path)
    assert reloaded.config == jax_model.config
    tokens = random_tokens(jax_model.config, 2, 8)
    assert relative_max_diff(np.asarray(reloaded(tokens)), torch_logits(source, tokens)) <= 1e-5
