"""The one precision mechanism: a compute-dtype view of a model, its master weights kept as they are.

`with_compute_dtype(model, jnp.bfloat16)` returns the same model computing in bfloat16: floating parameters
are cast (inside a traced loss the cast is differentiable, so gradients reach the float32 masters as
float32), and a model that follows the family convention (a frozen `config` with `replace(dtype=)` and a
constructor `Family(config, *, rngs)`) is rebuilt abstractly in that dtype, so its activations are computed
in it too. Any other model computes in its parameters' dtype. Log-softmax, log-probs and losses stay float32
whatever the compute dtype (`ops.logprob_head`).

LoRA adapters (`models.lora`) survive the rebuild: the rebuilt graph gets the same adapters at the same paths
(`adapter_layout`, part of the cached graph's key), so their parameters merge back in and compute in the
compute dtype like the base.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from dpo_jax.models.lora.apply import adapter_layout, attach_adapters

__all__ = ["with_compute_dtype", "cast_floating"]


def cast_floating(tree, dtype):
    """Every floating leaf of `tree` as `dtype` (integer and boolean leaves unchanged)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _rebuildable(model) -> bool:
    config = getattr(model, "config", None)
    return config is not None and hasattr(config, "dtype") and callable(getattr(config, "replace", None))


@functools.lru_cache(maxsize=None)
def _graphdef_in_dtype(model_type, config, dtype, layout=()):
    """The same architecture computing in `dtype`, with the adapters `layout` describes (abstract: no weights are
    materialised)."""
    def build():
        model = model_type(config.replace(dtype=dtype), rngs=nnx.Rngs(0))
        attach_adapters(model, layout)
        return model

    return nnx.split(nnx.eval_shape(build), nnx.Param, ...)[0]


def with_compute_dtype(model, dtype):
    """`model` computing in `dtype` (None: the model itself); see the module docstring."""
    if dtype is None:
        return model
    dtype = jnp.dtype(dtype)
    if not isinstance(model, nnx.Module):
        raise TypeError(f"compute_dtype needs an nnx.Module (its parameters are cast); got {type(model).__name__}. "
                        "Cast your own parameters, or leave compute_dtype unset")
    if _rebuildable(model) and jnp.dtype(model.config.dtype) == dtype:
        return model
    _, params, rest = nnx.split(model, nnx.Param, ...)
    params = cast_floating(params, dtype)
    if _rebuildable(model):
        return nnx.merge(_graphdef_in_dtype(type(model), model.config, dtype, adapter_layout(model)), params, rest)
    graphdef = nnx.split(model, nnx.Param, ...)[0]
    return nnx.merge(graphdef, params, rest)
