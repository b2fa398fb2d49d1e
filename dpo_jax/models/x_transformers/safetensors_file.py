"""safetensors files with x-transformers key names, loadable by torch with strict=True.

The config travels in the file's metadata (key "dpo_jax_config") so a file is self-describing.
Writes go to a temporary file in the same folder and are renamed into place, never half-written.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from dpo_jax.models.x_transformers.weights import model_from_state_dict, state_dict_from_model
from dpo_jax.models.x_transformers.config import TransformerConfig

CONFIG_METADATA_KEY = "dpo_jax_config"


def save_safetensors(model, path) -> None:
    """Write the weights (torch layouts, x-transformers names) and the config as JSON metadata."""
    path = os.fspath(path)
    tensors = {key: np.ascontiguousarray(value) for key, value in state_dict_from_model(model).items()}
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".safetensors")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata={CONFIG_METADATA_KEY: model.config.to_json()})
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def load_safetensors(path, config: TransformerConfig | None = None):
    """Load a Transformer; the config comes from the file's metadata unless given."""
    with safe_open(os.fspath(path), framework="numpy") as handle:
        if config is None:
            metadata = handle.metadata() or {}
            if CONFIG_METADATA_KEY not in metadata:
                raise ValueError(f"{path} has no '{CONFIG_METADATA_KEY}' metadata; pass config=")
            config = TransformerConfig.from_json(metadata[CONFIG_METADATA_KEY])
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    return model_from_state_dict(config, state)
