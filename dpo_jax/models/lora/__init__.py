"""LoRA adapters on any model of this project: config, the adapter module, applying / merging, PEFT's file format.

- `config.py`: `LoraConfig` (PEFT's names: r, alpha, target_modules, exclude, dropout, use_rslora; init).
- `adapter.py`: `LoraAdapter` (scale * dropout(x) @ A @ B, A and B `nnx.LoRAParam`) in a linear layer's `lora` slot.
- `apply.py`: which layers a config targets (checkpoint module names, as PEFT sees them), `apply_lora`,
  `merge_lora`, the adapter-off view `without_adapters`, the start-at-zero check.
- `peft_format.py`: `save_adapter` / `load_adapter` (adapter_config.json + adapter_model.safetensors, no torch).
The adapters survive the compute-dtype rebuild of `models.precision` (it re-attaches them by `adapter_layout`).
"""

from dpo_jax.models.lora.adapter import AdapterSpec, LoraAdapter, LoraDropoutKey
from dpo_jax.models.lora.apply import (adapter_layout, adapter_pairs, adapters, apply_lora, attach_adapters,
                                       check_adapters_start_at_zero, checkpoint_module_names, has_adapters,
                                       linear_layers, lora_settings, merge_lora, select_targets, set_dropout_keys,
                                       without_adapters)
from dpo_jax.models.lora.config import ALL_LINEAR, QLORA_REFUSAL, LoraConfig
from dpo_jax.models.lora.peft_format import load_adapter, read_adapter_config, save_adapter

__all__ = ["LoraConfig", "ALL_LINEAR", "QLORA_REFUSAL", "LoraAdapter", "AdapterSpec", "LoraDropoutKey", "apply_lora",
           "merge_lora", "without_adapters", "has_adapters", "adapters", "adapter_pairs", "linear_layers",
           "checkpoint_module_names", "select_targets", "check_adapters_start_at_zero", "adapter_layout",
           "attach_adapters", "set_dropout_keys", "lora_settings", "save_adapter", "load_adapter",
           "read_adapter_config"]
