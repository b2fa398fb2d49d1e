"""JAX contenders for the fast path (docs/fast-path.md), registered into `CONTENDERS` by contenders.py.

`dpo_jax` (replacing the plain registration): dpo_loss with the fast-path defaults plus a host-computed
scored-position window; `dpo_jax_plain`: full logits at every position, no chunking (the oracle path, so the
gain is visible in one run); `dpo_jax_precomputed_ref`: the fast path with reference log-probs computed once
up front (a fixed reference), so the step runs the policy only.
"""

from __future__ import annotations

from benchmarks.contenders import PAD_ID, contender, jax_adamw_step

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
    """dpo_loss with `options` in the shared JAX step; with `precompute_ref` the reference log-probs are computed
    once, outside the timed step (what ReferenceCache does for a fixed reference)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from dpo_jax.dpo import ReferenceLogps, dpo_loss, reference_logprobs

    inputs = {name: jnp.asarray(getattr(batch, name)) for name in SEQUENCE_NAMES}

    def loss_of(policy, reference, inputs):
        return dpo_loss(policy, reference, inputs["preferred_seq"], inputs["unpreferred_seq"],
                        **{k: inputs[k] for k in SEQUENCE_NAMES[2:]}, beta=config.beta, pad_id=PAD_ID,
                        **options)[0]

    def precomputed(graphdef, ref_params, rest, inputs):
        ref_fn = jax.jit(lambda rp, inp: tuple(reference_logprobs(
            nnx.merge(graphdef, rp, rest), inp["preferred_seq"], inp["unpreferred_seq"],
            **{k: inp[k] for k in SEQUENCE_NAMES[2:]}, pad_id=PAD_ID, **options)))
        return ReferenceLogps(*jax.block_until_ready(ref_fn(ref_params, inputs)))

    return jax_adamw_step(setup, config, inputs, loss_of, reference=precomputed if precompute_ref else None)


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
