"""JAX contenders for the fast path (docs/fast-path.md), registered into `CONTENDERS` by contenders.py.

`dpo_jax` (replacing the plain registration): dpo_loss with the fast-path defaults plus a host-computed
scored-position window; `dpo_jax_plain`: full logits at every position, no chunking (the oracle path, so the
gain is visible in one run); `dpo_jax_precomputed_ref`: the fast path with reference log-probs computed once
up front (a fixed reference), so the step runs the policy only.
"""

from __future__ import annotations

from benchmarks.contenders import PAD_ID, contender

SEQUENCE_NAMES = ("preferred_seq", "unpreferred_seq", "prompt_mask", "preferred_seq_mask", "unpreferred_seq_mask")
PLAIN = dict(logprob_head="full", score_positions="all", remat=None)


def fast_options(batch):
    """The fast path's options for this batch: the scored window comes from its masks, on the host."""
    import jax.numpy as jnp
    from dpo_jax.dpo import sequence_masks
    from dpo_jax.logprobs import window_for_masks
    masks = sequence_masks(jnp.asarray(batch.preferred_seq), jnp.asarray(batch.unpreferred_seq),
                           prompt_mask=jnp.asarray(batch.prompt_mask),
                           preferred_seq_mask=jnp.asarray(batch.preferred_seq_mask),
                           unpreferred_seq_mask=jnp.asarray(batch.unpreferred_seq_mask), pad_id=PAD_ID)
    return dict(score_positions="scored", score_window=window_for_masks(*masks), logprob_head="chunked",
                head_chunk_size=1024)


def jax_train_step(setup, batch, config, options, *, precompute_ref=False):
    """jit(value_and_grad(dpo_loss)) + optax.adamw over nnx.split params, buffers donated."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from dpo_jax.dpo import ReferenceLogps, dpo_loss, reference_logprobs

    policy = setup.jax_model
    graphdef, params, rest = nnx.split(policy, nnx.Param, ...)
    ref_params = jax.tree.map(jnp.copy, params)  # the frozen reference: same weights, own buffers
    optimizer = optax.adamw(config.lr)
    opt_state = optimizer.init(params)
    inputs = {name: jnp.asarray(getattr(batch, name)) for name in SEQUENCE_NAMES}
    del policy, setup.jax_model
    masks = {k: inputs[k] for k in SEQUENCE_NAMES[2:]}

    if precompute_ref:  # once, outside the timed step: what ReferenceCache does for a fixed reference
        ref_fn = jax.jit(lambda rp, inp: tuple(reference_logprobs(
            nnx.merge(graphdef, rp, rest), inp["preferred_seq"], inp["unpreferred_seq"],
            **{k: inp[k] for k in SEQUENCE_NAMES[2:]}, pad_id=PAD_ID, **options)))
        ref_params = ReferenceLogps(*jax.block_until_ready(ref_fn(ref_params, inputs)))

    def train_step(params, opt_state, ref_params, inputs):
        reference = ref_params if precompute_ref else nnx.merge(graphdef, ref_params, rest)

        def loss_fn(p):
            loss, _ = dpo_loss(nnx.merge(graphdef, p, rest), reference, inputs["preferred_seq"],
                               inputs["unpreferred_seq"], **{k: inputs[k] for k in masks}, beta=config.beta,
                               pad_id=PAD_ID, **options)
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    jitted = jax.jit(train_step, donate_argnums=(0, 1))
    state = {"params": params, "opt_state": opt_state}

    def step():
        state["params"], state["opt_state"], loss = jitted(state["params"], state["opt_state"], ref_params, inputs)
        jax.block_until_ready((state["params"], state["opt_state"], loss))
        return float(loss)
    return step


@contender("dpo_jax", framework="jax")
def dpo_jax_fast(setup, batch, config):
    """The default dpo_jax path: one [2B] forward per model, the chunked head only on the scored window."""
    return jax_train_step(setup, batch, config, fast_options(batch))


@contender("dpo_jax_plain", framework="jax")
def dpo_jax_plain(setup, batch, config):
    """None of the fast path: full [2B, N-1, V] logits, every position, no chunking."""
    return jax_train_step(setup, batch, config, PLAIN)


@contender("dpo_jax_precomputed_ref", framework="jax")
def dpo_jax_precomputed_ref(setup, batch, config):
    """The fast path with the reference's log-probs computed once before timing (fixed reference)."""
    return jax_train_step(setup, batch, config, fast_options(batch), precompute_ref=True)
