"""The DPO train step: one pure, jit-compiled function (state, batch) -> (state, metrics) for every layout.

`make_train_step(graphdef, config, layout=...)` is the only step factory: the padded, prefix-shared and packed
layouts differ only in how `dpo.batch_loss` gets its log-probs, and a device mesh only in the shardings passed
to `jax.jit` (`make_sharded_train_step` validates the split, places the state and passes them). The model graph
(`nnx.split(model)[0]`) is static; `nnx.merge` rebuilds the model inside the loss. The step refuses
non-finite updates on the device: when the loss or the gradient norm is NaN or Inf, the returned state is the
input state (step not advanced) and `metrics["finite"]` is False, so the caller keeps the last good state even
though the input buffers were donated.

The reference's parameters (a full reference, or a LoRA policy's `FrozenBase`) are an input of the compiled step
beside the donated state, never donated and never returned (the returned state carries the same objects), so a
frozen base is neither copied nor changed by a step. Only TR-DPO (`ref_sync_every`), which updates the reference,
keeps it inside the donated state.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from dpo_jax import sharding
from dpo_jax.dpo import ReferenceLogps, batch_loss
from dpo_jax.layouts import get_layout, validate_layout
from dpo_jax.train.config import TrainConfig
from dpo_jax.train.lora import FrozenBase, policy_of, reference_of
from dpo_jax.train.optim import make_optimizer, make_schedule
from dpo_jax.train.state import TrainState

__all__ = ["REFERENCE_KEYS", "policy_and_reference", "reference_model_of", "make_loss_fn", "split_micro_batches", "accumulated_grads",
           "sync_reference", "make_train_step", "make_sharded_train_step", "make_eval_loss", "layout_of"]

# CPU has no buffer donation; jax warns once per compile. The donation still documents intent for GPU/TPU.
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")

REFERENCE_KEYS = ("ref_chosen_logps", "ref_rejected_logps")


def layout_of(config: TrainConfig, layout="padded"):
    """The layout object a config trains on (its pad_id and mask alignment bound)."""
    return get_layout(layout, pad_id=config.pad_id, mask_alignment=config.mask_alignment)


def reference_model_of(graphdef, ref_params):
    """The reference model (no gradient) of `ref_params`: its own parameters, or a LoRA FrozenBase's reference."""
    if isinstance(ref_params, FrozenBase):
        return reference_of(graphdef, ref_params)
    return nnx.merge(graphdef, jax.lax.stop_gradient(ref_params))


def policy_and_reference(graphdef, config: TrainConfig, params, ref_params, batch, dropout_key=None):
    """The policy to differentiate and the reference for a loss: None (reference-free), precomputed log-probs
    from the batch, or the frozen reference model (no gradient). A LoRA policy is its adapters `params` on the
    FrozenBase `ref_params` (adapter dropout on when `dropout_key` is given); its reference is the same base
    arrays with the adapters off, or frozen reference adapters on them. The compute dtype is applied by the
    layout."""
    if isinstance(ref_params, FrozenBase):
        policy = policy_of(graphdef, params, ref_params, dropout_key)
    else:
        policy = nnx.merge(graphdef, params)
    if config.reference_free:
        return policy, None
    if REFERENCE_KEYS[0] in batch:
        return policy, ReferenceLogps(batch[REFERENCE_KEYS[0]], batch[REFERENCE_KEYS[1]])
    if ref_params is None:
        raise ValueError("the batch has no ref_chosen_logps/ref_rejected_logps and the state no ref_params")
    return policy, reference_model_of(graphdef, ref_params)


def make_loss_fn(graphdef, config: TrainConfig, layout="padded"):
    """loss_fn(params, ref_params, batch, dropout_key=None) -> (loss, metrics) on `layout`'s batches; the
    reference gets no gradient. `dropout_key` switches LoRA adapter dropout on (train steps)."""
    layout = layout_of(config, layout)

    def loss_fn(params, ref_params, batch, dropout_key=None):
        policy, reference = policy_and_reference(graphdef, config, params, ref_params, batch, dropout_key)
        arrays = {key: batch[key] for key in layout.keys if key in batch}
        return batch_loss(policy, reference, arrays, layout=layout, forward=config.forward, **config.loss_options())
    return loss_fn


def split_micro_batches(batch, num_micro: int):
    """[B, ...] -> [num_micro, B // num_micro, ...] for every array of the batch."""
    size = batch["preferred_seq"].shape[0]
    if size % num_micro:
        raise ValueError(f"batch size {size} is not divisible by grad_accum={num_micro}")
    return {key: value.reshape(num_micro, size // num_micro, *value.shape[1:]) for key, value in batch.items()}


def accumulated_grads(loss_fn, params, ref_params, batch, num_micro: int, micro_sharding=None, *, dropout_key=None):
    """Mean loss, metrics and gradients over equal micro-batches (lax.scan): equals the big-batch step.

    `micro_sharding` (a NamedSharding for [num_micro, B // num_micro, ...]) spreads every micro-batch over the
    batch axes of a mesh instead of leaving each one on the devices that held its rows of the big batch.
    `dropout_key` (LoRA adapter dropout) reaches `loss_fn` as `dropout_key=`, folded with the micro-batch index.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def grads_of(batch, index):
        if dropout_key is None:
            return grad_fn(params, ref_params, batch)
        return grad_fn(params, ref_params, batch, dropout_key=jax.random.fold_in(dropout_key, index))

    if num_micro == 1:
        (_, metrics), grads = grads_of(batch, 0)
        return metrics, grads

    def body(grad_sum, indexed):
        index, micro_batch = indexed
        (_, metrics), grads = grads_of(micro_batch, index)
        return jax.tree.map(jnp.add, grad_sum, grads), metrics

    zeros = jax.tree.map(jnp.zeros_like, params)
    micro_batches = split_micro_batches(batch, num_micro)
    if micro_sharding is not None:
        micro_batches = jax.lax.with_sharding_constraint(micro_batches, micro_sharding)
    grad_sum, stacked = jax.lax.scan(body, zeros, (jnp.arange(num_micro), micro_batches))
    grads = jax.tree.map(lambda g: g / num_micro, grad_sum)
    metrics = jax.tree.map(lambda m: m.mean(axis=0), stacked)
    return metrics, grads


def sync_reference(ref_params, params, alpha):
    """TR-DPO soft update: ref <- alpha * policy + (1 - alpha) * ref."""
    return jax.tree.map(lambda r, p: alpha * p + (1.0 - alpha) * r, ref_params, params)


def _select(keep_new, new_tree, old_tree):
    return jax.tree.map(lambda new, old: jnp.where(keep_new, new, old), new_tree, old_tree)


def make_train_step(graphdef, config: TrainConfig, *, layout="padded", state_shardings=None, batch_shardings=None,
                    donate=True, loss_fn=None):
    """Jitted step(state, batch_dict) -> (state, metrics) on `layout`'s batches ("padded", "prefix_shared",
    "packed" or a Layout); the layout refuses what it cannot do (e.g. grad_accum > 1 with shared rows) here,
    before anything is compiled.

    `batch_dict` holds the layout's arrays (`PreferenceBatch.as_dict()` for padded), plus
    `ref_chosen_logps`/`ref_rejected_logps` [K] when the reference is precomputed. `loss_fn(params,
    ref_params, batch) -> (loss, metrics)` replaces `make_loss_fn(graphdef, config, layout)` (tests,
    research). Metrics: the loss's TRL names, `grad_norm` (before clipping), `lr` (of this update), `finite`
    (False: the update was refused and the state returned unchanged).
    """
    num_devices = batch_shardings.mesh.size if isinstance(batch_shardings, NamedSharding) else 1
    layout = validate_layout(layout_of(config, layout), num_devices=num_devices, grad_accum=config.grad_accum)
    optimizer = make_optimizer(config)
    schedule = make_schedule(config)
    loss_fn = loss_fn or make_loss_fn(graphdef, config, layout)

    micro_sharding = None
    if isinstance(batch_shardings, NamedSharding) and config.grad_accum > 1:  # batch axis -> axis 1
        micro_sharding = NamedSharding(batch_shardings.mesh, PartitionSpec(None, *batch_shardings.spec))

    def step_fn(state: TrainState, batch):
        next_key, key = jax.random.split(jax.random.wrap_key_data(state.rng))  # next step's, this step's
        dropout_key = key if isinstance(state.ref_params, FrozenBase) and state.ref_params.dropout else None
        metrics, grads = accumulated_grads(loss_fn, state.params, state.ref_params, batch, config.grad_accum,
                                           micro_sharding, dropout_key=dropout_key)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_step = state.step + 1
        ref_params = state.ref_params
        if config.ref_sync_every and ref_params is not None:
            due = (new_step % config.ref_sync_every) == 0
            ref_params = _select(due, sync_reference(ref_params, params, config.ref_sync_alpha), ref_params)
        rng = jax.random.key_data(next_key)
        params_finite = jnp.all(jnp.stack([jnp.isfinite(p).all() for p in jax.tree.leaves(params)]))
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm) & params_finite
        updated = TrainState(step=new_step, params=params, opt_state=opt_state, ref_params=ref_params, rng=rng)
        new_state = _select(finite, updated, state)
        metrics = dict(metrics, grad_norm=grad_norm, lr=schedule(state.step), finite=finite)
        return new_state, metrics

    sharded = state_shardings is not None or batch_shardings is not None
    if config.ref_sync_every:  # TR-DPO changes the reference: it travels (donated) inside the state
        jit_kwargs = dict(in_shardings=(state_shardings, batch_shardings),
                          out_shardings=(state_shardings, None)) if sharded else {}
        return jax.jit(step_fn, donate_argnums=(0,) if donate else (), **jit_kwargs)
    return _reference_beside_state(step_fn, state_shardings, batch_shardings, donate=donate, sharded=sharded)


def _reference_beside_state(step_fn, state_shardings, batch_shardings, *, donate: bool, sharded: bool):
    """step(state, batch) that compiles `step_fn` with `state.ref_params` as a separate, non-donated input which
    the compiled function does not return: the caller's reference arrays are reused as they are."""
    def frozen_reference_step(state, ref_params, batch):
        new_state, metrics = step_fn(state.replace(ref_params=ref_params), batch)
        return new_state.replace(ref_params=None), metrics

    jit_kwargs = {}
    if sharded:
        rest = None if state_shardings is None else state_shardings.replace(ref_params=None)
        reference = None if state_shardings is None else state_shardings.ref_params
        jit_kwargs = dict(in_shardings=(rest, reference, batch_shardings), out_shardings=(rest, None))
    compiled = jax.jit(frozen_reference_step, donate_argnums=(0,) if donate else (), **jit_kwargs)

    def step(state: TrainState, batch):
        new_state, metrics = compiled(state.replace(ref_params=None), state.ref_params, batch)
        return new_state.replace(ref_params=state.ref_params), metrics
    return step


def make_sharded_train_step(graphdef, config: TrainConfig, state, mesh, batch_size: int, *, layout="padded",
                            donate: bool = True, process_count: int | None = None):
    """(state placed on `mesh`, its step): the batch split is validated first, so a bad layout fails before any
    compilation; parameters, optimizer state and reference are split by `sharding.state_shardings`."""
    process_count = jax.process_count() if process_count is None else process_count
    sharding.validate_batch(batch_size, mesh, config.grad_accum, process_count)
    shardings = sharding.state_shardings(state, mesh)
    step = make_train_step(graphdef, config, layout=layout, state_shardings=shardings,
                           batch_shardings=sharding.batch_sharding(mesh), donate=donate)
    return jax.device_put(state, shardings), step


def make_eval_loss(graphdef, config: TrainConfig, *, layout="padded"):
    """Jitted (params, ref_params, batch) -> (loss, metrics) without an update (evaluation, tests)."""
    return jax.jit(make_loss_fn(graphdef, config, layout))
