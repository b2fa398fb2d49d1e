"""TransformerConfig: the supported subset of x-transformers' decoder-only TransformerWrapper.

Field names are x-transformers' own keyword names (`Decoder(...)` options keep their `attn_`/`ff_`
prefixes), so a config reads like the torch constructor call that builds the same model.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

DEFAULT_DIM_HEAD = 64

# Options that live on the TransformerWrapper; the rest go to Decoder(...).
WRAPPER_OPTIONS = ("tie_embedding", "l2norm_embed", "post_emb_norm", "use_abs_pos_emb", "emb_dim", "num_memory_tokens")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    num_tokens: int
    max_seq_len: int
    dim: int
    depth: int
    heads: int = 8
    # attention
    attn_dim_head: int = DEFAULT_DIM_HEAD
    attn_kv_heads: int | None = None
    attn_one_kv_head: bool = False
    attn_qk_norm: bool = False
    attn_qk_norm_dim_scale: bool = False
    attn_flash: bool = False
    attn_num_mem_kv: int = 0
    # positions
    rotary_pos_emb: bool = False
    alibi_pos_bias: bool = False
    rel_pos_bias: bool = False
    # norms
    use_rmsnorm: bool = False
    use_simple_rmsnorm: bool = False
    use_scalenorm: bool = False
    pre_norm: bool = True
    sandwich_norm: bool = False
    # feed-forward
    ff_mult: int = 4
    ff_glu: bool = False
    ff_swish: bool = False
    ff_no_bias: bool = False
    # residual stream
    scale_residual: bool = False
    residual_attn: bool = False
    macaron: bool = False
    # wrapper
    tie_embedding: bool = False
    l2norm_embed: bool = False
    post_emb_norm: bool = False
    use_abs_pos_emb: bool = True
    emb_dim: int | None = None
    num_memory_tokens: int = 0
    # numerics (not x-transformers options)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        self.validate()

    # ---- derived quantities -------------------------------------------------------------------------

    @property
    def dim_head(self) -> int:
        return self.attn_dim_head

    @property
    def kv_heads(self) -> int:
        if self.attn_one_kv_head:
            return 1
        return self.attn_kv_heads if self.attn_kv_heads is not None else self.heads

    @property
    def embedding_dim(self) -> int:
        return self.emb_dim if self.emb_dim is not None else self.dim

    @property
    def has_abs_pos_emb(self) -> bool:
        """x-transformers switches the learned table off for rotary and T5 bias, not for alibi."""
        return self.use_abs_pos_emb and self.max_seq_len > 0 and not (self.rotary_pos_emb or self.rel_pos_bias)

    @property
    def has_to_out(self) -> bool:
        """`heads == 1` makes to_out an Identity in x-transformers (dim_out == dim, no on_attn)."""
        return self.heads > 1

    @property
    def rotary_dim(self) -> int:
        return self.dim_head // 2

    @property
    def layer_types(self) -> tuple[str, ...]:
        block = ("f", "a", "f") if self.macaron else ("a", "f")
        return block * self.depth

    # ---- checks -------------------------------------------------------------------------------------

    def validate(self) -> None:
        """Reject combinations that x-transformers refuses or that cannot have consistent weights."""
        positive = dict(num_tokens=self.num_tokens, dim=self.dim, depth=self.depth, heads=self.heads,
                        attn_dim_head=self.attn_dim_head, ff_mult=self.ff_mult)
        for name, value in positive.items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.max_seq_len, int) or self.max_seq_len < 0:
            raise ValueError(f"max_seq_len must be a non-negative int, got {self.max_seq_len!r}")
        if self.heads == 1 and self.dim != self.dim_head:
            raise ValueError(
                f"heads=1 makes x-transformers' to_out an identity, so dim ({self.dim}) must equal "
                f"attn_dim_head ({self.dim_head})")
        if self.attn_kv_heads is not None and self.attn_one_kv_head:
            raise ValueError("set either attn_kv_heads or attn_one_kv_head, not both")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be divisible by kv heads ({self.kv_heads})")
        norms = [self.use_rmsnorm, self.use_simple_rmsnorm, self.use_scalenorm]
        if sum(norms) > 1:
            raise ValueError("choose at most one of use_rmsnorm, use_simple_rmsnorm, use_scalenorm")
        if self.alibi_pos_bias and self.rel_pos_bias:
            raise ValueError("choose at most one of alibi_pos_bias and rel_pos_bias")
        if self.sandwich_norm and not self.pre_norm:
            raise ValueError("sandwich_norm requires pre_norm=True")
        if self.attn_flash and (self.rel_pos_bias or self.residual_attn):
            raise ValueError("attn_flash is incompatible with rel_pos_bias and residual_attn")
        if self.attn_qk_norm_dim_scale and not self.attn_qk_norm:
            raise ValueError("attn_qk_norm_dim_scale needs attn_qk_norm=True")
        if self.attn_qk_norm and self.dim_head <= 2:
            raise ValueError("attn_qk_norm needs attn_dim_head > 2")
        if self.attn_num_mem_kv < 0 or self.num_memory_tokens < 0:
            raise ValueError("attn_num_mem_kv and num_memory_tokens must be >= 0")
        if self.emb_dim is not None and self.emb_dim <= 0:
            raise ValueError(f"emb_dim must be positive, got {self.emb_dim}")
        if self.tie_embedding and self.embedding_dim != self.dim:
            raise ValueError("tie_embedding needs emb_dim == dim (the logits reuse the token table)")

    # ---- torch interop ------------------------------------------------------------------------------

    def to_torch_kwargs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(wrapper_kwargs, decoder_kwargs) for TransformerWrapper(**w, attn_layers=Decoder(**d))."""
        wrapper = dict(num_tokens=self.num_tokens, max_seq_len=self.max_seq_len)
        decoder: dict[str, Any] = dict(dim=self.dim, depth=self.depth, heads=self.heads)
        skip = {"num_tokens", "max_seq_len", "dim", "depth", "heads", "dtype", "param_dtype"}
        for field in dataclasses.fields(self):
            if field.name in skip:
                continue
            value = getattr(self, field.name)
            if value == field.default:
                continue
            if field.name in WRAPPER_OPTIONS:
                wrapper[field.name] = value
            else:
                decoder[field.name] = value
        return wrapper, decoder

    def to_json(self) -> str:
        """JSON without the numeric dtypes' objects (they are stored by name)."""
        data = dataclasses.asdict(self)
        data["dtype"] = jnp.dtype(self.dtype).name
        data["param_dtype"] = jnp.dtype(self.param_dtype).name
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TransformerConfig":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields in JSON: {sorted(unknown)}")
        for key in ("dtype", "param_dtype"):
            if key in data:
                data[key] = jnp.dtype(data[key]).type
        return cls(**data)

    def replace(self, **changes) -> "TransformerConfig":
        return dataclasses.replace(self, **changes)

    def same_architecture(self, other: "TransformerConfig") -> bool:
        """Equal up to the numeric dtypes, which do not change the weights' shapes or names."""
        def canonical(config):
            kv_heads = None if config.kv_heads == config.heads else config.kv_heads
            return dataclasses.replace(config, dtype=jnp.float32, param_dtype=jnp.float32,
                                       attn_kv_heads=kv_heads, attn_one_kv_head=False)
        return canonical(self) == canonical(other)
