"""dpo_jax: DPO in JAX/Flax/optax. No torch needed: the PyTorch conversions import torch only when called.

The layers, lowest first (each imports only its own and those below; docs/architecture.md): `ops` (attention,
log-prob head, remat) and `sharding` -> `models` (the contract, the x-transformers port, the Hugging Face
families and `from_pretrained` / `save_pretrained`) -> `logprobs`, `losses`,
`validation`, `forward`, `data` -> `layouts` (padded, prefix-shared, packed) -> `dpo` (dpo_loss, batch_loss) ->
`train` and `demo` -> `cli`. LoRA adapters (`models.lora`): `LoraConfig`, `apply_lora`, `merge_lora`,
`save_adapter` / `load_adapter` (PEFT's directory format); `init_train_state` trains a LoRA policy's adapters only.
"""

from dpo_jax.data import PreferenceExample, collate_pairs, read_preference_data, read_preference_jsonl
from dpo_jax.dpo import ReferenceLogps, batch_loss, dpo_loss, reference_logprobs
from dpo_jax.forward import ForwardOptions
from dpo_jax.layouts import LAYOUTS, get_layout
from dpo_jax.logprobs import scored_mask, sequence_logprobs, token_logprobs
from dpo_jax.losses import DIVERGENCES, LOSS_TYPES, LOSSES, pair_losses, preference_loss
from dpo_jax.models import (CausalLM, HiddenStatesLM, OutputHead, from_pretrained, from_transformers, save_pretrained,
                            with_compute_dtype)
from dpo_jax.models.lora import LoraConfig, apply_lora, load_adapter, merge_lora, save_adapter
from dpo_jax.models.x_transformers import (Transformer, TransformerConfig, build_torch_model, config_from_torch,
                                           from_torch, load_safetensors, model_from_state_dict, save_safetensors,
                                           state_dict_from_model, to_torch)
from dpo_jax.ops import AttentionMask, attend
from dpo_jax.train import RunConfig, TrainConfig, TrainState, init_train_state, make_eval_loss, make_train_step, run

__all__ = [
    # the loss
    "dpo_loss", "batch_loss", "reference_logprobs", "ReferenceLogps", "ForwardOptions",
    "preference_loss", "pair_losses", "LOSSES", "LOSS_TYPES", "DIVERGENCES",
    "scored_mask", "sequence_logprobs", "token_logprobs",
    # models: the contract, precision, the x-transformers port and its torch conversions
    "CausalLM", "HiddenStatesLM", "OutputHead", "with_compute_dtype",
    "from_pretrained", "save_pretrained", "from_transformers",
    "Transformer", "TransformerConfig", "from_torch", "to_torch", "config_from_torch", "build_torch_model",
    "state_dict_from_model", "model_from_state_dict", "save_safetensors", "load_safetensors",
    # LoRA adapters (PEFT's directory format both ways)
    "LoraConfig", "apply_lora", "merge_lora", "save_adapter", "load_adapter",
    # ops a kernel may replace
    "AttentionMask", "attend",
    # batch layouts and data
    "LAYOUTS", "get_layout", "PreferenceExample", "collate_pairs", "read_preference_jsonl", "read_preference_data",
    # training
    "TrainConfig", "TrainState", "init_train_state", "make_train_step", "make_eval_loss", "RunConfig", "run",
]
