"""Rematerialisation of transformer blocks for long sequences: trade recompute for activation memory.

`remat="none"` stores every activation for the backward pass (fastest when memory allows); "full" keeps only
each block's input and recomputes the block in the backward pass (`jax.checkpoint`, nothing saveable);
"dots_saveable" keeps the matmul outputs and recomputes the cheap elementwise work in between.
Gradients are the same in every mode (tests/fast path parity); only memory and time change.
"""

from __future__ import annotations

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


def _call_block(block, x, prev_attn, attn_kwargs):
    return block(x, prev_attn=prev_attn, **attn_kwargs)


def block_caller(remat=None):
    """call(block, x, prev_attn, attn_kwargs) -> (x, scores), rematerialised per block as `remat` asks."""
    validate_remat(remat)
    if remat is None or remat == "none":
        return _call_block
    policy = REMAT_POLICIES[remat]

    def call_rematerialised(block, x, prev_attn, attn_kwargs):
        # split/merge keeps the checkpointed function pure (nnx.remat refuses Params traced by an outer grad)
        graphdef, state = nnx.split(block)

        def pure(state, x, prev_attn, attn_kwargs):
            return _call_block(nnx.merge(graphdef, state), x, prev_attn, attn_kwargs)
        return jax.checkpoint(pure, policy=policy)(state, x, prev_attn, attn_kwargs)
    return call_rematerialised
