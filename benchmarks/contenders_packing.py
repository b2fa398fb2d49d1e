"""Contenders with prefix sharing and packing (registered from `benchmarks.contenders`).

Both run the same train step as `dpo_jax` (jit(value_and_grad) + optax.adamw, donated buffers, live reference)
on the same pairs, with `dpo_jax.packing.packed_dpo_loss` over a SharedBatch built once on the host:

- `dpo_jax_prefix_sharing`: one [prompt, chosen, rejected] row per pair (prompt computed once).
- `dpo_jax_packed`: prefix-shared pairs packed first-fit into rows of twice the longest shared pair.
"""

from __future__ import annotations

from benchmarks.contenders import PAD_ID, contender, jax_adamw_step


def packed_train_step(setup, shared, config):
    """step() -> loss for a SharedBatch: the shared JAX step with packed_dpo_loss."""
    import jax.numpy as jnp
    from dpo_jax.packing import packed_dpo_loss

    arrays = {k: jnp.asarray(v) for k, v in shared.as_dict().items()}
    return jax_adamw_step(setup, config, arrays,
                          lambda policy, reference, arrays: packed_dpo_loss(policy, reference, arrays,
                                                                            beta=config.beta)[0])


def _batch_arrays(batch):
    return dict(preferred_seq=batch.preferred_seq, unpreferred_seq=batch.unpreferred_seq,
                prompt_mask=batch.prompt_mask, preferred_seq_mask=batch.preferred_seq_mask,
                unpreferred_seq_mask=batch.unpreferred_seq_mask)


@contender("dpo_jax_prefix_sharing", framework="jax")
def dpo_jax_prefix_sharing(setup, batch, config):
    from dpo_jax.prefix_sharing import shared_batch_from_batch
    shared = shared_batch_from_batch(**_batch_arrays(batch), pad_id=PAD_ID, pad_to_multiple_of=8)
    return packed_train_step(setup, shared, config)


@contender("dpo_jax_packed", framework="jax")
def dpo_jax_packed(setup, batch, config):
    from dpo_jax.packing import _layout, first_fit
    from dpo_jax.prefix_sharing import pair_specs_from_batch
    specs = pair_specs_from_batch(**_batch_arrays(batch), pad_id=PAD_ID)
    lengths = [s.length() for s in specs]
    row_len = -(-2 * max(lengths) // 8) * 8
    plan = first_fit(lengths, row_len=row_len, rows=len(specs), pairs_per_batch=len(specs))
    rows = [row for row in plan[0] if row]
    shared = _layout(specs, rows, row_len=row_len, pairs_per_batch=len(specs), share_prefix=True)
    return packed_train_step(setup, shared, config)
