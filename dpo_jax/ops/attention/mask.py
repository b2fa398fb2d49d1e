"""`AttentionMask`: which keys each query may see, as structure a kernel can use (never a dense matrix built
by the model): causal or not, key padding, segment ids (packing), branch ids (prefix sharing), an explicit
dense matrix, a sliding window over positions.

A kernel needs the structure to skip masked blocks instead of reading a mask: cuDNN takes `is_causal` with no
mask tensor, splash takes segment ids. `allowed` folds every rule but causality into one boolean array for
the backends that read a mask (the einsum oracle, jax.nn's XLA path, cuDNN for prefix-shared rows).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

MASK_VALUE = -float(jnp.finfo(jnp.float32).max)
PROMPT_BRANCH = 0  # prefix sharing: keys of branch 0 (the prompt) are visible to every branch of the segment


@struct.dataclass
class AttentionMask:
    """Which keys each query may see, as structure (arrays [B, N] over the N query positions, or None).

    causal: query i sees keys j <= i (by index in the row).
    key_padding [B, N] bool: True on real keys (x-transformers' `mask`). A padding token's own query row
      comes back as 0 from every backend (x-transformers zeroes it too), so no kernel has to agree on it.
    segment_ids [B, N] int: a query sees only keys of its own segment (packing; pads may form their own).
    branch_ids [B, N] int: within a segment, a key of branch 0 is seen by everyone, any other key only by its
      own branch (prefix sharing: the rejected branch never sees the chosen tokens).
    dense [B, N, N] bool: an explicit matrix AND-ed with the rest (True = may attend).
    sliding_window: a query sees keys less than this many positions back (Mistral, Gemma), measured on
      `positions` [B, N] (row indices when None), so a prefix-shared branch keeps its unshared window.
    """

    key_padding: jax.Array | None = None
    segment_ids: jax.Array | None = None
    branch_ids: jax.Array | None = None
    dense: jax.Array | None = None
    positions: jax.Array | None = None
    causal: bool = struct.field(pytree_node=False, default=True)
    sliding_window: int | None = struct.field(pytree_node=False, default=None)

    def allowed(self, length: int, *, window: bool = True):
        """[B or 1, N or 1, N] bool of every rule except causality for rows of `length`, or None if none.

        window=False leaves the sliding window out, for a kernel that applies it natively.
        """
        allowed = None

        def both(a, b):
            return b if a is None else a & b

        if self.key_padding is not None:
            allowed = both(allowed, jnp.asarray(self.key_padding)[:, None, :])
        if self.dense is not None:
            allowed = both(allowed, jnp.asarray(self.dense))
        if self.segment_ids is not None:
            segments = jnp.asarray(self.segment_ids)
            allowed = both(allowed, segments[:, :, None] == segments[:, None, :])
        if self.branch_ids is not None:
            branches = jnp.asarray(self.branch_ids)
            key, query = branches[:, None, :], branches[:, :, None]
            allowed = both(allowed, (key == PROMPT_BRANCH) | (key == query))
        if window and self.sliding_window is not None:
            positions = jnp.arange(length)[None] if self.positions is None else jnp.asarray(self.positions)
            allowed = both(allowed, (positions[:, :, None] - positions[:, None, :]) < self.sliding_window)
        return allowed

    def silent_queries(self, length: int, num_prefix_keys: int = 0):
        """[B or 1, N] bool: query rows that return 0 whatever the backend, or None if there are none.

        A padding token's query (key_padding False), and a query that no rule lets see any key (judged without
        causality, so a prefix key or its own position keeps it alive). Fully masked softmax rows differ
        between kernels; fixing them to 0 here means no backend has to agree on them. Segment ids, branch ids
        and windows always let a query see its own key, so only a dense mask can leave a real query without
        one: the [B, N, N] rules are folded only then.
        """
        silent = None if self.key_padding is None else ~jnp.asarray(self.key_padding)
        if num_prefix_keys == 0 and self.dense is not None:
            empty = ~jnp.any(self.allowed(length), axis=-1)
            silent = empty if silent is None else silent | empty
        return silent

    def rules(self) -> tuple[str, ...]:
        """The names of the rules this mask carries besides causality (what a backend must express)."""
        names = [name for name in ("key_padding", "segment_ids", "branch_ids", "dense")
                 if getattr(self, name) is not None]
        if self.sliding_window is not None:
            names.append("sliding_window" if self.positions is None else "sliding_window_on_positions")
        return tuple(names)
