"""`AttentionCall`: the static facts of one `attend` call that decide which backend can compute it.

Everything here is known at trace time (shapes, dtypes, which mask rules are present, the platform), so a
backend's refusal and the "auto" choice are made once per compilation and cost nothing at run time.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from dpo_jax.ops.attention.mask import AttentionMask


@dataclasses.dataclass(frozen=True)
class Platform:
    """The device the computation is placed on: "cpu", "gpu" or "tpu", and for GPUs whether it is an NVIDIA
    (CUDA) one and its compute capability ("9.0" on H100/H200)."""

    name: str
    cuda: bool = False
    compute_capability: str | None = None

    @property
    def hopper_or_later(self) -> bool:
        if self.compute_capability is None:
            return False
        try:
            return tuple(int(x) for x in self.compute_capability.split(".")[:2]) >= (9, 0)
        except ValueError:
            return False


@functools.lru_cache(maxsize=None)
def _platform_of(backend: str) -> Platform:
    if backend != "gpu":
        return Platform(backend)
    device = jax.devices(backend)[0]
    version = str(getattr(getattr(device, "client", None), "platform_version", "")).lower()
    return Platform("gpu", cuda="rocm" not in version and "hip" not in version,
                    compute_capability=getattr(device, "compute_capability", None))


def current_platform() -> Platform:
    """The default backend's platform (where an un-placed jit runs)."""
    return _platform_of(jax.default_backend())


@dataclasses.dataclass(frozen=True)
class AttentionCall:
    """What a backend must express: the platform, dtypes and shapes, the mask rules and the extras."""

    platform: Platform
    dtype: str  # the query's dtype name
    same_dtypes: bool  # q, k and v share one dtype
    heads: int
    kv_heads: int
    head_dim: int
    length: int  # N: queries, and the keys that are not prefix keys
    num_prefix_keys: int
    causal: bool
    rules: tuple[str, ...]  # AttentionMask.rules(): key_padding, segment_ids, branch_ids, dense, sliding_window...
    sliding_window: int | None
    bias: bool
    prev_scores: bool
    softcap: float | None
    return_scores: bool

    @classmethod
    def of(cls, q, k, v, *, mask: AttentionMask, bias=None, prev_scores=None, num_prefix_keys: int = 0,
           softcap=None, return_scores: bool = False, platform: Platform | None = None) -> "AttentionCall":
        return cls(platform=platform or current_platform(), dtype=jnp.dtype(q.dtype).name,
                   same_dtypes=q.dtype == k.dtype == v.dtype, heads=q.shape[1], kv_heads=k.shape[1],
                   head_dim=q.shape[-1], length=q.shape[2], num_prefix_keys=num_prefix_keys, causal=mask.causal,
                   rules=mask.rules(), sliding_window=mask.sliding_window, bias=bias is not None,
                   prev_scores=prev_scores is not None, softcap=softcap, return_scores=return_scores)

    def extras(self) -> list[str]:
        """What the model adds to plain masked attention, in words (a fused kernel takes none of these)."""
        found = []
        if self.return_scores or self.prev_scores:
            found.append("residual attention (pre-softmax scores returned or added; x-transformers residual_attn)")
        if self.num_prefix_keys:
            found.append(f"memory key/values ({self.num_prefix_keys} prefix keys seen by every query)")
        if self.bias:
            found.append("an additive score bias (alibi or T5 relative positions)")
        if self.softcap is not None:
            found.append(f"score softcapping (softcap={self.softcap})")
        return found

    def describe(self) -> str:
        """One line for the run log: platform, dtype and the mask."""
        mask = ", ".join(("causal",) * self.causal + self.rules) or "no mask"
        return f"{self.platform.name}, {self.dtype}, {mask}"
