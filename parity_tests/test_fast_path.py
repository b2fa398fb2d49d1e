"""Every fast-path option equals the plain path (full logits, every position, no remat) in float32.

Tolerances (DESIGN.md section 7): token log-probs and per-sequence log-probs <= 1e-5, loss <= 1e-6,
gradients per tensor ||g_fast - g_plain|| / ||g_plain|| <= 1e-5 (and absolute max diff <= 1e-5).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpo_jax.ops.logprob_head import chunked_token_logprobs
from dpo_jax.dpo import FastPath, dpo_loss, reference_logprobs
from dpo_jax.layouts.base import window_for_masks, window_indices
from dpo_jax.logprobs import token_logprobs
from dpo_jax.models.x_transformers import Transformer, TransformerConfig
from parity_tests.model_helpers import make_torch_model, perturb_

PAD = 0
BATCH, PROMPT, COMPLETION = 3, 9, 8


def jax_model(seed, **options):
    from dpo_jax import from_torch
    model = make_torch_model(seed, num_tokens=97, max_seq_len=64, **options)
    perturb_(model, seed=seed + 100)
    return from_torch(model)


def preference_batch(seed=0, prompt_lengths=(3, 9, 5)):
    """Right-padded pairs with per-row prompt lengths and completion lengths 1..COMPLETION."""
    rng = np.random.default_rng(seed)
    n = PROMPT + COMPLETION
    positions = np.arange(n)[None]
    prompt_len = np.asarray(prompt_lengths)[:, None]
    prompt_mask = positions < prompt_len

    def side():
        length = rng.integers(1, COMPLETION + 1, size=(BATCH, 1))
        mask = positions < prompt_len + length
        return np.where(mask, rng.integers(1, 97, size=(BATCH, n)), PAD).astype(np.int32), mask

    (chosen, chosen_mask), (rejected, rejected_mask) = side(), side()
    rejected[:, :PROMPT] = np.where(prompt_mask[:, :PROMPT], chosen[:, :PROMPT], rejected[:, :PROMPT])
    return dict(preferred_seq=chosen, unpreferred_seq=rejected, prompt_mask=prompt_mask,
                preferred_seq_mask=chosen_mask, unpreferred_seq_mask=rejected_mask)


def assert_trees_close(fast, plain):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(fast), jax.tree.leaves(plain)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-5, (jax.tree_util.keystr(path), np.abs(a - b).max())
        norm = np.linalg.norm(b)
        if norm > 0:
            assert np.linalg.norm(a - b) / norm <= 1e-5, jax.tree_util.keystr(path)


# ---- chunked head alone ---------------------------------------------------------------------------------

@pytest.mark.parametrize("tie_embedding", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 5, 16, 48, 4096])
def test_chunked_head_equals_full_logits(tie_embedding, chunk_size):
    model = jax_model(0, tie_embedding=tie_embedding)
    batch = preference_batch()
    tokens = jnp.asarray(np.concatenate([batch["preferred_seq"], batch["unpreferred_seq"]]))
    graphdef, params = nnx.split(model, nnx.Param)
    hidden = model.hidden_states(tokens[:, :-1])  # includes pad rows/positions: padding must not matter
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(tokens[:, 1:].shape), jnp.float32)

    def head_loss(head, params, hidden):
        model = nnx.merge(graphdef, params)
        if head == "full":
            logps = token_logprobs(model.unembed(hidden), tokens[:, 1:])
        else:
            weight, scale = model.head_weight()
            logps = chunked_token_logprobs(hidden, weight, tokens[:, 1:], scale=scale, chunk_size=chunk_size)
        return (logps * cotangent).sum(), logps

    grads = {}
    for head in ("full", "chunked"):
        (_, logps), grad = jax.jit(jax.value_and_grad(lambda p, h: head_loss(head, p, h), argnums=(0, 1),
                                                      has_aux=True))(params, hidden)
        grads[head] = (logps, grad)
    assert_trees_close(grads["chunked"], grads["full"])


def test_chunked_head_rejects_bad_chunk():
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_logprobs(jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.zeros((2,), jnp.int32), chunk_size=0)


# ---- scored-position window -------------------------------------------------------------------------------

def test_window_covers_every_scored_position_once():
    mask = jnp.asarray([[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1], [1, 0, 1, 0, 0, 0]], bool)
    index, overflow = window_indices(mask, 3)
    for row, idx in zip(np.asarray(mask), np.asarray(index)):
        assert len(set(idx.tolist())) == 3 and idx.max() < 6
        assert set(np.flatnonzero(row)) <= set(idx.tolist())
    assert not np.asarray(overflow).any()
    assert np.asarray(window_indices(mask, 2)[1]).tolist() == [False, False, True]
    assert window_for_masks(mask, bucket=2) == 4 and window_for_masks(mask, bucket=64) == 6


def test_window_too_small_gives_nan_not_a_truncated_loss():
    model, reference, batch = jax_model(0), jax_model(1), preference_batch()
    loss, _ = dpo_loss(model, reference, **batch, score_positions="scored", score_window=2)
    assert np.isnan(float(loss))


# ---- whole DPO loss: every option against the plain path ---------------------------------------------------

FAST_OPTIONS = {
    "chunked": dict(logprob_head="chunked", head_chunk_size=7),
    "chunked_divides": dict(logprob_head="chunked", head_chunk_size=16),
    "scored_window": dict(score_positions="scored", score_window=COMPLETION + 1),
    "scored_auto": dict(score_positions="scored"),
    "scored_chunked": dict(score_positions="scored", score_window=COMPLETION + 1, logprob_head="chunked",
                           head_chunk_size=5),
    "remat_full": dict(remat="full"),
    "remat_dots": dict(remat="dots_saveable"),
    "all_fast": dict(score_positions="scored", score_window=COMPLETION + 1, logprob_head="chunked",
                     head_chunk_size=11, remat="full"),
}
PLAIN = dict(logprob_head="full", score_positions="all", remat=None)


ALIGNMENT_GRID = [("all_fast", a, r) for a in ("next_token", "x_transformers") for r in ("mean", "sum")]
CELLS = ALIGNMENT_GRID + [("scored_window", "x_transformers", "sum")] + [
    (name, "next_token", "mean") for name in FAST_OPTIONS if name != "all_fast"]


@pytest.mark.parametrize("name, mask_alignment, reduction", CELLS)
def test_fast_option_equals_plain_path(name, mask_alignment, reduction):
    model = jax_model(0, tie_embedding=name.startswith("scored"))
    reference = jax_model(1, tie_embedding=name.startswith("scored"))
    batch = preference_batch()
    graphdef, params = nnx.split(model, nnx.Param)
    jit_batch = name == "all_fast"  # under jit (traced masks) once; eagerly elsewhere (faster at this size)

    def loss(params, batch, options):
        return dpo_loss(nnx.merge(graphdef, params), reference, **batch, reduction=reduction,
                        mask_alignment=mask_alignment, **options)

    def value_and_grad(options):
        fn = jax.value_and_grad(lambda p, b: loss(p, b, options), has_aux=True)
        return jax.jit(fn)(params, batch) if jit_batch else fn(params, batch)

    (plain_loss, plain_metrics), plain_grads = value_and_grad(PLAIN)
    (fast_loss, fast_metrics), fast_grads = value_and_grad(FAST_OPTIONS[name])
    assert abs(float(fast_loss) - float(plain_loss)) <= 1e-6
    for key in ("logps/chosen", "logps/rejected"):
        assert abs(float(fast_metrics[key]) - float(plain_metrics[key])) <= 1e-5
    assert_trees_close(fast_grads, plain_grads)


def test_reference_logprobs_take_fast_options():
    reference, batch = jax_model(1), preference_batch()
    plain = reference_logprobs(reference, **batch)
    fast = reference_logprobs(reference, **batch, **FAST_OPTIONS["all_fast"])
    assert_trees_close(tuple(fast), tuple(plain))


def test_compute_dtype_bfloat16_close_to_float32():
    """bfloat16 activations, float32 logsumexp/loss: close (bf16 rounding), finite, gradients float32."""
    model, reference, batch = jax_model(0), jax_model(1), preference_batch()
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params, **options):
        return dpo_loss(nnx.merge(graphdef, params), reference, **batch, **options)[0]

    plain = float(loss(params))
    value, grads = jax.value_and_grad(lambda p: loss(p, compute_dtype=jnp.bfloat16, logprob_head="chunked"))(params)
    assert value.dtype == jnp.float32 and abs(float(value) - plain) <= 2e-2
    assert all(g.dtype == jnp.float32 and np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_unknown_options_are_refused():
    model, batch = jax_model(0), preference_batch()
    for bad in (dict(logprob_head="fused"), dict(score_positions="prompt"), dict(remat="some"),
                dict(head_chunk_size=0), dict(score_window=0)):
        with pytest.raises(ValueError):
            dpo_loss(model, None, **batch, loss_type="simpo", **bad)
    with pytest.raises(TypeError):
        FastPath(chunk=3)
