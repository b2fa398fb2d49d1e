"""The Flax NNX port of x-transformers' decoder-only `TransformerWrapper`, and its conversions.

`config.py` (TransformerConfig, x-transformers' own option names), `model.py` (Transformer), `attention.py`,
`layers.py` and `positional.py` (x-transformers' numerics), `introspect.py` (read a live torch module's
options), `weights.py` (one key table for both directions: state dicts, from_torch / to_torch) and
`safetensors_file.py` (self-describing files in x-transformers key names). torch and x-transformers are
imported only inside the functions that convert, so this package imports without them.
"""

from dpo_jax.models.x_transformers.config import TransformerConfig
from dpo_jax.models.x_transformers.introspect import config_from_torch
from dpo_jax.models.x_transformers.model import Transformer
from dpo_jax.models.x_transformers.safetensors_file import load_safetensors, save_safetensors
from dpo_jax.models.x_transformers.weights import (build_torch_model, from_torch, model_from_state_dict,
                                                   parameter_table, state_dict_from_model, to_torch,
                                                   verify_against_torch)

__all__ = ["TransformerConfig", "Transformer", "config_from_torch", "from_torch", "to_torch", "build_torch_model",
           "state_dict_from_model", "model_from_state_dict", "parameter_table", "verify_against_torch",
           "save_safetensors", "load_safetensors"]
