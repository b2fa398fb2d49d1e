"""LoRA contenders: DPO that trains rank-16 adapters on every linear layer but the output head (alpha 32), the
reference the adapter-off base (no second copy), beside the full-DPO contenders on the same model and batch.

- `dpo_jax_lora`: `dpo_jax.apply_lora` on the seed-built port, the library's own train step (`jax_steps`'s
  `library_step`: the state holds the adapters and their Adam moments, the base is read, never donated);
- `dpo_torch_lora`: `peft.get_peft_model` on the seed-built TransformerWrapper (the same layers adapted, named
  by their state_dict names), `dpo_torch.DPO(peft_model)` (the adapter-off reference) and AdamW on
  `dpo.parameters()` (the adapters only).

Both record `trainable_params`, so a table shows that the two faces train the same adapters.
"""

from __future__ import annotations

from benchmarks.contenders.inputs import PAD_ID
from benchmarks.contenders.jax_steps import library_step, padded_arrays, train_config
from benchmarks.contenders.registry import contender
from benchmarks.contenders.torch_steps import _torch_train_step

RANK, ALPHA = 16, 32
OUTPUT_HEAD = "to_logits"  # x-transformers' output projection: not adapted (the log-prob head reads its weight)


def peft_available() -> str | None:
    """None when peft imports, else why dpo_torch_lora cannot run (the GPU suite lists it as skipped)."""
    try:
        import peft  # noqa: F401
    except ImportError as error:
        return f"peft is not installed ({error}); benchmarks/gpu_wheels.txt lists it"
    return None


def torch_linear_targets(model) -> list[str]:
    """The state_dict names of every nn.Linear but the output head: "all-linear" as dpo_jax applies it to the port
    (PEFT's own "all-linear" works on transformers models only)."""
    import torch
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name != OUTPUT_HEAD]


@contender("dpo_jax_lora", framework="jax")
def dpo_jax_lora(setup, batch, config):
    """The default dpo_jax path with LoRA adapters: the reference is the adapter-off view of the same base."""
    import dpo_jax
    from dpo_jax.models.lora import adapter_pairs

    options = train_config(config)
    setup.jax_model = dpo_jax.apply_lora(setup.jax_model, dpo_jax.LoraConfig(r=RANK, alpha=ALPHA))
    trainable = sum(a.size + b.size for _, a, b in adapter_pairs(setup.jax_model))
    step = library_step(setup, padded_arrays(batch, options.forward), options)
    step.info = {"trainable_params": int(trainable), "lora_rank": RANK}
    return step


@contender("dpo_torch_lora", framework="torch", preload=("peft",))
def dpo_torch_lora(setup, batch, config):
    """`dpo_torch.DPO` on a peft-wrapped model: the adapter-off reference, AdamW on the adapters only."""
    import peft
    from dpo_torch import DPO

    targets = torch_linear_targets(setup.torch_model)
    model = peft.get_peft_model(setup.torch_model, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets))
    dpo = DPO(model, beta=config.beta, pad_id=PAD_ID)
    step = _torch_train_step(dpo, setup, batch)
    step.info = {"trainable_params": int(sum(p.numel() for p in dpo.parameters())), "lora_rank": RANK}
    return step
