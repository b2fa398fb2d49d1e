"""JAX contenders: the library's own train step (`dpo_jax.train.make_train_step`), the one `dpo-jax train` runs.

Every JAX contender builds a `TrainState` from the seed-built weights (the reference a frozen copy of them),
a `TrainConfig` with the benchmark's beta and learning rate (adamw, global-norm clipping at 1.0 and the
on-device finite guard, as in training), and the layout's host batch, then times `step(state, batch)`:

- `dpo_jax`: the padded layout with the default forward options (scored window from the batch's
  `score_index`, chunked head for vocabularies >= 4096);
- `dpo_jax_plain`: the same step with the full [2B, N-1, V] logits at every position (the oracle path), so
  the gain of the forward options is visible in one run;
- `dpo_jax_precomputed_ref`: reference log-probs computed once by the library's `ReferenceCache`, outside the
  timed step (a fixed reference), so the step runs the policy only;
- `dpo_jax_xla`, `dpo_jax_jax_nn`: the default path with an explicit attention backend (the einsum oracle, or
  jax.nn's XLA path) instead of "auto" (cuDNN on NVIDIA GPUs in bfloat16), so the attention kernel's gain is
  visible in one run.
"""

from __future__ import annotations

from benchmarks.contenders.inputs import PAD_ID, Batch, Setup, batch_arrays
from benchmarks.contenders.registry import contender
from benchmarks.presets import BenchConfig

PLAIN = dict(logprob_head="full", score_positions="all")


def train_config(config: BenchConfig, **changes):
    """The TrainConfig every JAX contender trains with (bfloat16 presets compute in bfloat16)."""
    from dpo_jax.train import TrainConfig

    forward = dict(changes.pop("forward", {}))
    if config.dtype == "bfloat16":
        forward["compute_dtype"] = "bfloat16"
    return TrainConfig(beta=config.beta, learning_rate=config.lr, pad_id=PAD_ID, total_steps=1_000_000,
                       forward=forward, **changes)


def padded_arrays(batch: Batch, forward) -> dict:
    """The padded batch dict plus the `score_index` the run's batch source would add."""
    from dpo_jax.forward import ForwardOptions
    from dpo_jax.layouts.base import window_for_masks
    from dpo_jax.layouts.padded import padded_score_index, sequence_masks

    arrays = batch_arrays(batch)
    forward = ForwardOptions.of(forward)
    if forward.score_positions == "scored":
        masks = sequence_masks(arrays["preferred_seq"], arrays["unpreferred_seq"], prompt_mask=arrays["prompt_mask"],
                               preferred_seq_mask=arrays["preferred_seq_mask"],
                               unpreferred_seq_mask=arrays["unpreferred_seq_mask"])
        window = window_for_masks(*masks)
        if window < masks[0].shape[-1]:
            arrays["score_index"] = padded_score_index(*masks, window)
    return arrays


def library_step(setup: Setup, arrays: dict, train_config, *, layout="padded", precompute_ref=False):
    """step() -> loss: `make_train_step` on a TrainState built from the seed-built weights."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from dpo_jax.train import ReferenceCache, init_train_state, make_train_step

    policy = setup.jax_model
    if precompute_ref:
        cache = ReferenceCache(*nnx.split(policy, nnx.Param), train_config, layout)
        arrays = jax.block_until_ready(cache.with_reference(arrays))
    graphdef, state = init_train_state(policy, None, train_config)
    del policy, setup.jax_model
    step_fn = make_train_step(graphdef, train_config, layout=layout)
    batch = {key: jnp.asarray(value) for key, value in arrays.items()}
    holder = {"state": state}

    def step():
        holder["state"], metrics = step_fn(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))
        return float(metrics["loss"])
    return step


@contender("dpo_jax", framework="jax")
def dpo_jax_fast(setup, batch, config):
    """The default dpo_jax path: one [2B] forward per model, the head only on the scored window."""
    options = train_config(config)
    return library_step(setup, padded_arrays(batch, options.forward), options)


@contender("dpo_jax_plain", framework="jax")
def dpo_jax_plain(setup, batch, config):
    """None of the forward options: full [2B, N-1, V] logits, every position, no chunking."""
    options = train_config(config, forward=PLAIN)
    return library_step(setup, padded_arrays(batch, options.forward), options)


@contender("dpo_jax_precomputed_ref", framework="jax")
def dpo_jax_precomputed_ref(setup, batch, config):
    """The default path with the reference's log-probs computed once before timing (fixed reference)."""
    options = train_config(config, precompute_ref=True)
    return library_step(setup, padded_arrays(batch, options.forward), options, precompute_ref=True)


@contender("dpo_jax_xla", framework="jax")
def dpo_jax_xla(setup, batch, config):
    """The default path with attention="xla": the einsum, a float32 [2B, H, N, N] score tensor per layer."""
    options = train_config(config, forward=dict(attention="xla"))
    return library_step(setup, padded_arrays(batch, options.forward), options)


@contender("dpo_jax_jax_nn", framework="jax")
def dpo_jax_jax_nn(setup, batch, config):
    """The default path with attention="jax_nn": jax.nn.dot_product_attention's XLA implementation."""
    options = train_config(config, forward=dict(attention="jax_nn"))
    return library_step(setup, padded_arrays(batch, options.forward), options)
