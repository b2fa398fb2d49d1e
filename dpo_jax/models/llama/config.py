"""LlamaConfig: one decoder for Llama 2 / 3.x, Mistral, Qwen2 and Qwen3 (dense), read from a config.json.

Field names are transformers' config.json names, so a config reads like the checkpoint's. The four model
types share one decoder (pre-norm RMSNorm blocks, rotary GQA attention, a gated MLP) and differ only in
switches the model reads off this config:

| model_type | q/k/v bias | o bias | q/k norm | sliding window | config keys of its own |
|---|---|---|---|---|---|
| llama   | attention_bias | attention_bias | - | - | mlp_bias, rope_scaling "llama3" / "linear" |
| mistral | - | - | - | every layer (`sliding_window`, null: none) | |
| qwen2   | always | - | - | layers typed "sliding_attention" | use_sliding_window, max_window_layers, layer_types |
| qwen3   | attention_bias | attention_bias | RMSNorm per head | as qwen2 | head_dim |

`from_hf(config_dict)` refuses (`UnsupportedCheckpointError`) any key or value this port does not implement;
absent keys take the defaults of transformers' own config classes (5.24), which is what transformers would
build from the same file.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

from dpo_jax.models.hf.config_reader import ConfigReader, metadata_dict
from dpo_jax.models.hf.layers import ACTIVATIONS
from dpo_jax.models.hf.rope import RopeSpec, rope_from_config

__all__ = ["LlamaConfig", "MODEL_TYPES", "ARCHITECTURES"]

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM"}
LAYER_TYPES = ("full_attention", "sliding_attention")
# transformers' class defaults for keys a config.json may omit
DEFAULTS = {
    "llama": dict(max_position_embeddings=2048, num_key_value_heads=None, head_dim=None, sliding_window=None),
    "mistral": dict(max_position_embeddings=4096 * 32, num_key_value_heads=8, head_dim=None, sliding_window=4096),
    "qwen2": dict(max_position_embeddings=32768, num_key_value_heads=32, head_dim=None, sliding_window=4096),
    "qwen3": dict(max_position_embeddings=32768, num_key_value_heads=32, head_dim=128, sliding_window=4096),
}
QWEN_MAX_WINDOW_LAYERS = 28


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None   # None: num_attention_heads (multi-head attention)
    head_dim: int | None = None              # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope: RopeSpec = RopeSpec()
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None        # mistral: every layer; qwen: the "sliding_attention" layers
    layer_types: tuple[str, ...] | None = None  # qwen2/qwen3 only (None there: every layer "full_attention")
    max_window_layers: int = QWEN_MAX_WINDOW_LAYERS  # qwen bookkeeping (layer_types derive from it)
    model_type: str = "llama"
    # numerics (not config.json keys): compute dtype and stored parameter dtype
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    # what the checkpoint carried beyond the architecture (token ids, generation defaults), written back on save
    metadata: tuple[tuple[str, str], ...] = dataclasses.field(default=(), compare=False)
    name_or_path: str | None = dataclasses.field(default=None, compare=False)  # the directory it was read from

    def __post_init__(self):
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None and isinstance(self.num_attention_heads, int) and self.num_attention_heads > 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.layer_types is None and self.model_type in ("qwen2", "qwen3") and isinstance(self.num_hidden_layers, int):
            object.__setattr__(self, "layer_types", ("full_attention",) * self.num_hidden_layers)
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        self.validate()

    def validate(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not a Llama-family type; expected one of "
                             f"{MODEL_TYPES}")
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
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not implemented; expected one of {sorted(ACTIVATIONS)}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        if self.sliding_window is not None and (isinstance(self.sliding_window, bool)
                                                or not isinstance(self.sliding_window, int) or self.sliding_window < 1):
            raise ValueError(f"sliding_window must be a positive int or None, got {self.sliding_window!r}")
        qwen = self.model_type in ("qwen2", "qwen3")
        if self.model_type == "llama" and self.sliding_window is not None:
            raise ValueError("model_type 'llama' has no sliding window (use 'mistral' or a qwen type)")
        if self.model_type != "llama" and (self.mlp_bias or self.rope.rope_type == "llama3"):
            raise ValueError(f"mlp_bias and rope type 'llama3' are Llama options, not {self.model_type!r} ones")
        if self.model_type in ("mistral", "qwen2") and self.attention_bias:
            raise ValueError(f"model_type {self.model_type!r} has no attention_bias option (qwen2's q/k/v biases are "
                             "always on, mistral has none)")
        if self.layer_types is not None:
            if not qwen:
                raise ValueError(f"layer_types is a qwen2/qwen3 option, not a {self.model_type!r} one")
            if len(self.layer_types) != self.num_hidden_layers or set(self.layer_types) - set(LAYER_TYPES):
                raise ValueError(f"layer_types must name one of {LAYER_TYPES} for each of the "
                                 f"{self.num_hidden_layers} layers, got {self.layer_types}")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise ValueError("layer_types has 'sliding_attention' layers but sliding_window is None "
                                 "(use_sliding_window false)")

    # ---- the switches the decoder reads ------------------------------------------------------------------------

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias or self.model_type == "qwen2"

    @property
    def out_bias(self) -> bool:
        return self.attention_bias

    @property
    def qk_norm(self) -> str | None:
        return "rms" if self.model_type == "qwen3" else None

    @property
    def layer_windows(self) -> tuple[int | None, ...]:
        """The sliding window of each layer (None: full causal attention)."""
        if self.model_type == "mistral":
            return (self.sliding_window,) * self.num_hidden_layers
        types = self.layer_types or ("full_attention",) * self.num_hidden_layers
        return tuple(self.sliding_window if kind == "sliding_attention" else None for kind in types)

    # ---- config.json in both directions ------------------------------------------------------------------------

    @classmethod
    def from_hf(cls, data: dict, **numerics) -> "LlamaConfig":
        """The config of a transformers config.json dict; `numerics` are dtype / param_dtype / name_or_path."""
        model_type = data.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {model_type!r} is not a Llama-family type; expected one of {MODEL_TYPES}")
        reader = ConfigReader(data, "Llama")
        defaults = DEFAULTS[model_type]
        heads = reader.take("num_attention_heads", kind=int)
        max_positions = reader.take("max_position_embeddings", defaults["max_position_embeddings"], kind=int)
        fields = dict(
            model_type=model_type,
            vocab_size=reader.take("vocab_size", kind=int),
            hidden_size=reader.take("hidden_size", kind=int),
            intermediate_size=reader.take("intermediate_size", kind=int),
            num_hidden_layers=reader.take("num_hidden_layers", kind=int),
            num_attention_heads=heads,
            num_key_value_heads=reader.take("num_key_value_heads", defaults["num_key_value_heads"], kind=int),
            head_dim=reader.take("head_dim", defaults["head_dim"], kind=int),
            max_position_embeddings=max_positions,
            rms_norm_eps=reader.take("rms_norm_eps", 1e-6, kind=float),
            rope=rope_from_config(reader, max_position_embeddings=max_positions),
            hidden_act=reader.take("hidden_act", "silu"),
            tie_word_embeddings=bool(reader.take("tie_word_embeddings", False, kind=bool)),
        )
        if fields["hidden_act"] not in ACTIVATIONS:
            reader.refuse("hidden_act", fields["hidden_act"], f"implemented activations are {sorted(ACTIVATIONS)}")
        dropout = reader.take("attention_dropout", 0.0, kind=float)
        if dropout != 0.0:
            reader.refuse("attention_dropout", dropout, "dropout is not implemented (DPO runs without it)")
        if model_type in ("llama", "qwen3"):
            fields["attention_bias"] = bool(reader.take("attention_bias", False, kind=bool))
        if model_type == "llama":
            fields["mlp_bias"] = bool(reader.take("mlp_bias", False, kind=bool))
        elif fields["rope"].rope_type == "llama3":
            reader.refuse("rope_scaling", fields["rope"].scaling_dict(), "'llama3' rope is a Llama option")
        if model_type == "mistral":
            if "layer_types" in reader:
                reader.refuse("layer_types", data["layer_types"], "transformers' Mistral ignores it (Ministral "
                              "checkpoints alternate windows; they are not ported)")
            fields["sliding_window"] = reader.take("sliding_window", defaults["sliding_window"], kind=int)
        if model_type in ("qwen2", "qwen3"):
            fields.update(_qwen_windows(reader, fields["num_hidden_layers"], defaults["sliding_window"]))
        metadata = reader.finish()
        try:
            return cls(**fields, metadata=metadata, **numerics)
        except ValueError as err:
            raise ValueError(f"config.json: {err}") from None

    def to_hf(self) -> dict:
        """The config.json dict (the older `rope_theta` / `rope_scaling` form, which transformers 4 and 5 read)."""
        data = metadata_dict(self.metadata)
        data.update(
            model_type=self.model_type, vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim, max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps, rope_theta=self.rope.theta, rope_scaling=self.rope.scaling_dict(),
            hidden_act=self.hidden_act, tie_word_embeddings=self.tie_word_embeddings, attention_dropout=0.0)
        data.setdefault("architectures", [ARCHITECTURES[self.model_type]])
        if self.model_type == "qwen2" and self.head_dim == self.hidden_size // self.num_attention_heads:
            del data["head_dim"]  # not a Qwen2Config field: transformers derives it
        if self.model_type in ("llama", "qwen3"):
            data["attention_bias"] = self.attention_bias
        if self.model_type == "llama":
            data["mlp_bias"] = self.mlp_bias
        if self.model_type == "mistral":
            data["sliding_window"] = self.sliding_window
        if self.model_type in ("qwen2", "qwen3"):
            data.update(use_sliding_window=self.sliding_window is not None, sliding_window=self.sliding_window,
                        max_window_layers=self.max_window_layers,
                        layer_types=list(self.layer_types))
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_hf(), sort_keys=True)

    def replace(self, **changes) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)


def _qwen_windows(reader: ConfigReader, num_layers: int, default_window: int) -> dict:
    """transformers' Qwen2/Qwen3 rule: windows only with use_sliding_window, on layers >= max_window_layers
    unless layer_types names them."""
    use = reader.take("use_sliding_window", False, kind=bool)
    window = reader.take("sliding_window", default_window, kind=int)
    max_window_layers = reader.take("max_window_layers", QWEN_MAX_WINDOW_LAYERS, kind=int)
    window = window if use else None
    layer_types = reader.take("layer_types", None)
    if layer_types is None:
        layer_types = ["sliding_attention" if window is not None and i >= max_window_layers else "full_attention"
                       for i in range(num_layers)]
    if not isinstance(layer_types, list) or set(layer_types) - set(LAYER_TYPES):
        reader.refuse("layer_types", layer_types, f"expected a list of {LAYER_TYPES}")
    return dict(sliding_window=window, layer_types=tuple(layer_types), max_window_layers=max_window_layers)
