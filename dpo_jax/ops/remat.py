"""Rematerialisation of model blocks for long sequences: trade recompute for activation memory.

`remat="none"` stores every activation for the backward pass (fastest when memory allows); "full" keeps only
each block's input and recomputes the block in the backward pass (`jax.checkpoint`, nothing saveable);
"dots_saveable" keeps the matmul outputs and recomputes the cheap elementwise work in between.
Gradients are the same in every mode (parity_tests/test_fast_path.py); only memory and time change.
Any family uses it the same way: `rematerialized(block, remat)(x, ...)` instead of `block(x, ...)`.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


def validate_remat(remat):
    if remat is not None and remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat {remat!r}; expected one of {', '.join(REMAT_POLICIES)}")


def rematerialized(block: nnx.Module, remat=None, **static):
    """`block`'s call, rematerialised per block as `remat` asks (None/"none": the block itself).

    `static` keyword arguments (strings, flags) are bound outside the checkpoint; the others must be arrays,
    None or pytrees of them.
    """
    validate_remat(remat)
    if remat is None or remat == "none":
        return functools.partial(block, **static) if static else block
    policy = REMAT_POLICIES[remat]
    # split/merge keeps the checkpointed function pure (nnx.remat refuses Params traced by an outer grad)
    graphdef, state = nnx.split(block)

    def pure(state, *args, **kwargs):
        return nnx.merge(graphdef, state)(*args, **kwargs, **static)

    checkpointed = jax.checkpoint(pure, policy=policy)
    return lambda *args, **kwargs: checkpointed(state, *args, **kwargs)
