"""The tokenizer of a Hugging Face model directory: `tokenizer.json`, and which ids are pad, eos and bos.

The ids come from the first file that names them, in the order transformers gives them weight:
`tokenizer_config.json` (`pad_token`, `eos_token`, `bos_token`: a string or an `{"content": ...}` object, looked up
in the vocabulary), then `generation_config.json` and `config.json` (`pad_token_id`, `eos_token_id`,
`bos_token_id`; a list of eos ids gives its first). A token named in a file but absent from the vocabulary is
an error naming the file. Without a pad id, eos pads (padding is masked out). Chat templates are not read here.
"""

from __future__ import annotations

import json
import os

from dpo_jax.tokenizer import HFTokenizer

__all__ = ["load_model_tokenizer", "TOKENIZER_FILE"]

TOKENIZER_FILE = "tokenizer.json"
ROLES = ("pad", "eos", "bos")


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from None
    return data if isinstance(data, dict) else {}


def _token_ids(backend, tokenizer_json: str, config_path: str) -> dict[str, int]:
    """pad / eos / bos ids named as tokens by tokenizer_config.json."""
    config = _read_json(config_path)
    ids = {}
    for role in ROLES:
        token = config.get(f"{role}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if not isinstance(token, str):
            continue
        found = backend.token_to_id(token)
        if found is None:
            raise ValueError(f"{config_path}: {role}_token {token!r} is not in the vocabulary of {tokenizer_json}")
        ids[role] = int(found)
    return ids


def _config_ids(path: str) -> dict[str, int]:
    """pad / eos / bos ids given as numbers (generation_config.json, config.json)."""
    data = _read_json(path)
    ids = {}
    for role in ROLES:
        value = data.get(f"{role}_token_id")
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool):
            ids[role] = value
    return ids


def load_model_tokenizer(model_dir, *, tokenizer_file=None) -> HFTokenizer:
    """An `HFTokenizer` for the model directory (see the module docstring); `tokenizer_file` replaces its
    tokenizer.json (the special ids are still read from the directory)."""
    model_dir = os.fspath(model_dir)
    tokenizer_json = os.fspath(tokenizer_file) if tokenizer_file is not None else os.path.join(model_dir, TOKENIZER_FILE)
    if not os.path.isfile(tokenizer_json):
        raise FileNotFoundError(f"{model_dir} has no {TOKENIZER_FILE}; pass a tokenizer file (--tokenizer FILE)")
    try:
        import tokenizers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("a model directory's tokenizer needs the Hugging Face `tokenizers` package: "
                          "pip install 'dpo-jax[tokenizers]'") from err
    backend = tokenizers.Tokenizer.from_file(tokenizer_json)
    ids: dict[str, int] = {}
    sources = (_token_ids(backend, tokenizer_json, os.path.join(model_dir, "tokenizer_config.json")),
               _config_ids(os.path.join(model_dir, "generation_config.json")),
               _config_ids(os.path.join(model_dir, "config.json")))
    for found in sources:
        for role, value in found.items():
            ids.setdefault(role, value)
    if "eos" not in ids:  # the special-token names HFTokenizer knows, or its error naming them
        return HFTokenizer.from_file(tokenizer_json, pad_id=ids.get("pad"), bos_id=ids.get("bos"))
    return HFTokenizer(backend, pad_id=ids.get("pad", ids["eos"]), eos_id=ids["eos"], source=tokenizer_json,
                       bos_id=ids.get("bos"))
