"""The DPO train step: a pure, jit-compiled function (state, batch) -> (state, metrics).

Parameters live in a `TrainState` pytree (step, params, opt_state, ref_params, rng) so the step can be jitted
with donated buffers and, later, mesh shardings (`make_train_step(..., state_shardings=, batch_shardings=)`
pass straight to `jax.jit`). The model graph (`nnx.split(model)[0]`) is static; `nnx.merge` rebuilds the model
inside the loss. The step refuses non-finite updates on the device: when the loss or the gradient norm is NaN
or Inf, the returned state is the input state (step not advanced) and `metrics["finite"]` is False, so the
caller keeps the last good state even though the input buffers were donated.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec

from dpo_jax.dpo import ReferenceLogps, dpo_loss, validate_options
from dpo_jax.losses import REFERENCE_FREE_LOSSES
from dpo_jax.optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule

# CPU has no buffer donation; jax warns once per compile. The donation still documents intent for GPU/TPU.
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")

SEQUENCE_KEYS = ("preferred_seq", "unpreferred_seq", "prompt_mask", "preferred_seq_mask", "unpreferred_seq_mask")
REFERENCE_KEYS = ("ref_chosen_logps", "ref_rejected_logps")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of a DPO run's optimisation (the model's shape lives in TransformerConfig)."""

    # loss (same names and defaults as dpo_torch.DPO)
    beta: float = 0.1
    loss_type: str = "sigmoid"
    reduction: str = "mean"
    mask_alignment: str = "next_token"
    label_smoothing: float = 0.0
    divergence: str = "reverse_kl"
    alpha: float = 0.5
    gamma: float = 0.5
    pad_id: int | None = None
    # optimizer and schedule; None picks the optimizer's default (adamw 1e-4 / 0, rmsprop 1e-6 / 150)
    optimizer: str = "adamw"
    learning_rate: float | None = None
    warmup_steps: int | None = None
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    total_steps: int = 1000
    weight_decay: float = 0.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    eps: float = 1e-8
    rmsprop_decay: float = 0.99
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    # reference model
    precompute_ref: bool = False
    ref_sync_every: int = 0
    ref_sync_alpha: float = 0.6
    # numerics
    bf16: bool = False

    def __post_init__(self):
        self.validate()

    @property
    def reference_free(self) -> bool:
        return self.loss_type in REFERENCE_FREE_LOSSES

    def validate(self) -> None:
        validate_options(beta=self.beta, loss_type=self.loss_type, reduction=self.reduction,
                         mask_alignment=self.mask_alignment, label_smoothing=self.label_smoothing,
                         divergence=self.divergence, alpha=self.alpha, gamma=self.gamma,
                         has_reference=not self.reference_free)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {', '.join(SCHEDULES)}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not isinstance(self.grad_accum, int) or self.grad_accum < 1:
            raise ValueError(f"grad_accum must be a positive int, got {self.grad_accum!r}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 or None disables it), got {self.grad_clip}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.ref_sync_every < 0:
            raise ValueError(f"ref_sync_every must be >= 0, got {self.ref_sync_every}")
        if not 0.0 <= self.ref_sync_alpha <= 1.0:
            raise ValueError(f"ref_sync_alpha must be in [0, 1], got {self.ref_sync_alpha}")
        if self.ref_sync_every and (self.precompute_ref or self.reference_free):
            raise ValueError("ref_sync_every needs a live reference: not with precompute_ref or a reference-free loss")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return cls(**data)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


@struct.dataclass
class TrainState:
    """Everything that changes during training; a pytree, so it can be jitted, donated and checkpointed."""

    step: jax.Array
    params: Any
    opt_state: Any
    ref_params: Any  # None for reference-free losses and precomputed reference log-probs
    rng: jax.Array   # raw uint32 key data (checkpointable); split every step


def copy_tree(tree):
    """Fresh buffers: a policy and a reference must not share arrays once buffers are donated."""
    return jax.tree.map(jnp.copy, tree)


def init_train_state(policy_model, reference_model, config: TrainConfig, *, seed: int = 0):
    """(graphdef, TrainState) from an nnx policy and an optional reference.

    The reference is kept inside the state only when it is evaluated every step (not reference-free, not
    precomputed). With `reference_model=None` and a reference-based loss the reference is a copy of the policy.
    """
    graphdef, params = nnx.split(policy_model, nnx.Param)
    params = copy_tree(params)
    ref_params = None
    if not config.reference_free and not config.precompute_ref:
        source = policy_model if reference_model is None else reference_model
        ref_params = copy_tree(nnx.split(source, nnx.Param)[1])
    opt_state = make_optimizer(config).init(params)
    rng = jax.random.key_data(jax.random.key(seed))
    return graphdef, TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                                ref_params=ref_params, rng=rng)


@functools.lru_cache(maxsize=None)
def _bf16_graphdef(model_config):
    """The same architecture computing in bfloat16 (no weights are materialised: eval_shape)."""
    from dpo_jax.model import Transformer

    abstract = nnx.eval_shape(lambda: Transformer(model_config.replace(dtype=jnp.bfloat16), rngs=nnx.Rngs(0)))
    return nnx.split(abstract, nnx.Param)[0]


def compute_graphdef(graphdef, params, bf16: bool):
    if not bf16:
        return graphdef
    return _bf16_graphdef(nnx.merge(graphdef, params).config)


def cast_for_compute(params, bf16: bool):
    """bfloat16 copies of float32 master weights for the forward pass (gradients flow back as float32)."""
    if not bf16:
        return params
    return jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def policy_and_reference(graphdef, config: TrainConfig, params, ref_params, batch):
    """The policy to differentiate and the reference for a loss: None (reference-free), precomputed log-probs
    from the batch, or the frozen reference model (no gradient); all in the compute dtype."""
    forward_graph = compute_graphdef(graphdef, params, config.bf16)
    policy = nnx.merge(forward_graph, cast_for_compute(params, config.bf16))
    if config.reference_free:
        return policy, None
    if "ref_chosen_logps" in batch:
        return policy, ReferenceLogps(batch["ref_chosen_logps"], batch["ref_rejected_logps"])
    if ref_params is None:
        raise ValueError("the batch has no ref_chosen_logps/ref_rejected_logps and the state no ref_params")
    return policy, nnx.merge(forward_graph, cast_for_compute(jax.lax.stop_gradient(ref_params), config.bf16))


def make_loss_fn(graphdef, config: TrainConfig):
    """loss_fn(params, ref_params, batch) -> (loss, metrics); the reference gets no gradient."""
    def loss_fn(params, ref_params, batch):
        policy, reference = policy_and_reference(graphdef, config, params, ref_params, batch)
        return dpo_loss(policy, reference, *(batch[k] for k in SEQUENCE_KEYS[:2]), prompt_mask=batch["prompt_mask"],
                        preferred_seq_mask=batch.get("preferred_seq_mask"),
                        unpreferred_seq_mask=batch.get("unpreferred_seq_mask"), beta=config.beta,
                        pad_id=config.pad_id, loss_type=config.loss_type, reduction=config.reduction,
                        mask_alignment=config.mask_alignment, label_smoothing=config.label_smoothing,
                        divergence=config.divergence, alpha=config.alpha, gamma=config.gamma)
    return loss_fn


def split_micro_batches(batch, num_micro: int):
    """[B, ...] -> [num_micro, B // num_micro, ...] for every array of the batch."""
    size = batch["preferred_seq"].shape[0]
    if size % num_micro:
        raise ValueError(f"batch size {size} is not divisible by grad_accum={num_micro}")
    return {key: value.reshape(num_micro, size // num_micro, *value.shape[1:]) for key, value in batch.items()}


def accumulated_grads(loss_fn, params, ref_params, batch, num_micro: int, micro_sharding=None):
    """Mean loss, metrics and gradients over equal micro-batches (lax.scan): equals the big-batch step.

    `micro_sharding` (a NamedSharding for [num_micro, B // num_micro, ...]) spreads every micro-batch over the
    batch axes of a mesh instead of leaving each one on the devices that held its rows of the big batch.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_micro == 1:
        (_, metrics), grads = grad_fn(params, ref_params, batch)
        return metrics, grads

    def body(grad_sum, micro_batch):
        (_, metrics), grads = grad_fn(params, ref_params, micro_batch)
        return jax.tree.map(jnp.add, grad_sum, grads), metrics

    zeros = jax.tree.map(jnp.zeros_like, params)
    micro_batches = split_micro_batches(batch, num_micro)
    if micro_sharding is not None:
        micro_batches = jax.lax.with_sharding_constraint(micro_batches, micro_sharding)
    grad_sum, stacked = jax.lax.scan(body, zeros, micro_batches)
    grads = jax.tree.map(lambda g: g / num_micro, grad_sum)
    metrics = jax.tree.map(lambda m: m.mean(axis=0), stacked)
    return metrics, grads


def sync_reference(ref_params, params, alpha):
    """TR-DPO soft update: ref <- alpha * policy + (1 - alpha) * ref."""
    return jax.tree.map(lambda r, p: alpha * p + (1.0 - alpha) * r, ref_params, params)


def _select(keep_new, new_tree, old_tree):
    return jax.tree.map(lambda new, old: jnp.where(keep_new, new, old), new_tree, old_tree)


def make_train_step(graphdef, config: TrainConfig, *, state_shardings=None, batch_shardings=None, donate=True,
                    loss_fn=None):
    """Jitted step(state, batch_dict) -> (state, metrics).

    `loss_fn(params, ref_params, batch) -> (loss, metrics)` defaults to `make_loss_fn(graphdef, config)`; other
    batch layouts (prefix sharing, packing) pass their own.

    `batch_dict` holds `PreferenceBatch.as_dict()` arrays, plus `ref_chosen_logps`/`ref_rejected_logps` [B]
    when the reference is precomputed. Metrics: DESIGN.md section 3 names, `grad_norm` (before clipping),
    `lr` (of this update), `finite` (False: the update was refused and the state returned unchanged).
    """
    optimizer = make_optimizer(config)
    schedule = make_schedule(config)
    loss_fn = loss_fn or make_loss_fn(graphdef, config)

    micro_sharding = None
    if isinstance(batch_shardings, NamedSharding) and config.grad_accum > 1:  # batch axis -> axis 1
        micro_sharding = NamedSharding(batch_shardings.mesh, PartitionSpec(None, *batch_shardings.spec))

    def step_fn(state: TrainState, batch):
        metrics, grads = accumulated_grads(loss_fn, state.params, state.ref_params, batch, config.grad_accum,
                                           micro_sharding)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_step = state.step + 1
        ref_params = state.ref_params
        if config.ref_sync_every and ref_params is not None:
            due = (new_step % config.ref_sync_every) == 0
            ref_params = _select(due, sync_reference(ref_params, params, config.ref_sync_alpha), ref_params)
        rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0])
        params_finite = jnp.all(jnp.stack([jnp.isfinite(p).all() for p in jax.tree.leaves(params)]))
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm) & params_finite
        updated = TrainState(step=new_step, params=params, opt_state=opt_state, ref_params=ref_params, rng=rng)
        new_state = _select(finite, updated, state)
        metrics = dict(metrics, grad_norm=grad_norm, lr=schedule(state.step), finite=finite)
        return new_state, metrics

    jit_kwargs = {}
    if state_shardings is not None or batch_shardings is not None:
        jit_kwargs["in_shardings"] = (state_shardings, batch_shardings)
        jit_kwargs["out_shardings"] = (state_shardings, None)
    return jax.jit(step_fn, donate_argnums=(0,) if donate else (), **jit_kwargs)


def make_eval_loss(graphdef, config: TrainConfig):
    """Jitted (params, ref_params, batch) -> (loss, metrics) without an update (evaluation, tests)."""
    return jax.jit(make_loss_fn(graphdef, config))
