"""Packed batches (several pairs per row, with and without prefix sharing, empty slots) equal `dpo_loss` on the
same pairs collated into an ordinary padded batch: per-sequence log-probs, loss, metrics, policy gradients, and
one optimizer step of `make_train_step(layout="packed")` against the padded `make_train_step`. Float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpo_jax import from_torch
from dpo_jax.data import PreferenceExample, collate_pairs
from dpo_jax.dpo import ReferenceLogps, batch_loss, dpo_loss, pair_sequence_logprobs, sequence_masks
from dpo_jax.layouts.packed import pack_examples
from dpo_jax.layouts.prefix_shared import prefix_shared_pair_logprobs
from dpo_jax.train import TrainConfig, init_train_state, make_train_step
from parity_tests.model_helpers import make_torch_model, perturb_

PAD, MAX_LEN, TOL = 0, 16, 1e-5
ROW_LEN, ROWS, SLOTS = 48, 3, 6  # 5 examples -> one slot stays empty


def examples(n=5, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p, c, r = rng.integers(1, 7), rng.integers(1, 7), rng.integers(1, 7)
        draw = lambda k: [int(t) for t in rng.integers(1, 96, size=k)]  # noqa: E731
        out.append(PreferenceExample(draw(p), draw(c), draw(r), line=i + 1))
    return out


def relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


def model(**options):
    return from_torch(perturb_(make_torch_model(seed=5, **{"max_seq_len": ROW_LEN, **options}), seed=6))


@pytest.mark.parametrize("options", [{}, dict(rotary_pos_emb=True), dict(alibi_pos_bias=True),
                                     dict(rel_pos_bias=True)], ids=["absolute", "rotary", "alibi", "rel_pos_bias"])
def test_packed_logprobs_match_padded_batch(options):
    policy = model(**options)
    graphdef, params = nnx.split(policy)
    exs = examples()
    padded = collate_pairs(exs, max_len=MAX_LEN, pad_id=PAD)
    masks = sequence_masks(padded.preferred_seq, padded.unpreferred_seq, prompt_mask=padded.prompt_mask,
                           preferred_seq_mask=padded.preferred_seq_mask,
                           unpreferred_seq_mask=padded.unpreferred_seq_mask)

    @jax.jit
    def packed_fn(params, arrays):
        return {r: prefix_shared_pair_logprobs(nnx.merge(graphdef, params), arrays, reduction=r) for r in ("mean", "sum")}

    want = jax.jit(lambda params, seqs, cm, rm: {
        r: pair_sequence_logprobs(nnx.merge(graphdef, params), *seqs, cm, rm, r) for r in ("mean", "sum")})(
        params, (padded.preferred_seq, padded.unpreferred_seq), *masks)
    for share_prefix in (True, False):
        (packed,) = pack_examples(exs, row_len=ROW_LEN, rows=ROWS, pairs_per_batch=SLOTS, max_len=MAX_LEN,
                                  share_prefix=share_prefix)
        assert packed.pair_valid.sum() == len(exs) and max(len(set(r) - {-1}) for r in packed.segment_ids) > 1
        got = packed_fn(params, packed.as_dict())
        for reduction in ("mean", "sum"):
            for side in (0, 1):
                err = relative(got[reduction][side][:len(exs)], want[reduction][side])
                assert err <= TOL, (options, share_prefix, reduction, side, err)
            assert np.all(np.asarray(got[reduction][0][len(exs):]) == 0.0)  # the empty slot


def test_packed_loss_metrics_gradients_with_empty_slot():
    policy = model(rotary_pos_emb=True, depth=1)
    reference = from_torch(perturb_(make_torch_model(seed=8, max_seq_len=ROW_LEN, rotary_pos_emb=True, depth=1),
                                    seed=9))
    exs = examples(seed=1)
    padded = collate_pairs(exs, max_len=MAX_LEN, pad_id=PAD).as_dict()
    (packed,) = pack_examples(exs, row_len=ROW_LEN, rows=ROWS, pairs_per_batch=SLOTS, max_len=MAX_LEN)
    graphdef, params = nnx.split(policy, nnx.Param)
    options = dict(beta=0.1, loss_type="sigmoid", reduction="sum")
    packed_loss = jax.jit(lambda p, a: batch_loss(nnx.merge(graphdef, p), reference, a, layout="packed", **options))
    padded_loss = jax.jit(lambda p, b: dpo_loss(nnx.merge(graphdef, p), reference, b["preferred_seq"],
                                                b["unpreferred_seq"], prompt_mask=b["prompt_mask"],
                                                preferred_seq_mask=b["preferred_seq_mask"],
                                                unpreferred_seq_mask=b["unpreferred_seq_mask"], **options))
    (loss_p, metrics_p), grads_p = jax.value_and_grad(packed_loss, has_aux=True)(params, packed.as_dict())
    (loss_u, metrics_u), grads_u = jax.value_and_grad(padded_loss, has_aux=True)(params, padded)
    assert relative(loss_p, loss_u) <= TOL
    for name in metrics_u:
        assert relative(metrics_p[name], metrics_u[name]) <= TOL, name
    flat_p = dict(jax.tree_util.tree_leaves_with_path(grads_p))
    for path, g_u in jax.tree_util.tree_leaves_with_path(grads_u):
        err = float(jnp.linalg.norm(flat_p[path] - g_u) / jnp.maximum(jnp.linalg.norm(g_u), 1e-30))
        assert err <= TOL, (jax.tree_util.keystr(path), err)


def test_packed_train_step_matches_padded_train_step():
    policy = model(depth=1)
    exs = examples(seed=2)
    config = TrainConfig(beta=0.1, learning_rate=1e-3, precompute_ref=True, grad_clip=1.0)
    graphdef, state = init_train_state(policy, None, config)
    _, state2 = init_train_state(policy, None, config)
    ref = np.random.default_rng(3).normal(-3.0, 1.0, size=(2, SLOTS)).astype(np.float32)
    padded = dict(collate_pairs(exs, max_len=MAX_LEN, pad_id=PAD).as_dict(), ref_chosen_logps=ref[0, :len(exs)],
                  ref_rejected_logps=ref[1, :len(exs)])
    (packed,) = pack_examples(exs, row_len=ROW_LEN, rows=ROWS, pairs_per_batch=SLOTS, max_len=MAX_LEN)
    packed_batch = dict(packed.as_dict(), ref_chosen_logps=ref[0], ref_rejected_logps=ref[1])
    new_u, metrics_u = make_train_step(graphdef, config, donate=False)(state, padded)
    new_p, metrics_p = make_train_step(graphdef, config, layout="packed", donate=False)(state2, packed_batch)
    assert bool(metrics_p["finite"]) and int(new_p.step) == 1
    assert relative(metrics_p["loss"], metrics_u["loss"]) <= TOL
    assert relative(metrics_p["grad_norm"], metrics_u["grad_norm"]) <= TOL
    for a, b in zip(jax.tree.leaves(new_p.params), jax.tree.leaves(new_u.params)):
        assert relative(a, b) <= TOL


def test_packed_refusals():
    exs = examples()
    (packed,) = pack_examples(exs, row_len=ROW_LEN, rows=ROWS, pairs_per_batch=SLOTS, max_len=MAX_LEN)
    with pytest.raises(ValueError, match="mask_alignment"):
        batch_loss(model(), ReferenceLogps(np.zeros(SLOTS), np.zeros(SLOTS)), packed, layout="packed",
                   mask_alignment="x_transformers")
    with pytest.raises(NotImplementedError, match="grad_accum"):
        make_train_step(None, TrainConfig(grad_accum=2), layout="packed")
