"""PEFT's adapter directory, both ways, without torch: `adapter_config.json` + `adapter_model.safetensors`.

`save_adapter(model, path)` writes what `peft.PeftModel.from_pretrained(base_model, path)` loads with no missing
and no unexpected key; `load_adapter(model, path)` reads such a directory (written by PEFT or by us) onto a base
model. The format (PEFT 0.21, `utils/save_and_load.py`, `tuners/lora/layer.py`):

- keys `base_model.model.<module name>.lora_A.weight` (r, in) and `...lora_B.weight` (out, r): torch nn.Linear
  layouts, the transposes of our A [in, r] and B [r, out]; the module names are the checkpoint's (`apply`);
- config `peft_type: "LORA"`, `r`, `lora_alpha`, `use_rslora` (the scale is lora_alpha / r, or / sqrt(r)),
  `target_modules`, `lora_dropout`, `task_type` ("CAUSAL_LM" for the Hugging Face families), and the defaults of
  everything this port does not implement (`bias: "none"`, `use_dora: false`, no `modules_to_save`, ...).

Loading refuses what it cannot reproduce (DoRA, trained biases, `modules_to_save`, rank or alpha patterns,
`fan_in_fan_out`, layer selections, a `.bin` file) and any adapter key that does not belong to a targeted layer:
a misnamed file never loads as an adapter that silently does nothing.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from dpo_jax.models.lora.adapter import LoraAdapter
from dpo_jax.models.lora.apply import (adapters, attach_adapter, checkpoint_module_names, has_adapters, lora_settings,
                                       module_at, select_targets)
from dpo_jax.models.lora.config import ALL_LINEAR, LoraConfig

__all__ = ["ADAPTER_CONFIG_FILE", "ADAPTER_WEIGHTS_FILE", "KEY_PREFIX", "save_adapter", "load_adapter",
           "read_adapter_config", "adapter_state_dict"]

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
SAFETENSORS_METADATA = {"format": "pt"}
# PEFT options this port does not implement, with the value that means "off" (written as such, refused otherwise)
UNSUPPORTED_OPTIONS = {"use_dora": False, "bias": "none", "fan_in_fan_out": False, "modules_to_save": None,
                       "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None, "layers_pattern": None,
                       "target_parameters": None, "lora_bias": False, "use_qalora": False, "use_bdlora": None,
                       "trainable_token_indices": None, "layer_replication": None, "megatron_config": None,
                       "alora_invocation_tokens": None}
# initialisations that rewrite the base weights (W <- W - s B A): the adapter-off model is then not the base
BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "eva", "lora_ga")


def _is_off(value, off) -> bool:
    """`value` means the option is off: equal to its off value, or empty / false / null where that one is too."""
    return value == off or (not value and not off)


def _keys(name: str) -> tuple[str, str]:
    return f"{KEY_PREFIX}{name}.lora_A.weight", f"{KEY_PREFIX}{name}.lora_B.weight"


def _host(value) -> np.ndarray:
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        from jax.experimental import multihost_utils

        value = multihost_utils.process_allgather(value, tiled=True)
    return np.asarray(jax.device_get(value))


def adapter_state_dict(model) -> dict[str, np.ndarray]:
    """PEFT's adapter state_dict of `model` (torch layouts, the adapters' dtype) as numpy arrays."""
    tensors = {}
    for name, adapter in adapters(model):
        a_key, b_key = _keys(name)
        tensors[a_key] = np.ascontiguousarray(_host(adapter.a.get_value()).T)
        tensors[b_key] = np.ascontiguousarray(_host(adapter.b.get_value()).T)
    return tensors


def _target_modules(model, adapted: list[str]) -> list[str]:
    """The layers' short names ("q_proj") when they select exactly the adapted layers of a Hugging Face family
    (whose layer names are unique per role), else every adapted layer's full name (exact in PEFT too)."""
    from dpo_jax.models.pretrained import family_of

    try:
        family_of(model)
    except TypeError:
        return sorted(adapted)
    short = sorted({name.rsplit(".", 1)[-1] for name in adapted})
    selected = {name for name in checkpoint_module_names(model).values() if name.rsplit(".", 1)[-1] in short}
    return short if selected == set(adapted) else sorted(adapted)


def _write_json(path: str, data: dict) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(temporary, path)


def save_adapter(model, path, *, base_model_name_or_path: str | None = None) -> str:
    """Write `model`'s adapters as a PEFT directory (see the module docstring); returns the directory.

    `base_model_name_or_path` defaults to the directory the base was read from (Hugging Face families). On
    several processes every process must call it (sharded adapters are gathered); only process 0 writes.
    """
    if not has_adapters(model):
        raise ValueError("the model has no LoRA adapters to save (dpo_jax.apply_lora or load_adapter adds them)")
    settings = lora_settings(model)
    tensors = adapter_state_dict(model)
    if jax.process_index() != 0:
        return os.fspath(path)
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    from dpo_jax.models.pretrained import family_of

    try:
        family_of(model)
        task_type = "CAUSAL_LM"
    except TypeError:
        task_type = None  # a torch TransformerWrapper is wrapped by the plain PeftModel
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "name_or_path", None)
    names = [name for name, _ in adapters(model)]
    config = {"peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model_name_or_path,
              "r": settings["r"], "lora_alpha": settings["alpha"], "use_rslora": settings["use_rslora"],
              "lora_dropout": settings["dropout"], "target_modules": _target_modules(model, names),
              "exclude_modules": None, "init_lora_weights": True, "inference_mode": True, "revision": None,
              **UNSUPPORTED_OPTIONS}
    temporary = os.path.join(path, ADAPTER_WEIGHTS_FILE + ".tmp")
    save_file(tensors, temporary, metadata=SAFETENSORS_METADATA)
    os.replace(temporary, os.path.join(path, ADAPTER_WEIGHTS_FILE))
    _write_json(os.path.join(path, ADAPTER_CONFIG_FILE), config)
    return path


def read_adapter_config(path) -> dict:
    """adapter_config.json of a PEFT directory, checked for options this port does not implement."""
    path = os.fspath(path)
    file = os.path.join(path, ADAPTER_CONFIG_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path} is not a PEFT adapter directory: {ADAPTER_CONFIG_FILE} is missing")
    with open(file) as handle:
        try:
            config = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: invalid JSON ({err.msg} at line {err.lineno})") from None
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{file}: peft_type {config.get('peft_type')!r} is not implemented (only 'LORA')")
    for key, off in UNSUPPORTED_OPTIONS.items():
        if key in config and not _is_off(config[key], off):
            raise ValueError(f"{file}: {key}={config[key]!r} is not implemented by dpo_jax's LoRA")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(BASE_REWRITING_INITS):
        raise ValueError(f"{file}: init_lora_weights={init!r} rewrites the base weights, so the base this adapter "
                         "needs is not the original checkpoint; merge it with peft and train a fresh adapter")
    for key in ("r", "lora_alpha"):
        if key not in config:
            raise ValueError(f"{file}: {key} is missing")
    return config


def _config_of(adapter_config: dict) -> LoraConfig:
    targets = adapter_config.get("target_modules")
    if targets is None:
        raise ValueError("adapter_config.json has no target_modules (PEFT's per-architecture defaults are not read)")
    exclude = adapter_config.get("exclude_modules") or ()
    targets = targets if isinstance(targets, str) else tuple(targets)
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        targets = ALL_LINEAR
    return LoraConfig(r=int(adapter_config["r"]), alpha=float(adapter_config["lora_alpha"]), target_modules=targets,
                      exclude=exclude if isinstance(exclude, str) else tuple(exclude),
                      dropout=float(adapter_config.get("lora_dropout") or 0.0),
                      use_rslora=bool(adapter_config.get("use_rslora", False)))


def load_adapter(model, path):
    """A copy of `model` (same base arrays) carrying the adapters of the PEFT directory `path` (float32).

    Every layer the directory's `target_modules` selects must have its lora_A / lora_B tensors in the file, with
    the shapes of the layer and rank, and the file must hold no other tensor; else ValueError naming the keys.
    """
    path = os.fspath(path)
    adapter_config = read_adapter_config(path)
    weights = os.path.join(path, ADAPTER_WEIGHTS_FILE)
    if not os.path.isfile(weights):
        legacy = os.path.isfile(os.path.join(path, "adapter_model.bin"))
        raise FileNotFoundError(f"{path}: {ADAPTER_WEIGHTS_FILE} is missing" + (
            " (only safetensors is read: convert adapter_model.bin once with peft)" if legacy else ""))
    if has_adapters(model):
        raise ValueError("the model already has LoRA adapters; load the directory onto the base model")
    config = _config_of(adapter_config)
    targets = select_targets(model, config)
    with safe_open(weights, framework="numpy") as handle:
        stored = set(handle.keys())
        expected = {key for _, name in targets for key in _keys(name)}
        missing, unexpected = sorted(expected - stored), sorted(stored - expected)
        if missing or unexpected:
            raise ValueError(f"{weights} does not match the layers its adapter_config.json targets on "
                             f"{type(model).__name__}: missing {missing[:6]}{' ...' if len(missing) > 6 else ''} "
                             f"({len(missing)}), unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''} "
                             f"({len(unexpected)})")
        loaded = nnx.clone(model)
        for path_, name in targets:
            layer = module_at(loaded, path_)
            in_features, out_features = layer.kernel.get_value().shape
            a_key, b_key = _keys(name)
            a, b = handle.get_tensor(a_key), handle.get_tensor(b_key)
            if a.shape != (config.r, in_features) or b.shape != (out_features, config.r):
                raise ValueError(f"{name}: lora_A {a.shape} / lora_B {b.shape}, expected ({config.r}, {in_features})"
                                 f" / ({out_features}, {config.r}) for r={config.r} on this layer")
            adapter = LoraAdapter(in_features, out_features, rank=config.r, alpha=config.alpha,
                                  use_rslora=config.use_rslora, dropout=config.dropout)
            adapter.a.set_value(jnp.asarray(np.asarray(a, np.float32).T))
            adapter.b.set_value(jnp.asarray(np.asarray(b, np.float32).T))
            attach_adapter(layer, adapter)
    return loaded
