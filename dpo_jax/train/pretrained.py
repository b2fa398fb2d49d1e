"""The model side of a run that starts from a Hugging Face directory (`dpo-jax train --model DIR --data FILE`),
and how a run writes its final policy.

`pretrained_task(config, mesh)`: the policy and the reference both start from the checkpoint (loaded once, in
float32 master weights, placed straight onto the mesh's FSDP sharding; the train state copies them), the
tokenizer is the directory's (`pretrained_tokenizer.load_model_tokenizer`; `--tokenizer FILE` replaces its
tokenizer.json), and pairs are truncated to `min(--max-seq-len, max_position_embeddings)` tokens.

`save_policy(policy, run_dir)`: a Hugging Face family policy becomes the directory `hf_policy/` (config,
safetensors, the source's tokenizer files), which `dpo-jax train --model` and transformers both load; an
x-transformers policy is written as before, `policy.safetensors`. A LoRA policy (either kind) writes its adapters
only, as the PEFT directory `adapter/` (`peft.PeftModel.from_pretrained(base, run_dir/adapter)`,
`dpo_jax.load_adapter`, or `dpo-jax train --init-adapter`).

With LoRA (`--lora-r` or `--init-adapter`) the base is loaded in the checkpoint's own dtype: it is never updated,
so it needs no float32 master copy.
"""

from __future__ import annotations

import os

import jax.numpy as jnp

from dpo_jax.models.lora import has_adapters, save_adapter
from dpo_jax.models.pretrained import from_pretrained, save_pretrained
from dpo_jax.models.x_transformers import Transformer
from dpo_jax.models.x_transformers.safetensors_file import save_safetensors
from dpo_jax.pretrained_tokenizer import load_model_tokenizer
from dpo_jax.train.outputs import ADAPTER_DIR, HF_POLICY_DIR, POLICY_FILE

__all__ = ["pretrained_task", "save_policy"]


def pretrained_task(config, mesh):
    """(model, tokenizer, max_len) of a run with `config.model` set: the model is both policy and reference
    (the train state copies it); the run's data loader then reads the pairs with this tokenizer and, for
    conversational data, the directory's chat template."""
    if config.data is None:
        raise ValueError("--model needs --data FILE (the built-in demo trains its own model)")
    if config.init_from:
        raise ValueError("--model and --init-from both say where the policy starts; give one")
    lora = getattr(config, "lora", None) is not None or getattr(config, "init_adapter", None) is not None
    model = from_pretrained(config.model, dtype=None if lora else jnp.float32, mesh=mesh)
    tokenizer = load_model_tokenizer(config.model, tokenizer_file=config.tokenizer)
    if tokenizer.vocab_size > model.vocab_size:
        raise ValueError(f"{config.model}: tokenizer vocabulary {tokenizer.vocab_size} > model vocabulary "
                         f"{model.vocab_size}")
    return model, tokenizer, min(config.max_seq_len, model.max_seq_len)


def save_policy(policy, run_dir) -> str:
    """Write the run's final policy (see the module docstring); returns the path written."""
    if has_adapters(policy):
        return save_adapter(policy, os.path.join(run_dir, ADAPTER_DIR))
    if isinstance(policy, Transformer):
        path = os.path.join(run_dir, POLICY_FILE)
        save_safetensors(policy, path)
        return path
    path = os.path.join(run_dir, HF_POLICY_DIR)
    save_pretrained(policy, path)
    return path
