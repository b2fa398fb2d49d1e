"""Llama 2 / 3.x, Mistral, Qwen2 and Qwen3 (dense): one decoder, switched by `LlamaConfig` (see config.py).

`config.py` (LlamaConfig, read from and written to config.json), `model.py` (LlamaForCausalLM) and
`weights.py` (the key table). Loading and saving directories: `dpo_jax.from_pretrained` / `save_pretrained`.
"""

from dpo_jax.models.llama.config import LlamaConfig
from dpo_jax.models.llama.model import LlamaForCausalLM
from dpo_jax.models.llama.weights import parameter_table

__all__ = ["LlamaConfig", "LlamaForCausalLM", "parameter_table"]
