"""The Gemma key table: transformers' state_dict names <-> GemmaForCausalLM's parameters (both directions)."""

from __future__ import annotations

from dpo_jax.models.gemma.model import GemmaForCausalLM
from dpo_jax.models.hf.key_table import KeyRow, attention_rows, mlp_rows, norm_row

__all__ = ["parameter_table"]

LAYER_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")


def parameter_table(model: GemmaForCausalLM) -> list[KeyRow]:
    """(transformers key, Param, transpose?) for every parameter, in transformers' order."""
    rows = [KeyRow("model.embed_tokens.weight", model.embed_tokens.weight, False)]
    for index, layer in enumerate(model.layers):
        prefix = f"model.layers.{index}"
        rows += attention_rows(f"{prefix}.self_attn", layer.self_attn)
        rows += mlp_rows(f"{prefix}.mlp", layer.mlp)
        rows += [norm_row(f"{prefix}.{name}", getattr(layer, name)) for name in LAYER_NORMS]
    rows.append(norm_row("model.norm", model.norm))
    if model.lm_head is not None:
        rows.append(KeyRow("lm_head.weight", model.lm_head.kernel, True))
    return rows
