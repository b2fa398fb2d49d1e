"""Gemma 2 and Gemma 3 (text): one decoder, switched by `GemmaConfig` (see config.py).

`config.py` (GemmaConfig, read from and written to config.json), `model.py` (GemmaForCausalLM) and
`weights.py` (the key table). Loading and saving directories: `dpo_jax.from_pretrained` / `save_pretrained`.
"""

from dpo_jax.models.gemma.config import GemmaConfig
from dpo_jax.models.gemma.model import GemmaForCausalLM
from dpo_jax.models.gemma.weights import parameter_table

__all__ = ["GemmaConfig", "GemmaForCausalLM", "parameter_table"]
