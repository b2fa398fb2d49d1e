"""`TrainState`: everything that changes during training, as one pytree (jitted, donated, checkpointed)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from dpo_jax.train.config import TrainConfig
from dpo_jax.train.optim import make_optimizer

__all__ = ["TrainState", "copy_tree", "init_train_state"]


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
