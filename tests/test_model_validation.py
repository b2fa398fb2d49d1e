"""Bad inputs raise before JAX could clamp them silently; impossible configs are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from dpo_jax import Transformer, TransformerConfig
from dpo_jax.models.validation import validate_mask, validate_tokens

CONFIG = TransformerConfig(num_tokens=50, max_seq_len=8, dim=16, depth=1, heads=2, attn_dim_head=8)


@pytest.fixture(scope="module")
def model():
    return Transformer(CONFIG, rngs=nnx.Rngs(0))


def test_out_of_vocab_token_names_value_and_position(model):
    tokens = np.zeros((2, 4), np.int32)
    tokens[1, 2] = 50
    with pytest.raises(ValueError, match=r"50.*\(1, 2\)"):
        model(tokens)
    with pytest.raises(ValueError, match="-1"):
        validate_tokens(np.array([[0, -1]]), vocab_size=CONFIG.num_tokens, max_seq_len=CONFIG.max_seq_len)


def test_too_long_names_both_lengths(model):
    with pytest.raises(ValueError, match=r"9.*8"):
        model(np.zeros((1, 9), np.int32))


@pytest.mark.parametrize("tokens", [np.zeros((1, 4), np.float32), torch.zeros(1, 4), jnp.zeros((1, 4))])
def test_float_tokens_are_type_errors(model, tokens):
    with pytest.raises(TypeError, match="integer"):
        model(tokens)


def test_tokens_must_be_2d(model):
    with pytest.raises(ValueError, match="2-D"):
        model(np.zeros((4,), np.int32))


def test_torch_tokens_are_checked(model):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.full((1, 3), 99))


def test_mask_shape_and_dtype(model):
    tokens = np.zeros((2, 4), np.int32)
    with pytest.raises(ValueError, match="shape"):
        model(tokens, mask=np.ones((2, 3), bool))
    with pytest.raises(TypeError, match="bool"):
        model(tokens, mask=np.ones((2, 4), np.int32))
    with pytest.raises(ValueError, match="attn_mask"):
        model(tokens, attn_mask=np.ones((2, 4, 3), bool))
    validate_mask(np.ones((2, 4), bool), (2, 4), "mask")


def test_positions_checked(model):
    tokens = np.zeros((1, 4), np.int32)
    with pytest.raises(ValueError, match="positional table"):
        model(tokens, positions=np.array([[0, 1, 2, 8]]))
    with pytest.raises(TypeError, match="integer"):
        model(tokens, positions=np.zeros((1, 4), np.float32))


def test_tracers_skip_host_checks_and_jit_works(model):
    tokens = np.ones((2, 4), np.int32)
    jitted = nnx.jit(lambda m, t: m(t))
    np.testing.assert_allclose(np.asarray(jitted(model, tokens)), np.asarray(model(tokens)), rtol=1e-5, atol=1e-5)


def test_params_are_a_pytree_of_nnx_params(model):
    _, params, rest = nnx.split(model, nnx.Param, ...)
    assert len(jax.tree.leaves(rest)) == 0
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("changes, message", [
    (dict(heads=1, dim=32, attn_dim_head=16), "to_out"),
    (dict(heads=4, attn_kv_heads=3), "divisible"),
    (dict(use_rmsnorm=True, use_scalenorm=True), "at most one"),
    (dict(alibi_pos_bias=True, rel_pos_bias=True), "at most one"),
    (dict(pre_norm=False, sandwich_norm=True), "sandwich"),
    (dict(attn_qk_norm_dim_scale=True), "attn_qk_norm"),
    (dict(tie_embedding=True, emb_dim=8), "tie_embedding"),
])
def test_impossible_configs_are_refused(changes, message):
    base = dict(num_tokens=50, max_seq_len=8, dim=16, depth=1, heads=2, attn_dim_head=8)
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**{**base, **changes})


def test_config_json_round_trip():
    config = CONFIG.replace(rotary_pos_emb=True, dtype=jnp.bfloat16)
    assert TransformerConfig.from_json(config.to_json()) == config


def test_bfloat16_compute_runs(model):
    config = CONFIG.replace(dtype=jnp.bfloat16)
    logits = Transformer(config, rngs=nnx.Rngs(0))(np.zeros((1, 4), np.int32))
    assert logits.dtype == jnp.bfloat16 and np.isfinite(np.asarray(logits, np.float32)).all()
