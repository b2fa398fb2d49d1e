"""safetensors files with x-transformers key names, loadable by torch with strict=True.

The config travels in the file's metadata (key "dpo_jax_config") so a file is self-describing, and so does a
sha256 of the tensors (key "dpo_jax_sha256": the format has no checksum of its own, and a file whose tensor bytes
were damaged would otherwise load without a word). Files without it (written by torch or an older dpo-jax) load
unchecked. Writes go to a temporary file in the same folder, with the permissions `open()` gives, and are renamed
into place, never half-written (`dpo_jax.files.atomic_write`).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from dpo_jax.files import atomic_write
from dpo_jax.models.x_transformers.weights import model_from_state_dict, state_dict_from_model
from dpo_jax.models.x_transformers.config import TransformerConfig

CONFIG_METADATA_KEY = "dpo_jax_config"
CHECKSUM_METADATA_KEY = "dpo_jax_sha256"


def tensors_sha256(tensors: dict) -> str:
    """sha256 over the tensors in key order: each key, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = np.ascontiguousarray(tensors[key])
        digest.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def save_safetensors(model, path) -> None:
    """Write the weights (torch layouts, x-transformers names), the config as JSON metadata and their checksum."""
    tensors = {key: np.ascontiguousarray(value) for key, value in state_dict_from_model(model).items()}
    metadata = {CONFIG_METADATA_KEY: model.config.to_json(), CHECKSUM_METADATA_KEY: tensors_sha256(tensors)}
    with atomic_write(path, binary=True) as (_, temporary):
        save_file(tensors, temporary, metadata=metadata)


def load_safetensors(path, config: TransformerConfig | None = None):
    """Load a Transformer; the config comes from the file's metadata unless given. A file that is not
    safetensors, or whose tensors do not match their recorded checksum, is a ValueError naming the path."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such file: {path}")
    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except SafetensorError as err:
        raise ValueError(f"{path} is not a safetensors file or is damaged ({err}); expected a file written by "
                         "dpo_jax.save_safetensors or dpo-jax train (policy.safetensors)") from None
    if config is None:
        if CONFIG_METADATA_KEY not in metadata:
            raise ValueError(f"{path} has no '{CONFIG_METADATA_KEY}' metadata; pass config=")
        config = TransformerConfig.from_json(metadata[CONFIG_METADATA_KEY])
    model = model_from_state_dict(config, state)  # names missing / unexpected keys and wrong shapes first
    expected = metadata.get(CHECKSUM_METADATA_KEY)
    if expected is not None and tensors_sha256(state) != expected:
        raise ValueError(f"{path}: the tensors do not match the file's checksum ({CHECKSUM_METADATA_KEY}): the file "
                         "is corrupt; write it again (or restore it from a checkpoint)")
    return model
