"""`TrainState`: everything that changes during training, as one pytree (jitted, donated, checkpointed).

With a LoRA policy (`train.lora`) `params` are the adapters and `ref_params` a `FrozenBase` (the base weights and
any frozen reference adapters): read by every step, never donated, never changed, never checkpointed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from dpo_jax import sharding
from dpo_jax.models.lora import has_adapters
from dpo_jax.train.config import TrainConfig
from dpo_jax.train.lora import FrozenBase, lora_split
from dpo_jax.train.optim import make_optimizer

__all__ = ["TrainState", "copy_tree", "init_train_state", "saved_part", "with_frozen_part", "reference_params",
           "trained_policy"]


@struct.dataclass
class TrainState:
    """Everything that changes during training; a pytree, so it can be jitted, donated and checkpointed."""

    step: jax.Array
    params: Any      # the trained parameters: the whole policy, or a LoRA policy's adapters
    opt_state: Any
    ref_params: Any  # the reference's parameters (None for reference-free losses and precomputed reference
                     # log-probs), or a LoRA policy's FrozenBase
    rng: jax.Array   # raw uint32 key data (checkpointable); split every step


def copy_tree(tree):
    """Fresh buffers: a policy and a reference must not share arrays once buffers are donated."""
    return jax.tree.map(jnp.copy, tree)


def init_train_state(policy_model, reference_model, config: TrainConfig, *, seed: int = 0):
    """(graphdef, TrainState) from an nnx policy and an optional reference.

    The reference is kept inside the state only when it is evaluated every step (not reference-free, not
    precomputed). With `reference_model=None` and a reference-based loss the reference is a copy of the policy.
    A LoRA policy trains its adapters only, on its base shared with the reference (`train.lora`: which reference
    `reference_model` selects, and what is refused).
    """
    if has_adapters(policy_model):
        graphdef, adapters, frozen = lora_split(policy_model, reference_model, config)
        params = copy_tree(adapters)  # donated every step: the policy model keeps its own buffers
        rng = jax.random.key_data(jax.random.key(seed))
        return graphdef, TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                    opt_state=make_optimizer(config).init(params), ref_params=frozen, rng=rng)
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


def saved_part(state):
    """What a checkpoint stores of `state`: everything but a LoRA run's FrozenBase (rebuilt from its source)."""
    if isinstance(state, TrainState) and isinstance(state.ref_params, FrozenBase):
        return state.replace(ref_params=None)
    return state


def with_frozen_part(restored, template):
    """`restored` (a `saved_part`) completed with the FrozenBase of `template`, when it has one."""
    if isinstance(template, TrainState) and isinstance(template.ref_params, FrozenBase):
        return restored.replace(ref_params=template.ref_params)
    return restored


def reference_params(state, reference_model):
    """What the reference is computed from, for a reference cache: a LoRA state's FrozenBase, else the reference
    model's parameters."""
    if isinstance(state.ref_params, FrozenBase):
        return state.ref_params
    return nnx.split(reference_model, nnx.Param)[1]


def trained_policy(graphdef, state, mesh):
    """The policy of `state` as a model whose trained parameters are replicated (addressable on every process, to
    be written); a LoRA policy's frozen base stays where it is (its adapters are what a run writes)."""
    params = sharding.gather_replicated(state.params, mesh)
    if isinstance(state.ref_params, FrozenBase):
        return nnx.merge(graphdef, params, state.ref_params.base)
    return nnx.merge(graphdef, params)
