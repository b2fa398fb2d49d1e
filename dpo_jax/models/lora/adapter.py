"""`LoraAdapter`: the low-rank update a linear layer adds to its output, `scale * dropout(x) @ A @ B`.

A linear layer of this project (`models.hf.layers.Linear`, `models.x_transformers.layers.Linear`) holds an
optional adapter in its `lora` slot and adds the adapter's output to its own, PEFT's order: `base(x) + lora(x)`.
Attaching one leaves every base parameter where it was (`q_proj.kernel` stays `q_proj.kernel`; the adapter is
`q_proj.lora.a`, `q_proj.lora.b`), so the base's parameter state is the same pytree with or without adapters:
the adapter-off view of a policy is the base model on the very same arrays.

A is [in, r] and B is [r, out] (PEFT stores their transposes, `lora_A.weight` (r, in) and `lora_B.weight`
(out, r)); both are `nnx.LoRAParam`, a subclass of `nnx.Param`, so a filter on `nnx.LoRAParam` selects the
adapters and everything else is the frozen base. The adapter computes in its input's dtype (the compute dtype).

Dropout on the adapter's input is active only while `dropout_key` holds a key, which the train step sets per
step from the run's seed (`set_dropout_keys`); evaluation, sampling and the reference never see one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dpo_jax.models.lora.config import INITS, scale_of

__all__ = ["LoraAdapter", "AdapterSpec", "LoraDropoutKey", "initial_factors"]


class LoraDropoutKey(nnx.Variable):
    """The raw key data (uint32 [2]) of one adapter's dropout mask in this step; never trained, never saved."""


def initial_factors(key, in_features: int, out_features: int, rank: int, init: str, dtype=jnp.float32):
    """(A [in, r], B [r, out]) with exactly one factor zero (see `LoraConfig`)."""
    if init == "zero_b":  # PEFT: lora_A kaiming_uniform(a=sqrt(5)) on (r, in) is U(-1/sqrt(in), 1/sqrt(in))
        bound = in_features ** -0.5
        return (jax.random.uniform(key, (in_features, rank), dtype, -bound, bound),
                jnp.zeros((rank, out_features), dtype))
    if init == "zero_a":
        bound = rank ** -0.5
        return (jnp.zeros((in_features, rank), dtype),
                jax.random.uniform(key, (rank, out_features), dtype, -bound, bound))
    raise ValueError(f"unknown LoRA init {init!r}; expected one of {', '.join(INITS)}")


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
    """Everything static about one adapter: enough to rebuild its structure on another graph (`models.precision`)."""
    in_features: int
    out_features: int
    rank: int
    alpha: float
    use_rslora: bool = False
    dropout: float = 0.0
    dtype: str = "float32"
    has_dropout_key: bool = False


class LoraAdapter(nnx.Module):
    """scale * dropout(x) @ A @ B; A [in, r] and B [r, out] are `nnx.LoRAParam`s (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, *, rank: int, alpha: float, use_rslora: bool = False,
                 dropout: float = 0.0, init: str = "zero_b", key=None, dtype=jnp.float32):
        self.rank, self.alpha, self.use_rslora, self.dropout = int(rank), float(alpha), bool(use_rslora), float(dropout)
        self.scale = scale_of(self.alpha, self.rank, self.use_rslora)
        key = jax.random.key(0) if key is None else key
        a, b = initial_factors(key, in_features, out_features, rank, init, dtype)
        self.a = nnx.LoRAParam(a)
        self.b = nnx.LoRAParam(b)
        self.dropout_key = nnx.data(None)

    @classmethod
    def from_spec(cls, spec: AdapterSpec) -> "LoraAdapter":
        """An adapter with `spec`'s structure (its values are placeholders: use it abstractly, then merge state)."""
        adapter = cls(spec.in_features, spec.out_features, rank=spec.rank, alpha=spec.alpha,
                      use_rslora=spec.use_rslora, dropout=spec.dropout, dtype=jnp.dtype(spec.dtype))
        if spec.has_dropout_key:
            adapter.dropout_key = LoraDropoutKey(jnp.zeros((2,), jnp.uint32))
        return adapter

    def spec(self) -> AdapterSpec:
        in_features, rank = self.a.get_value().shape
        return AdapterSpec(in_features, self.b.get_value().shape[1], rank, self.alpha, self.use_rslora, self.dropout,
                           jnp.dtype(self.a.get_value().dtype).name, self.dropout_key is not None)

    def __call__(self, x):
        if self.dropout > 0 and self.dropout_key is not None:
            key = jax.random.wrap_key_data(self.dropout_key[...])
            keep = jax.random.bernoulli(key, 1.0 - self.dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - self.dropout), jnp.zeros((), x.dtype))
        return (x @ self.a[...].astype(x.dtype)) @ self.b[...].astype(x.dtype) * self.scale
