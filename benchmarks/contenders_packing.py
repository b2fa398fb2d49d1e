"""Contenders with prefix sharing and packing (registered from `benchmarks.contenders`).

Both run the same train step as `dpo_jax` (jit(value_and_grad) + optax.adamw, donated buffers, live reference)
on the same pairs, with `dpo_jax.packing.packed_dpo_loss` over a SharedBatch built once on the host:

- `dpo_jax_prefix_sharing`: one [prompt, chosen, rejected] row per pair (prompt computed once).
- `dpo_jax_packed`: prefix-shared pairs packed first-fit into rows of twice the longest shared pair.
"""

from __future__ import annotations

from benchmarks.contenders import PAD_ID, contender


def packed_train_step(setup, shared, config):
    """step() -> loss for a SharedBatch: the `dpo_jax` contender's step with packed_dpo_loss."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from dpo_jax.packing import packed_dpo_loss

    policy = setup.jax_model
    graphdef, params, rest = nnx.split(policy, nnx.Param, ...)
    ref_params = jax.tree.map(jnp.copy, params)
    optimizer = optax.adamw(config.lr)
    opt_state = optimizer.init(params)
    arrays = {k: jnp.asarray(v) for k, v in shared.as_dict().items()}
    del policy, setup.jax_model

    def train_step(params, opt_state, ref_params, arrays):
        reference = nnx.merge(graphdef, ref_params, rest)

        def loss_fn(p):
            return packed_dpo_loss(nnx.merge(graphdef, p, rest), reference, arrays, beta=config.beta)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    jitted = jax.jit(train_step, donate_argnums=(0, 1))
    state = {"params": params, "opt_state": opt_state}

    def step():
        state["params"], state["opt_state"], loss = jitted(state["params"], state["opt_state"], ref_params, arrays)
        jax.block_until_ready((state["params"], state["opt_state"], loss))
        return float(loss)
    return step


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
