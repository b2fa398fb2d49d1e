"""LoRA training: the adapters are the trained parameters; the base weights are read, never trained or copied.

A LoRA policy (`dpo_jax.apply_lora`) splits into its adapters (`nnx.LoRAParam`: `TrainState.params`, what optax
updates and checkpoints store) and a `FrozenBase` (`TrainState.ref_params`): the base weights, one copy that
the policy and the reference both read, and the reference's own frozen adapters when there are any. The train
step passes it beside the donated state, never donated and never returned, so the base arrays are bitwise
unchanged by training and a checkpoint holds the adapters and their optimizer state only (the base is rebuilt
from its source on resume).

The reference is chosen by what `init_train_state(policy, reference_model, ...)` is given:

- `reference_model=None`, or the policy's own base (a model without adapters on the same arrays): the
  adapter-off view of the same base arrays, `nnx.merge(base_graphdef, base)`: the base model itself, no copy,
  no gradient. The policy's adapters must then start at B @ A = 0 with exactly one zero factor
  (`check_adapters_start_at_zero`), so step 0 gives loss ln 2;
- a LoRA model on the same base arrays, e.g. the policy itself after `load_adapter` (`--init-adapter DIR`): its
  current adapters, copied once and frozen, on the shared base (TRL's "ref" adapter when continuing an adapter).

A separate copy of the base as reference, and TR-DPO's reference updates, are refused: both need a second
base.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx, struct

from dpo_jax.models.lora import (check_adapters_start_at_zero, has_adapters, lora_settings, set_dropout_keys,
                                 without_adapters)

__all__ = ["FrozenBase", "lora_split", "reference_of", "policy_of", "describe_lora_state", "lora_task", "run_report",
           "REFERENCE_ADAPTER_OFF", "REFERENCE_INITIAL_ADAPTER"]

REFERENCE_ADAPTER_OFF = "the adapter-off base (the same arrays as the policy's base; no copy)"
REFERENCE_INITIAL_ADAPTER = "the policy's initial adapters, frozen, on the shared base"


@struct.dataclass
class FrozenBase:
    """What a LoRA loss reads but never trains: the base weights and, when continuing an adapter, the reference's
    frozen adapters. `base_graphdef` builds the adapter-off reference; `dropout` says whether adapters use
    dropout (then the train step draws masks from the state's key)."""

    base: Any
    adapters: Any = None
    base_graphdef: Any = struct.field(pytree_node=False, default=None)
    dropout: bool = struct.field(pytree_node=False, default=False)

    def reference_model(self, graphdef):
        """The reference (without gradient): the base itself, or the frozen adapters on it."""
        base = jax.lax.stop_gradient(self.base)
        if self.adapters is None:
            return nnx.merge(self.base_graphdef, base)
        return nnx.merge(graphdef, jax.lax.stop_gradient(self.adapters), base)


def _same_arrays(a, b) -> bool:
    left, right = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(left) == len(right) and all(x is y for x, y in zip(left, right))


def lora_split(policy, reference_model, config):
    """(graphdef, adapters, FrozenBase) of a LoRA policy, the reference chosen as the module docstring says."""
    if config.ref_sync_every:
        raise ValueError("ref_sync_every (TR-DPO) updates the reference from the policy, which needs a second copy "
                         "of the base; with LoRA the reference shares the policy's base")
    graphdef, adapters, base = nnx.split(policy, nnx.LoRAParam, nnx.Param)
    base_graphdef = nnx.graphdef(without_adapters(policy))
    dropout = lora_settings(policy)["dropout"] > 0
    reference_adapters = None
    if reference_model is not None and has_adapters(reference_model):
        _, ref_adapters, ref_base = nnx.split(reference_model, nnx.LoRAParam, nnx.Param)
        if not _same_arrays(ref_base, base):
            raise ValueError("the reference's adapters must sit on the policy's own base arrays (no second copy); pass "
                             "the policy itself to make its current adapters the reference")
        if jax.tree.structure(ref_adapters) != jax.tree.structure(adapters):
            raise ValueError("the reference's adapters are not on the policy's adapted layers")
        reference_adapters = jax.tree.map(lambda x: x.copy(), ref_adapters)  # the policy's buffers get donated
    elif reference_model is not None and not _same_arrays(nnx.split(reference_model, nnx.Param)[1], base):
        raise ValueError("with a LoRA policy the reference is its own base with the adapters off (reference_model="
                         "None) or frozen adapters on that base; a separate reference model would be a second copy")
    elif not config.reference_free:  # online or precomputed, the reference is the adapter-off base
        check_adapters_start_at_zero(policy)
    frozen = FrozenBase(base=base, adapters=reference_adapters, base_graphdef=base_graphdef, dropout=dropout)
    return graphdef, adapters, frozen


def reference_of(graphdef, frozen: FrozenBase):
    """The reference model of a LoRA state (see `FrozenBase.reference_model`)."""
    return frozen.reference_model(graphdef)


def policy_of(graphdef, params, frozen: FrozenBase, dropout_key=None):
    """The LoRA policy: the adapters `params` on the frozen base; with `dropout_key`, adapter dropout is on."""
    policy = nnx.merge(graphdef, params, frozen.base)
    if dropout_key is not None and frozen.dropout:
        set_dropout_keys(policy, dropout_key)
    return policy


def _bytes(tree) -> int:
    return int(sum(np.dtype(leaf.dtype).itemsize * int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree)))


def _count(tree) -> int:
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree)))


def describe_lora_state(state, *, reference_free: bool = False) -> dict:
    """Trainable and total parameter counts and state bytes of a LoRA TrainState (for the run's log and summary)."""
    frozen = state.ref_params
    if reference_free:
        reference = "none (a reference-free loss)"
    else:
        reference = REFERENCE_ADAPTER_OFF if frozen.adapters is None else REFERENCE_INITIAL_ADAPTER
    trainable, base = _count(state.params), _count(frozen.base)
    return {"trainable_params": trainable, "total_params": trainable + base, "base_params": base,
            "trainable_fraction": trainable / (trainable + base), "adapter_bytes": _bytes(state.params),
            "base_bytes": _bytes(frozen.base), "optimizer_state_bytes": _bytes(state.opt_state),
            "reference_adapter_bytes": _bytes(frozen.adapters),
            "reference": reference}


def lora_task(base, lora_config=None, init_adapter: str | None = None, *, seed: int = 0):
    """(policy, reference_model) of a LoRA run: fresh adapters from `lora_config` on `base` with the adapter-off
    reference, or the adapters of the PEFT directory `init_adapter` with themselves, frozen, as the reference."""
    from dpo_jax.models.lora import apply_lora, load_adapter

    if (lora_config is None) == (init_adapter is None):
        raise ValueError("a LoRA run takes either a LoraConfig (fresh adapters) or an adapter directory to continue")
    if init_adapter is not None:
        policy = load_adapter(base, init_adapter)
        return policy, policy
    return apply_lora(base, lora_config, seed=seed), base


def run_report(state, *, reference_free: bool, init_adapter: str | None = None) -> tuple[dict, list[str]]:
    """(summary entry, log lines) of a LoRA run: what trains, what it costs, and which model is the reference."""
    info = describe_lora_state(state, reference_free=reference_free)
    if init_adapter is not None and not reference_free:
        info["reference"] = f"the initial adapter from {init_adapter}, frozen, on the shared base (continuing an adapter)"
    lines = [f"LoRA: trainable {info['trainable_params']:,} / total {info['total_params']:,} parameters "
             f"({100 * info['trainable_fraction']:.3f}%); optimizer state {info['optimizer_state_bytes']:,} bytes; "
             f"adapters {info['adapter_bytes']:,} bytes; frozen base {info['base_bytes']:,} bytes",
             f"LoRA: the reference is {info['reference']}"]
    return info, lines
