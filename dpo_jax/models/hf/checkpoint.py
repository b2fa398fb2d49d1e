"""Hugging Face model directories on disk: config.json, safetensors weights (one file, or shards + index), the
tokenizer files beside them. Reading places each tensor straight onto its device sharding; writing is shard by
shard. No torch, no transformers: safetensors' numpy reader (bfloat16 through ml_dtypes) and JSON.

Reading (`load_weights`): the shard files are visited one at a time; within a file every tensor the key table
names is read and placed. Without a mesh a tensor goes to the default device whole; with a mesh
(`dpo_jax.sharding`: axes data x fsdp, `leaf_spec` rule) `jax.make_array_from_callback` asks for each
device's block, which is read from the memory-mapped file as a slice, so the host holds at most one block
of one tensor beyond what the devices hold. Transposed rows (linear weights) read the transposed slice.

Writing (`write_weights`): tensors are grouped in table order into shards of at most `max_shard_size` bytes
(`model.safetensors` when one is enough, else `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`),
fetched to the host one shard at a time, each file written to a temporary name and renamed. Weight files of an
earlier save in the directory are removed first (transformers prefers `model.safetensors` over an index, so a
stale one would shadow the new shards).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from dpo_jax.files import atomic_write
from dpo_jax.models.hf.config_reader import DTYPE_KEYS, UnsupportedCheckpointError
from dpo_jax.models.hf.key_table import KeyRow, check_keys, hf_shape
from dpo_jax.sharding import leaf_spec

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "INDEX_FILE", "TOKENIZER_FILES", "read_config", "weight_files",
           "stored_dtype", "load_weights", "WeightEntry", "write_weights", "write_config", "copy_tokenizer_files",
           "parse_size", "DEFAULT_MAX_SHARD_SIZE"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# copied by save_pretrained from the directory a model was read from (what transformers and tokenizers read)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")
DEFAULT_MAX_SHARD_SIZE = "5GB"
SAFETENSORS_METADATA = {"format": "pt"}  # what transformers writes and expects
_SIZE_UNITS = {"B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12, "KIB": 2 ** 10, "MIB": 2 ** 20,
               "GIB": 2 ** 30, "TIB": 2 ** 40}


def _directory(path) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path}")
    return path


def read_config(path) -> dict:
    """config.json of a model directory as a dict."""
    file = os.path.join(_directory(path), CONFIG_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory: {CONFIG_FILE} is missing")
    with open(file) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: invalid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def weight_files(path) -> list[str]:
    """The safetensors files of a directory, in the index's order (or the single `model.safetensors`)."""
    path = _directory(path)
    index = os.path.join(path, INDEX_FILE)
    single = os.path.join(path, WEIGHTS_FILE)
    if os.path.isfile(single):  # transformers' own precedence
        return [single]
    if os.path.isfile(index):
        with open(index) as handle:
            weight_map = json.load(handle).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no 'weight_map'")
        names = list(dict.fromkeys(weight_map.values()))
        missing = [name for name in names if not os.path.isfile(os.path.join(path, name))]
        if missing:
            raise FileNotFoundError(f"{index} names shard file(s) that are missing: {missing}")
        return [os.path.join(path, name) for name in names]
    others = sorted(name for name in os.listdir(path) if name.endswith((".bin", ".pt", ".pth", ".ckpt", ".h5",
                                                                       ".msgpack", ".gguf")))
    if others:
        raise UnsupportedCheckpointError(
            f"{path} has weights only as {others[:3]}: dpo_jax reads safetensors (convert once with transformers: "
            "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(new_dir))")
    raise FileNotFoundError(f"{path} has no {WEIGHTS_FILE} and no {INDEX_FILE}")


def stored_dtype(config: dict, files: list[str]):
    """The checkpoint's dtype: config.json's `dtype` / `torch_dtype`, else the first floating tensor's."""
    for key in DTYPE_KEYS:
        name = config.get(key)
        if isinstance(name, str) and name != "auto":
            try:
                dtype = jnp.dtype(name.removeprefix("torch."))
            except TypeError:
                raise ValueError(f"config.json {key!r} = {name!r} is not a dtype") from None
            if jnp.issubdtype(dtype, jnp.floating):
                return dtype
    for file in files:
        with safe_open(file, framework="numpy") as handle:
            for key in handle.keys():
                dtype = _file_dtype(handle.get_slice(key).get_dtype())
                if jnp.issubdtype(dtype, jnp.floating):
                    return dtype
    return jnp.dtype(jnp.float32)


def _file_dtype(name: str):
    names = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
             "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
    if name not in names:
        raise UnsupportedCheckpointError(f"safetensors dtype {name} is not supported")
    return jnp.dtype(names[name])


def _placed(block_reader, shape, dtype, transpose: bool, sharding: NamedSharding | None):
    """One parameter array: whole on the default device, or each device's block read on demand."""
    def read(index):
        block = np.asarray(block_reader(tuple(index[::-1]) if transpose else tuple(index)))
        return (block.T if transpose else block).astype(dtype, copy=False)

    if sharding is None:
        return jnp.asarray(read(tuple(slice(None) for _ in shape)))
    return jax.make_array_from_callback(shape, sharding, read)


def load_weights(path, table: list[KeyRow], *, dtype, mesh: Mesh | None = None, ignored=None) -> None:
    """Set every parameter of `table` from the directory's safetensors files, cast to `dtype`, placed by `mesh`.

    `ignored(keys) -> set` names checkpoint keys to skip (e.g. the lm_head copy of tied embeddings). Missing,
    unexpected or misshapen tensors raise ValueError before anything is read.
    """
    files = weight_files(path)
    rows = {row.key: row for row in table}
    file_keys = []
    for file in files:
        with safe_open(file, framework="numpy") as handle:
            file_keys.append(list(handle.keys()))
    every_key = [key for keys in file_keys for key in keys]
    skipped = set(ignored(every_key)) if ignored is not None else set()
    check_keys(table, every_key, ignored=skipped, source=os.fspath(path))
    fsdp = mesh.shape["fsdp"] if mesh is not None else 1
    dtype = jnp.dtype(dtype)
    for file, keys in zip(files, file_keys):
        with safe_open(file, framework="numpy") as handle:
            for key in keys:
                if key in skipped:
                    continue
                row = rows[key]
                tensor = handle.get_slice(key)
                stored = tuple(tensor.get_shape())
                if stored != hf_shape(row):
                    raise ValueError(f"{file}: {key} has shape {stored}, the config implies {hf_shape(row)}")
                shape = stored[::-1] if row.transpose else stored
                sharding = None if mesh is None else NamedSharding(mesh, leaf_spec(shape, dtype, fsdp))
                row.param.set_value(_placed(tensor.__getitem__, shape, dtype, row.transpose, sharding))


class WeightEntry(NamedTuple):
    """One tensor to write: its key, checkpoint shape and dtype, and how to fetch it to the host (numpy)."""
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fetch: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def parse_size(size) -> int:
    """Bytes from an int or a string such as "5GB" (10**9) or "500MiB" (2**20), as transformers parses them."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        value = int(size)
    else:
        match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(size))
        unit = match.group(2).upper() if match else None
        if match is None or unit not in _SIZE_UNITS and unit != "":
            raise ValueError(f"max_shard_size {size!r}: expected bytes or a size like '5GB' or '500MB'")
        value = int(float(match.group(1)) * _SIZE_UNITS.get(unit, 1))
    if value < 1:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def _shards(entries: list[WeightEntry], limit: int) -> list[list[WeightEntry]]:
    shards, current, size = [], [], 0
    for entry in entries:
        if current and size + entry.nbytes > limit:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry.nbytes
    return shards + ([current] if current else [])


def _atomic_write(directory: str, name: str, write: Callable[[str], None]) -> None:
    """`write(temporary path)`, then renamed to `directory/name` (the permissions `open()` gives: `dpo_jax.files`)."""
    with atomic_write(os.path.join(directory, name), binary=True) as (_, temporary):
        write(temporary)


def _remove_old_weights(directory: str) -> None:
    for name in os.listdir(directory):
        if name == INDEX_FILE or re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors", name):
            os.remove(os.path.join(directory, name))


def write_weights(directory, entries: Iterable[WeightEntry], *, max_shard_size=DEFAULT_MAX_SHARD_SIZE) -> list[str]:
    """Write the tensors as transformers does (see the module docstring); returns the file names written."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    entries = list(entries)
    shards = _shards(entries, parse_size(max_shard_size))
    _remove_old_weights(directory)
    names = ([WEIGHTS_FILE] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, shard in zip(names, shards):
        tensors = {}
        for entry in shard:
            value = np.ascontiguousarray(entry.fetch())
            if tuple(value.shape) != tuple(entry.shape) or value.dtype != np.dtype(entry.dtype):
                raise ValueError(f"{entry.key}: fetched {value.shape} {value.dtype}, expected {entry.shape} "
                                 f"{np.dtype(entry.dtype)}")
            tensors[entry.key] = value
        _atomic_write(directory, name, lambda file: save_file(tensors, file, metadata=SAFETENSORS_METADATA))
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(entry.nbytes for entry in entries)},
                 "weight_map": {entry.key: name for name, shard in zip(names, shards) for entry in shard}}
        write_config(directory, index, INDEX_FILE)
    return names


def write_config(directory, data: dict, name: str = CONFIG_FILE) -> None:
    """A JSON file of the directory, written atomically (indent 2, sorted keys, as transformers writes it)."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"

    def write(file):
        with open(file, "w") as handle:
            handle.write(text)

    _atomic_write(os.fspath(directory), name, write)


def copy_tokenizer_files(source, directory) -> list[str]:
    """Copy the tokenizer / generation files that `source` has into `directory`; returns their names."""
    source, directory = os.fspath(source), os.fspath(directory)
    if os.path.realpath(source) == os.path.realpath(directory):
        return [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(source, name))]
    copied = []
    for name in TOKENIZER_FILES:
        file = os.path.join(source, name)
        if os.path.isfile(file):
            _atomic_write(directory, name, lambda target, file=file: shutil.copyfile(file, target))
            copied.append(name)
    return copied
