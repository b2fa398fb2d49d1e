"""Prefix sharing equals the unshared path: per-sequence log-probs, loss, metrics and policy gradients.

For every positional scheme of the Flax port (learned absolute, rotary, alibi, T5 relative bias, none) and
the options that touch attention (residual_attn, memory key/values, memory tokens with absolute positions):
`prefix_shared_pair_logprobs` vs `dpo_jax.dpo.pair_sequence_logprobs` (both reductions, both mask
alignments, pad_id / explicit masks), and `batch_loss(layout="prefix_shared")` vs `dpo_loss` under jit + grad. Float32.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpo_jax import from_torch
from dpo_jax.dpo import ReferenceLogps, batch_loss, dpo_loss, pair_sequence_logprobs, sequence_masks
from dpo_jax.layouts.prefix_shared import (branch_attention_mask, pair_specs_from_batch, prefix_shared_pair_logprobs,
                                    shared_batch_from_batch)
from parity_tests.model_helpers import make_torch_model, perturb_

PAD, BATCH, SEQ_LEN, MAX_SEQ_LEN = 0, 4, 16, 48
TOL = 1e-5
SCHEMES = {
    "absolute": {},
    "rotary": dict(rotary_pos_emb=True),
    "alibi": dict(alibi_pos_bias=True),
    "rel_pos_bias": dict(rel_pos_bias=True),
    "no_positions": dict(use_abs_pos_emb=False),
    "residual_attn_mem_kv": dict(residual_attn=True, attn_num_mem_kv=2, rotary_pos_emb=True),
    "memory_tokens_absolute": dict(num_memory_tokens=2),
}


def make_batch(seed=0, explicit=False):
    """Prompts of 3-7 tokens, completions of different lengths (row 0 full width), right-padded with PAD."""
    rng = np.random.default_rng(seed)
    preferred = rng.integers(1, 96, size=(BATCH, SEQ_LEN))
    unpreferred = rng.integers(1, 96, size=(BATCH, SEQ_LEN))
    prompt_len = rng.integers(3, 8, size=BATCH)
    positions = np.arange(SEQ_LEN)[None, :]
    prompt_mask = positions < prompt_len[:, None]
    unpreferred = np.where(prompt_mask, preferred, unpreferred)
    lengths = [rng.integers(prompt_len + 1, SEQ_LEN + 1) for _ in range(2)]
    lengths[0][0] = SEQ_LEN
    masks = [positions < n[:, None] for n in lengths]
    batch = dict(preferred_seq=np.where(masks[0], preferred, PAD), unpreferred_seq=np.where(masks[1], unpreferred, PAD),
                 prompt_mask=prompt_mask)
    if explicit:
        return dict(batch, preferred_seq_mask=masks[0], unpreferred_seq_mask=masks[1]), None
    return batch, PAD


def jax_model(seed, **options):
    return from_torch(perturb_(make_torch_model(seed=seed, max_seq_len=MAX_SEQ_LEN, **options), seed=seed + 7))


def relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


ROW_LEN = 2 * SEQ_LEN  # one row length for every alignment: one compilation per model


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_sequence_logprobs_match_unshared(scheme):
    model = jax_model(0, **SCHEMES[scheme])
    graphdef, params = nnx.split(model)

    @jax.jit
    def shared_fn(params, arrays):
        model = nnx.merge(graphdef, params)
        return {r: prefix_shared_pair_logprobs(model, arrays, reduction=r) for r in ("mean", "sum")}

    @jax.jit
    def unshared_fn(params, seqs, chosen_mask, rejected_mask):
        model = nnx.merge(graphdef, params)
        return {r: pair_sequence_logprobs(model, *seqs, chosen_mask, rejected_mask, r) for r in ("mean", "sum")}

    for alignment, explicit in itertools.product(("next_token", "x_transformers"), (False, True)):
        batch, pad_id = make_batch(seed=1, explicit=explicit)
        shared = shared_batch_from_batch(**batch, pad_id=pad_id, mask_alignment=alignment, row_len=ROW_LEN)
        got = shared_fn(params, shared.as_dict())
        masks = sequence_masks(batch["preferred_seq"], batch["unpreferred_seq"], prompt_mask=batch["prompt_mask"],
                               preferred_seq_mask=batch.get("preferred_seq_mask"),
                               unpreferred_seq_mask=batch.get("unpreferred_seq_mask"), pad_id=pad_id,
                               mask_alignment=alignment)
        want = unshared_fn(params, (batch["preferred_seq"], batch["unpreferred_seq"]), *masks)
        for reduction, side in itertools.product(("mean", "sum"), (0, 1)):
            err = relative(got[reduction][side], want[reduction][side])
            assert err <= TOL, (scheme, alignment, reduction, explicit, side, err)


def test_shared_row_is_shorter_and_mask_hides_chosen_from_rejected():
    batch, pad_id = make_batch(seed=2)
    shared = shared_batch_from_batch(**batch, pad_id=pad_id)
    spec = pair_specs_from_batch(**batch, pad_id=pad_id)[0]
    assert shared.shape[1] < 2 * SEQ_LEN
    p = len(spec.prompt)
    # row 0: positions restart at P in the rejected branch; rejected token 0 is an extra target at P - 1
    n_c = len(spec.chosen_inputs)
    assert shared.positions[0, p + n_c] == p
    assert shared.extra_targets[0, p - 1] == batch["unpreferred_seq"][0, p]
    mask = np.asarray(branch_attention_mask(jnp.asarray(shared.segment_ids), jnp.asarray(shared.branch_ids)))
    assert not mask[0, p + n_c:, p:p + n_c].any()  # rejected queries never see chosen keys
    assert mask[0, p + n_c:, :p].all()  # ...but see the whole prompt


def _policy_and_reference(options, depth=2):
    reference = jax_model(3, depth=depth, **options)
    policy = from_torch(perturb_(make_torch_model(seed=3, max_seq_len=MAX_SEQ_LEN, depth=depth, **options), seed=15))
    return policy, reference


LOSS_CASES = [("absolute", "sigmoid", "mean", "next_token"), ("rotary", "ipo", "sum", "next_token"),
              ("alibi", "sigmoid", "sum", "x_transformers"), ("rel_pos_bias", "robust", "mean", "next_token"),
              ("no_positions", "sigmoid", "mean", "x_transformers")]


@pytest.mark.parametrize("scheme,loss_type,reduction,alignment", LOSS_CASES)
def test_loss_metrics_and_gradients_match_dpo_loss(scheme, loss_type, reduction, alignment):
    policy = _policy_and_reference(SCHEMES[scheme], depth=1)[0]  # depth 2 is covered by the log-prob test
    # any reference log-probs do (the identity holds for each): precomputed ones keep the compiled graph small
    reference = ReferenceLogps(*np.random.default_rng(9).normal(-4.0, 1.0, size=(2, BATCH)).astype(np.float32))
    batch, pad_id = make_batch(seed=4)
    shared = shared_batch_from_batch(**batch, pad_id=pad_id, mask_alignment=alignment)
    options = dict(beta=0.1, loss_type=loss_type, reduction=reduction, mask_alignment=alignment,
                   label_smoothing=0.1 if loss_type == "robust" else 0.0)
    graphdef, params = nnx.split(policy, nnx.Param)
    arrays = {k: jnp.asarray(v) for k, v in shared.as_dict().items()}
    sequences = {k: jnp.asarray(v) for k, v in batch.items()}

    @jax.jit
    def shared_loss(params):
        return batch_loss(nnx.merge(graphdef, params), reference, arrays, layout="prefix_shared", **options)

    @jax.jit
    def unshared_loss(params, sequences):
        return dpo_loss(nnx.merge(graphdef, params), reference, sequences["preferred_seq"],
                        sequences["unpreferred_seq"], prompt_mask=sequences["prompt_mask"], pad_id=pad_id, **options)

    (loss_s, metrics_s), grads_s = jax.value_and_grad(shared_loss, has_aux=True)(params)
    (loss_u, metrics_u), grads_u = jax.value_and_grad(unshared_loss, has_aux=True)(params, sequences)
    assert relative(loss_s, loss_u) <= TOL
    for name in metrics_u:
        assert relative(metrics_s[name], metrics_u[name]) <= TOL, name
    for path, g_u in jax.tree_util.tree_leaves_with_path(grads_u):
        g_s = dict(jax.tree_util.tree_leaves_with_path(grads_s))[path]
        err = float(jnp.linalg.norm(g_s - g_u) / jnp.maximum(jnp.linalg.norm(g_u), 1e-30))
        assert err <= TOL, (scheme, jax.tree_util.keystr(path), err)


def test_refusals():
    batch, pad_id = make_batch(seed=6)
    shared = shared_batch_from_batch(**batch, pad_id=pad_id, mask_alignment="next_token")
    with pytest.raises(ValueError, match="built with mask_alignment"):
        prefix_shared_pair_logprobs(jax_model(0), shared, mask_alignment="x_transformers")
    with pytest.raises(NotImplementedError, match="num_memory_tokens"):
        prefix_shared_pair_logprobs(jax_model(0, num_memory_tokens=2, rotary_pos_emb=True), shared)
    differing = dict(batch, unpreferred_seq=batch["unpreferred_seq"].copy())
    differing["unpreferred_seq"][1, 0] = (differing["unpreferred_seq"][1, 0] % 95) + 1
    with pytest.raises(ValueError, match="prompts differ"):
        shared_batch_from_batch(**differing, pad_id=pad_id)
    empty = dict(batch, preferred_seq=np.where(batch["prompt_mask"], batch["preferred_seq"], PAD))
    with pytest.raises(ValueError, match="no scored token"):
        shared_batch_from_batch(**empty, pad_id=pad_id)
    holes = dict(batch, prompt_mask=batch["prompt_mask"].copy())
    holes["prompt_mask"][0, 1] = False
    with pytest.raises(ValueError, match="prefix"):
        shared_batch_from_batch(**holes, pad_id=pad_id)


@pytest.mark.parametrize("alignment", ["next_token", "x_transformers"])
def test_scored_positions_and_chunked_head_match_unshared(alignment):
    """The training path of shared rows: only the scored positions (`score_index`) reach the chunked head
    (several targets at the prompt's last position); log-probs and their gradients equal the unshared batch."""
    from dpo_jax.forward import ForwardOptions
    from dpo_jax.layouts.prefix_shared import with_score_index

    model = jax_model(3, rotary_pos_emb=True, depth=1)
    graphdef, params = nnx.split(model)
    batch, pad_id = make_batch(seed=5)
    shared = shared_batch_from_batch(**batch, pad_id=pad_id, mask_alignment=alignment, row_len=ROW_LEN)
    options = dict(logprob_head="chunked", head_chunk_size=5)
    arrays = with_score_index(shared.as_dict(), ForwardOptions(**options), bucket=4)
    arrays = {k: jnp.asarray(v) for k, v in arrays.items()}
    assert arrays["score_index"].shape[1] < ROW_LEN  # the head really sees fewer positions than the row has
    masks = sequence_masks(batch["preferred_seq"], batch["unpreferred_seq"], prompt_mask=batch["prompt_mask"],
                           pad_id=pad_id, mask_alignment=alignment)
    seqs = (jnp.asarray(batch["preferred_seq"]), jnp.asarray(batch["unpreferred_seq"]))

    def shared_sum(params):
        chosen, rejected = prefix_shared_pair_logprobs(nnx.merge(graphdef, params), arrays, reduction="sum",
                                                       **options)
        return chosen.sum() - 0.5 * rejected.sum(), (chosen, rejected)

    def unshared_sum(params):
        chosen, rejected = pair_sequence_logprobs(nnx.merge(graphdef, params), *seqs, *masks, "sum")
        return chosen.sum() - 0.5 * rejected.sum(), (chosen, rejected)

    (_, got), grads_s = jax.jit(jax.value_and_grad(shared_sum, has_aux=True))(params)
    (_, want), grads_u = jax.jit(jax.value_and_grad(unshared_sum, has_aux=True))(params)
    for side in (0, 1):
        assert relative(got[side], want[side]) <= TOL
    flat_s = dict(jax.tree_util.tree_leaves_with_path(grads_s))
    for path, g_u in jax.tree_util.tree_leaves_with_path(grads_u):
        err = float(jnp.linalg.norm(flat_s[path] - g_u) / jnp.maximum(jnp.linalg.norm(g_u), 1e-30))
        assert err <= TOL, (jax.tree_util.keystr(path), err)
