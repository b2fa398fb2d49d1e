"""Logits of the Flax port equal x-transformers' for every supported option (float32, perturbed weights)."""

import numpy as np
import pytest
import torch

from dpo_jax import from_torch
from parity_tests.model_helpers import (make_torch_model, perturb_, random_tokens, relative_max_diff,
                                        right_padding_mask, torch_logits)

TOLERANCE = 1e-5

OPTIONS = {
    "defaults (dim_head 64)": dict(attn_dim_head=None),
    "dim_head 16": dict(),
    "rotary_pos_emb": dict(rotary_pos_emb=True),
    "use_rmsnorm": dict(use_rmsnorm=True),
    "use_simple_rmsnorm": dict(use_simple_rmsnorm=True),
    "use_scalenorm": dict(use_scalenorm=True),
    "ff_mult 2": dict(ff_mult=2),
    "ff_glu": dict(ff_glu=True),
    "ff_swish": dict(ff_swish=True),
    "ff_glu + ff_swish": dict(ff_glu=True, ff_swish=True),
    "ff_no_bias": dict(ff_no_bias=True),
    "attn_kv_heads": dict(heads=4, attn_kv_heads=2),
    "attn_one_kv_head": dict(heads=4, attn_one_kv_head=True),
    "attn_qk_norm": dict(attn_qk_norm=True),
    "attn_qk_norm_dim_scale": dict(attn_qk_norm=True, attn_qk_norm_dim_scale=True),
    "alibi_pos_bias": dict(alibi_pos_bias=True, heads=3),
    "rel_pos_bias": dict(rel_pos_bias=True),
    "attn_flash": dict(attn_flash=True),
    "pre_norm=False": dict(pre_norm=False),
    "sandwich_norm": dict(sandwich_norm=True),
    "scale_residual": dict(scale_residual=True),
    "residual_attn": dict(residual_attn=True),
    "macaron": dict(macaron=True),
    "attn_num_mem_kv": dict(attn_num_mem_kv=2),
    "heads=1": dict(heads=1, dim=16, attn_dim_head=16),
    "tie_embedding": dict(tie_embedding=True),
    "l2norm_embed": dict(l2norm_embed=True),
    "post_emb_norm": dict(post_emb_norm=True),
    "use_abs_pos_emb=False": dict(use_abs_pos_emb=False),
    "emb_dim": dict(emb_dim=24),
    "num_memory_tokens": dict(num_memory_tokens=2),
    "mix: llama-ish": dict(rotary_pos_emb=True, use_rmsnorm=True, ff_glu=True, ff_swish=True, heads=4,
                           attn_kv_heads=2, ff_no_bias=True),
    "mix: tie_embedding + rotary": dict(tie_embedding=True, rotary_pos_emb=True),
    "mix: alibi + qk_norm": dict(alibi_pos_bias=True, attn_qk_norm=True),
    "mix: post-norm + rel_pos_bias": dict(pre_norm=False, rel_pos_bias=True),
    "mix: mem_kv + qk_norm + rotary + residual_attn": dict(attn_num_mem_kv=2, attn_qk_norm=True, rotary_pos_emb=True,
                                                           residual_attn=True),
    "mix: memory tokens + alibi + sandwich": dict(num_memory_tokens=2, alibi_pos_bias=True, sandwich_norm=True),
}

SHAPES = [(2, 24), (3, 7)]


def _pair(options, seed=0):
    torch_model = perturb_(make_torch_model(seed=seed, **options), seed=seed + 1)
    return torch_model, from_torch(torch_model)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_logits_match_torch(name, record_worst_diff):
    torch_model, jax_model = _pair(OPTIONS[name])
    worst = 0.0
    for batch, seq_len in SHAPES:
        tokens = random_tokens(jax_model.config, batch, seq_len, seed=seq_len)
        for mask in (None, right_padding_mask(batch, seq_len, seed=seq_len)):
            expected = torch_logits(torch_model, tokens, mask)
            actual = np.asarray(jax_model(tokens, mask=mask))
            assert actual.dtype == np.float32 and actual.shape == expected.shape
            assert np.isfinite(actual).all()
            diff = relative_max_diff(actual, expected)
            worst = max(worst, diff)
            assert diff <= TOLERANCE, f"{name} {batch}x{seq_len} mask={mask is not None}: {diff:.2e}"
    record_worst_diff(name, worst)


@pytest.mark.parametrize("name", ["dim_head 16", "rotary_pos_emb", "alibi_pos_bias"])
def test_custom_positions_match_torch_pos(name, record_worst_diff):
    """`positions` behaves like x-transformers' `pos=` (learned table, rotary and alibi)."""
    torch_model, jax_model = _pair(OPTIONS[name])
    tokens = random_tokens(jax_model.config, 2, 10)
    positions = np.stack([np.arange(10), np.r_[np.arange(4), np.arange(2, 8)]]).astype(np.int64)
    expected = torch_logits(torch_model, tokens, pos=torch.from_numpy(positions))
    actual = np.asarray(jax_model(tokens, positions=positions))
    diff = relative_max_diff(actual, expected)
    record_worst_diff(f"positions: {name}", diff)
    assert diff <= TOLERANCE


@pytest.mark.parametrize("name", ["dim_head 16", "attn_num_mem_kv", "residual_attn"])
def test_attn_mask_matches_torch(name, record_worst_diff):
    """An extra [B, N, N] attention mask is AND-ed with the causal mask, like torch's attn_mask."""
    torch_model, jax_model = _pair(OPTIONS[name])
    batch, n = 2, 9
    tokens = random_tokens(jax_model.config, batch, n)
    rng = np.random.default_rng(3)
    attn_mask = rng.random((batch, n, n)) < 0.7
    attn_mask[:, np.arange(n), np.arange(n)] = True
    torch_mask = torch.from_numpy(attn_mask)[:, None]
    mem = jax_model.config.attn_num_mem_kv
    if mem:  # torch expects the memory key columns in its mask
        torch_mask = torch.nn.functional.pad(torch_mask, (mem, 0), value=True)
    expected = torch_logits(torch_model, tokens, attn_mask=torch_mask)
    actual = np.asarray(jax_model(tokens, attn_mask=attn_mask))
    diff = relative_max_diff(actual, expected)
    record_worst_diff(f"attn_mask: {name}", diff)
    assert diff <= TOLERANCE


def test_fully_masked_row_stays_finite():
    """A padding row with every key masked must not turn into NaN (finite -max fill, not -inf)."""
    torch_model, jax_model = _pair(dict(depth=2))
    tokens = random_tokens(jax_model.config, 2, 6)
    mask = np.ones((2, 6), bool)
    mask[1] = False
    actual = np.asarray(jax_model(tokens, mask=mask))
    assert np.isfinite(actual).all()
    assert relative_max_diff(actual, torch_logits(torch_model, tokens, mask)) <= TOLERANCE


def test_hidden_states_and_head_weight_compose_to_logits():
    for options in (dict(), dict(tie_embedding=True), dict(num_memory_tokens=2)):
        _, jax_model = _pair(options)
        tokens = random_tokens(jax_model.config, 2, 8)
        hidden = jax_model.hidden_states(tokens)
        assert hidden.shape == (2, 8, jax_model.config.dim)
        weight, scale = jax_model.head_weight()
        np.testing.assert_allclose(np.asarray(hidden @ weight * scale), np.asarray(jax_model(tokens)),
                                   rtol=1e-6, atol=1e-6)
