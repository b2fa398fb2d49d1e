"""Hugging Face checkpoints by path: the family registry, `from_pretrained` and `save_pretrained`.

A family is registered by the config.json `model_type`s it reads (or, when a config lacks `model_type`, by its
`architectures`); each brings its config class (`from_hf` / `to_hf`), its model class and its key table.

- `from_pretrained(path, *, dtype=None, mesh=None)`: config.json -> the family's config (refusing what the port
  does not implement) -> an abstract model -> every tensor read from the safetensors files through the key
  table, cast to `dtype` (None: the checkpoint's own dtype) and placed on `mesh` (a `jax.sharding.Mesh` with
  axes data x fsdp, or a spec such as "data=2,fsdp=4"; None: the default device) by `dpo_jax.sharding`'s rule.
- `save_pretrained(model, path, *, max_shard_size="5GB", tokenizer_from=None)`: config.json, safetensors
  (sharded above the size) and the tokenizer / generation files of the directory the model was read from: a
  directory `transformers.AutoModelForCausalLM.from_pretrained` loads.
- `from_transformers(hf_model)`, `model_from_state_dict(config, state_dict)`, `state_dict_from_model(model)`:
  the same key tables on in-memory weights (numpy or torch tensors, read without importing torch).

Neither direction imports torch or transformers.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from dpo_jax import sharding
from dpo_jax.models.gemma import GemmaConfig, GemmaForCausalLM
from dpo_jax.models.gemma import config as gemma_config
from dpo_jax.models.gemma.weights import parameter_table as gemma_table
from dpo_jax.models.hf import checkpoint
from dpo_jax.models.hf.config_reader import UnsupportedCheckpointError
from dpo_jax.models.hf.key_table import (KeyRow, hf_shape, host_value, ignored_checkpoint_keys, load_state_dict,
                                         state_dict_from_table)
from dpo_jax.models.llama import LlamaConfig, LlamaForCausalLM
from dpo_jax.models.llama import config as llama_config
from dpo_jax.models.llama.weights import parameter_table as llama_table

__all__ = ["Family", "FAMILIES", "family_of", "config_from_hf", "parameter_table", "from_pretrained",
           "save_pretrained", "from_transformers", "model_from_state_dict", "state_dict_from_model",
           "UnsupportedCheckpointError"]


@dataclasses.dataclass(frozen=True)
class Family:
    """One ported family: the model types and architectures it reads, its config, model and key table."""
    name: str
    model_types: tuple[str, ...]
    architectures: dict[str, str]          # transformers class name -> model_type
    config_type: type
    model_type: type
    parameter_table: Callable[[nnx.Module], list[KeyRow]]


FAMILIES = (
    Family("llama", llama_config.MODEL_TYPES, {v: k for k, v in llama_config.ARCHITECTURES.items()}, LlamaConfig,
           LlamaForCausalLM, llama_table),
    Family("gemma", gemma_config.MODEL_TYPES, {v: k for k, v in gemma_config.ARCHITECTURES.items()}, GemmaConfig,
           GemmaForCausalLM, gemma_table),
)


# model types people try that are deliberately not ported, and why
NOT_PORTED = {
    "gemma3": "it is the multimodal Gemma3ForConditionalGeneration (the text-only Gemma3ForCausalLM is 'gemma3_text')",
    "gemma": "Gemma 1 is not ported (Gemma 2 is 'gemma2', Gemma 3 text is 'gemma3_text')",
    "mixtral": "mixture-of-experts models are not implemented", "qwen2_moe": "mixture-of-experts models are not "
    "implemented", "qwen3_moe": "mixture-of-experts models are not implemented",
    "llama4": "Llama 4 (mixture of experts, multimodal) is not implemented",
}


def _supported() -> str:
    return ", ".join(f"{t} ({f.name})" for f in FAMILIES for t in f.model_types)


def family_of(config_or_model) -> Family:
    """The family of a config.json dict (by model_type, else architectures), a config or a model."""
    if isinstance(config_or_model, dict):
        model_type = config_or_model.get("model_type")
        architectures = config_or_model.get("architectures") or []
        for family in FAMILIES:
            if model_type in family.model_types:
                return family
        if model_type is None:
            for family in FAMILIES:
                if any(name in family.architectures for name in architectures):
                    return family
        why = f": {NOT_PORTED[model_type]}" if model_type in NOT_PORTED else ""
        raise UnsupportedCheckpointError(f"model_type {model_type!r} (architectures {architectures}) is not "
                                         f"ported{why}; supported: {_supported()}")
    for family in FAMILIES:
        if isinstance(config_or_model, (family.config_type, family.model_type)):
            return family
    raise TypeError(f"not a Hugging Face family config or model: {type(config_or_model).__name__}")


def config_from_hf(data: dict, *, dtype=jnp.float32, name_or_path=None):
    """The family config of a config.json dict, computing and storing parameters in `dtype`."""
    family = family_of(data)
    data = dict(data)
    if data.get("model_type") is None:
        data["model_type"] = next(family.architectures[name] for name in data.get("architectures", [])
                                  if name in family.architectures)
    dtype = jnp.dtype(dtype)
    return family.config_type.from_hf(data, dtype=dtype, param_dtype=dtype, name_or_path=name_or_path)


def _abstract_model(config):
    """The model's structure without weights (they are read into it)."""
    family = family_of(config)
    return nnx.eval_shape(lambda: family.model_type(config, rngs=nnx.Rngs(0)))


def parameter_table(model) -> list[KeyRow]:
    """The model's key table (transformers key, Param, transpose)."""
    return family_of(model).parameter_table(model)


def _mesh(mesh):
    if mesh is None or isinstance(mesh, jax.sharding.Mesh):
        return mesh
    return sharding.make_mesh(mesh)


def from_pretrained(path, *, dtype=None, mesh=None):
    """The NNX model of a local Hugging Face directory (see the module docstring); nothing is downloaded."""
    path = os.fspath(path)
    data = checkpoint.read_config(path)
    files = checkpoint.weight_files(path)
    dtype = checkpoint.stored_dtype(data, files) if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    config = config_from_hf(data, dtype=dtype, name_or_path=os.path.abspath(path))
    model = _abstract_model(config)
    checkpoint.load_weights(path, parameter_table(model), dtype=dtype, mesh=_mesh(mesh),
                            ignored=lambda keys: ignored_checkpoint_keys(keys, tied=config.tie_word_embeddings))
    return model


def save_pretrained(model, path, *, max_shard_size=checkpoint.DEFAULT_MAX_SHARD_SIZE, tokenizer_from=None) -> list[str]:
    """Write `model` as a Hugging Face directory; returns the weight files written.

    The tokenizer and generation files are copied from `tokenizer_from` (default: the directory the model was
    read from, if any). On several processes every process must call it (sharded weights are gathered); only
    process 0 writes.
    """
    family = family_of(model)
    table = family.parameter_table(model)
    if jax.process_index() != 0:
        for row in table:
            host_value(row)  # take part in the gathers, in the same order
        return []
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    dtypes = {jnp.dtype(row.param.get_value().dtype) for row in table}
    entries = [checkpoint.WeightEntry(row.key, hf_shape(row), jnp.dtype(row.param.get_value().dtype),
                                      lambda row=row: host_value(row)) for row in table]
    names = checkpoint.write_weights(path, entries, max_shard_size=max_shard_size)
    data = model.config.to_hf()
    for key in checkpoint.DTYPE_KEYS:
        data.pop(key, None)
    data["dtype"] = dtypes.pop().name if len(dtypes) == 1 else "float32"
    checkpoint.write_config(path, data)
    source = tokenizer_from if tokenizer_from is not None else model.config.name_or_path
    if source is not None and os.path.isdir(source):
        checkpoint.copy_tokenizer_files(source, path)
    return names


def model_from_state_dict(config, state_dict):
    """A model with the weights of a transformers state_dict (numpy or torch values), in `config.param_dtype`."""
    model = _abstract_model(config)
    load_state_dict(parameter_table(model), state_dict, dtype=config.param_dtype,
                    ignored=ignored_checkpoint_keys(state_dict.keys(), tied=config.tie_word_embeddings))
    return model


def state_dict_from_model(model) -> dict:
    """transformers' state_dict of `model` as numpy arrays (torch layouts, the parameters' dtypes)."""
    return state_dict_from_table(parameter_table(model))


def from_transformers(hf_model, *, dtype=None):
    """The NNX model of a live transformers causal LM (its config and state_dict), in `dtype` (None: its own)."""
    state_dict = hf_model.state_dict()
    if dtype is None:  # torch.float32 -> "float32" (torch is not imported)
        dtype = jnp.dtype(str(next(iter(state_dict.values())).dtype).removeprefix("torch."))
    config = config_from_hf(hf_model.config.to_dict(), dtype=dtype)
    return model_from_state_dict(config, state_dict)
