"""The Llama-family key table: transformers' state_dict names <-> LlamaForCausalLM's parameters.

The single place that knows the mapping; loading (`models.pretrained`, on disk or from a live transformers
model) and saving go through it in both directions.
"""

from __future__ import annotations

from dpo_jax.models.hf.key_table import KeyRow, attention_rows, mlp_rows, norm_row
from dpo_jax.models.llama.model import LlamaForCausalLM

__all__ = ["parameter_table"]


def parameter_table(model: LlamaForCausalLM) -> list[KeyRow]:
    """(transformers key, Param, transpose?) for every parameter, in transformers' order."""
    rows = [KeyRow("model.embed_tokens.weight", model.embed_tokens.weight, False)]
    for index, layer in enumerate(model.layers):
        prefix = f"model.layers.{index}"
        rows.append(norm_row(f"{prefix}.input_layernorm", layer.input_layernorm))
        rows += attention_rows(f"{prefix}.self_attn", layer.self_attn)
        rows.append(norm_row(f"{prefix}.post_attention_layernorm", layer.post_attention_layernorm))
        rows += mlp_rows(f"{prefix}.mlp", layer.mlp)
    rows.append(norm_row("model.norm", model.norm))
    if model.lm_head is not None:
        rows.append(KeyRow("lm_head.weight", model.lm_head.kernel, True))
    return rows
