"""GemmaConfig: Gemma 2 and Gemma 3 (text) decoders, read from a config.json.

Field names are transformers' config.json names. Both types share one decoder (sandwich-normed blocks with
Gemma's `x * (1 + w)` RMSNorm, embeddings scaled by sqrt(hidden_size), queries scaled by
`query_pre_attn_scalar ** -0.5`, a tanh-approximated GELU gated MLP, tied embeddings by default) and differ in
switches the model reads off this config:

| model_type | attention softcap | final-logit softcap | q/k norm | rope |
|---|---|---|---|---|
| gemma2      | attn_logit_softcapping | final_logit_softcapping | - | one (`rope_theta`) |
| gemma3_text | - (transformers' Gemma 3 does not apply it) | final_logit_softcapping | Gemma RMSNorm per head | global (`rope_theta`, `rope_scaling`) on full layers, local (`rope_local_base_freq`) on sliding layers |

Layers are typed "sliding_attention" (window `sliding_window`) or "full_attention" (`layer_types`; absent:
Gemma 2 alternates starting with sliding, Gemma 3 has every `sliding_window_pattern`-th layer full).
`from_hf` refuses what this port does not implement (bidirectional attention, the multimodal `gemma3`
checkpoints, rope types beyond default / linear / llama3, ...); absent keys take transformers' class defaults.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

from dpo_jax.models.hf.config_reader import ConfigReader, metadata_dict
from dpo_jax.models.hf.layers import ACTIVATIONS
from dpo_jax.models.hf.rope import RopeSpec, rope_from_config, rope_from_params

__all__ = ["GemmaConfig", "MODEL_TYPES", "ARCHITECTURES"]

MODEL_TYPES = ("gemma2", "gemma3_text")
ARCHITECTURES = {"gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
LAYER_TYPES = ("full_attention", "sliding_attention")
DEFAULTS = {
    "gemma2": dict(max_position_embeddings=8192, attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    "gemma3_text": dict(max_position_embeddings=131072, attn_logit_softcapping=None, final_logit_softcapping=None),
}
GEMMA3_GLOBAL_THETA, GEMMA3_LOCAL_THETA, GEMMA3_PATTERN = 1_000_000.0, 10_000.0, 6


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int = 4
    head_dim: int = 256
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-6
    hidden_activation: str = "gelu_pytorch_tanh"
    query_pre_attn_scalar: float = 256
    sliding_window: int | None = 4096
    layer_types: tuple[str, ...] | None = None      # None: the model type's default pattern
    attn_logit_softcapping: float | None = None     # applied by Gemma 2 only (as in transformers)
    final_logit_softcapping: float | None = None
    rope: RopeSpec = RopeSpec()                     # Gemma 2: every layer; Gemma 3: the full-attention layers
    local_rope: RopeSpec = RopeSpec(theta=GEMMA3_LOCAL_THETA)  # Gemma 3's sliding layers
    attention_bias: bool = False
    tie_word_embeddings: bool = True
    model_type: str = "gemma2"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    metadata: tuple[tuple[str, str], ...] = dataclasses.field(default=(), compare=False)
    name_or_path: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        if self.layer_types is None:
            if self.model_type == "gemma2":
                types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(self.num_hidden_layers)]
            else:
                types = ["sliding_attention" if (i + 1) % GEMMA3_PATTERN else "full_attention"
                         for i in range(self.num_hidden_layers)]
            object.__setattr__(self, "layer_types", tuple(types))
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        self.validate()

    def validate(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not a Gemma type; expected one of {MODEL_TYPES}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.hidden_activation not in ACTIVATIONS:
            raise ValueError(f"hidden_activation {self.hidden_activation!r} is not implemented; expected one of "
                             f"{sorted(ACTIVATIONS)}")
        if not self.query_pre_attn_scalar > 0 or not self.rms_norm_eps > 0:
            raise ValueError("query_pre_attn_scalar and rms_norm_eps must be > 0")
        for name in ("attn_logit_softcapping", "final_logit_softcapping"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")
        if len(self.layer_types) != self.num_hidden_layers or set(self.layer_types) - set(LAYER_TYPES):
            raise ValueError(f"layer_types must name one of {LAYER_TYPES} for each of the {self.num_hidden_layers} "
                             f"layers, got {self.layer_types}")
        if "sliding_attention" in self.layer_types and (self.sliding_window is None or self.sliding_window < 1):
            raise ValueError(f"sliding layers need a positive sliding_window, got {self.sliding_window!r}")
        if self.model_type == "gemma2" and self.local_rope != RopeSpec(theta=GEMMA3_LOCAL_THETA):
            raise ValueError("gemma2 has one rope for every layer (`rope`); local_rope is a gemma3_text option")
        if self.local_rope.rope_type != "default":
            raise ValueError("the sliding layers' rope (local_rope) must be the default rope")

    # ---- the switches the decoder reads ------------------------------------------------------------------------

    @property
    def qk_norm(self) -> str | None:
        return "offset_rms" if self.model_type == "gemma3_text" else None

    @property
    def attention_softcap(self) -> float | None:
        return self.attn_logit_softcapping if self.model_type == "gemma2" else None

    @property
    def layer_windows(self) -> tuple[int | None, ...]:
        return tuple(self.sliding_window if kind == "sliding_attention" else None for kind in self.layer_types)

    @property
    def layer_ropes(self) -> tuple[RopeSpec, ...]:
        """The rope of each layer: Gemma 3's sliding layers use the local one."""
        if self.model_type == "gemma2":
            return (self.rope,) * self.num_hidden_layers
        return tuple(self.local_rope if kind == "sliding_attention" else self.rope for kind in self.layer_types)

    # ---- config.json in both directions ------------------------------------------------------------------------

    @classmethod
    def from_hf(cls, data: dict, **numerics) -> "GemmaConfig":
        """The config of a transformers config.json dict; `numerics` are dtype / param_dtype / name_or_path."""
        model_type = data.get("model_type")
        if model_type == "gemma3":
            raise ValueError("model_type 'gemma3' is the multimodal Gemma3ForConditionalGeneration; only the "
                             "text-only Gemma3ForCausalLM ('gemma3_text') is ported")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {model_type!r} is not a Gemma type; expected one of {MODEL_TYPES}")
        reader = ConfigReader(data, "Gemma")
        defaults = DEFAULTS[model_type]
        num_layers = reader.take("num_hidden_layers", kind=int)
        max_positions = reader.take("max_position_embeddings", defaults["max_position_embeddings"], kind=int)
        fields = dict(
            model_type=model_type,
            vocab_size=reader.take("vocab_size", kind=int),
            hidden_size=reader.take("hidden_size", kind=int),
            intermediate_size=reader.take("intermediate_size", kind=int),
            num_hidden_layers=num_layers,
            num_attention_heads=reader.take("num_attention_heads", kind=int),
            num_key_value_heads=reader.take("num_key_value_heads", 4, kind=int),
            head_dim=reader.take("head_dim", 256, kind=int),
            max_position_embeddings=max_positions,
            rms_norm_eps=reader.take("rms_norm_eps", 1e-6, kind=float),
            hidden_activation=reader.take("hidden_activation", "gelu_pytorch_tanh"),
            query_pre_attn_scalar=reader.take("query_pre_attn_scalar", 256, kind=float),
            sliding_window=reader.take("sliding_window", 4096, kind=int),
            attn_logit_softcapping=reader.take("attn_logit_softcapping", defaults["attn_logit_softcapping"],
                                               kind=float),
            final_logit_softcapping=reader.take("final_logit_softcapping", defaults["final_logit_softcapping"],
                                                kind=float),
            attention_bias=bool(reader.take("attention_bias", False, kind=bool)),
            tie_word_embeddings=bool(reader.take("tie_word_embeddings", True, kind=bool)),
        )
        reader.take("hidden_act", None)  # transformers' Gemma models read hidden_activation only
        if fields["hidden_activation"] not in ACTIVATIONS:
            reader.refuse("hidden_activation", fields["hidden_activation"],
                          f"implemented activations are {sorted(ACTIVATIONS)}")
        dropout = reader.take("attention_dropout", 0.0, kind=float)
        if dropout not in (None, 0.0):
            reader.refuse("attention_dropout", dropout, "dropout is not implemented (DPO runs without it)")
        bidirectional = reader.take("use_bidirectional_attention", None)
        if bidirectional:
            reader.refuse("use_bidirectional_attention", bidirectional, "only causal decoders are ported")
        layer_types = reader.take("layer_types", None)
        pattern = reader.take("sliding_window_pattern", GEMMA3_PATTERN, kind=int)
        reader.take("_sliding_window_pattern", None)  # transformers 5 writes it beside layer_types, never reads it
        if layer_types is None and model_type == "gemma3_text":
            layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(num_layers)]
        if layer_types is not None:
            if not isinstance(layer_types, list) or set(layer_types) - set(LAYER_TYPES):
                reader.refuse("layer_types", layer_types, f"expected a list of {LAYER_TYPES}")
            fields["layer_types"] = tuple(layer_types)
        if model_type == "gemma2":
            fields["rope"] = rope_from_config(reader, max_position_embeddings=max_positions)
        else:
            fields["rope"], fields["local_rope"] = _gemma3_ropes(reader, max_positions)
        metadata = reader.finish()
        try:
            return cls(**fields, metadata=metadata, **numerics)
        except ValueError as err:
            raise ValueError(f"config.json: {err}") from None

    def to_hf(self) -> dict:
        """The config.json dict (`rope_theta` / `rope_scaling` / `rope_local_base_freq`, read by transformers 4 and 5)."""
        data = metadata_dict(self.metadata)
        data.update(
            model_type=self.model_type, vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim, max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps, hidden_activation=self.hidden_activation,
            query_pre_attn_scalar=_int_if_whole(self.query_pre_attn_scalar), sliding_window=self.sliding_window,
            layer_types=list(self.layer_types), attn_logit_softcapping=self.attn_logit_softcapping,
            final_logit_softcapping=self.final_logit_softcapping, attention_bias=self.attention_bias,
            tie_word_embeddings=self.tie_word_embeddings, attention_dropout=0.0,
            rope_theta=self.rope.theta, rope_scaling=self.rope.scaling_dict())
        if self.model_type == "gemma3_text":
            data["rope_local_base_freq"] = self.local_rope.theta
        data.setdefault("architectures", [ARCHITECTURES[self.model_type]])
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_hf(), sort_keys=True)

    def replace(self, **changes) -> "GemmaConfig":
        return dataclasses.replace(self, **changes)


def _int_if_whole(value: float):
    return int(value) if float(value).is_integer() else value


def _gemma3_ropes(reader: ConfigReader, max_positions: int) -> tuple[RopeSpec, RopeSpec]:
    """(global, local) ropes from `rope_parameters` {"full_attention", "sliding_attention"} (transformers 5) or
    `rope_theta` + `rope_scaling` (global) and `rope_local_base_freq` (local)."""
    theta = reader.take("rope_theta", GEMMA3_GLOBAL_THETA, kind=float) or GEMMA3_GLOBAL_THETA
    local_theta = reader.take("rope_local_base_freq", GEMMA3_LOCAL_THETA, kind=float) or GEMMA3_LOCAL_THETA
    scaling = reader.take("rope_scaling", None)
    parameters = reader.take("rope_parameters", None) or {}
    if not isinstance(parameters, dict) or set(parameters) - set(LAYER_TYPES):
        reader.refuse("rope_parameters", parameters, f"expected a dict keyed by {LAYER_TYPES}")
    full = dict(parameters.get("full_attention") or {})
    if scaling is not None:
        if not isinstance(scaling, dict):
            reader.refuse("rope_scaling", scaling, "expected a dict")
        full.update(scaling)
    rope = rope_from_params(full, theta=theta, max_position_embeddings=max_positions, reader=reader,
                            key="rope_parameters['full_attention']")
    local = rope_from_params(parameters.get("sliding_attention") or {}, theta=local_theta,
                             max_position_embeddings=max_positions, reader=reader,
                             key="rope_parameters['sliding_attention']")
    if local.rope_type != "default":
        reader.refuse("rope_parameters['sliding_attention']", local.scaling_dict(),
                      "the sliding layers' rope must be the default rope")
    return rope, local
