"""PEFT-wrapped models in `DPO`: the reference is the same model with its adapters off, not a deep copy.

`peft` is never imported: a PEFT model is recognised by its members (`disable_adapter`, `peft_config`), so
`dpo_torch` imports without it. Mirrors `dpo_jax.models.lora.apply` (`adapter_pairs`,
`check_adapters_start_at_zero`) and `dpo_jax.train.lora` (the adapter-off reference, frozen reference adapters).

- `adapter_pairs(model)`: (module name, lora_A.weight (r, in), lora_B.weight (out, r)) of the trained adapter;
  module names are the base model's (PEFT's `base_model.model.` prefix removed), as in dpo_jax.
- `check_adapters_start_at_zero(model)`: every adapter has exactly one zero factor, so the adapter-off model is
  the initial policy (step 0 gives loss ln 2) and the other factor gets a gradient.
- `reference_forward(model, ref_adapter_name)`: a context in which the model computes the reference: eval mode
  (no dropout) and the adapters off, or the frozen adapter `ref_adapter_name` active (TRL's "ref" adapter when
  continuing an adapter); the trained adapter and the mode are restored after it.
- `trainable_parameters(model)`: the parameters with `requires_grad` (the adapters).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PEFT_PREFIX", "is_peft_model", "trained_adapter", "adapter_pairs", "check_adapters_start_at_zero",
           "reference_forward", "trainable_parameters"]

PEFT_PREFIX = "base_model.model."


def is_peft_model(model) -> bool:
    """Whether `model` is a `peft.PeftModel` (by its members; peft is not imported)."""
    return callable(getattr(model, "disable_adapter", None)) and hasattr(model, "peft_config")


def trained_adapter(model) -> str:
    """The name of the adapter being trained (the active one)."""
    active = model.active_adapter
    if not isinstance(active, str):
        raise ValueError(f"DPO trains one adapter at a time; the PEFT model has several active: {active}")
    return active


def adapter_pairs(model, adapter_name: str | None = None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(module name, lora_A.weight (r, in), lora_B.weight (out, r)) of adapter `adapter_name` (default: the active
    one) in every layer that has it."""
    adapter_name = adapter_name or trained_adapter(model)
    pairs = []
    for name, module in model.named_modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if isinstance(lora_a, torch.nn.ModuleDict) and adapter_name in lora_a:
            pairs.append((name.removeprefix(PEFT_PREFIX), lora_a[adapter_name].weight, lora_b[adapter_name].weight))
    return pairs


@torch.no_grad()
def check_adapters_start_at_zero(model) -> None:
    """ValueError unless every LoRA adapter of the active adapter has exactly one zero factor (the adapted model
    then equals its base, so the adapter-off reference is the initial policy)."""
    pairs = adapter_pairs(model)
    if not pairs:
        raise ValueError("the PEFT model has no LoRA layers (only LoRA adapters are supported)")
    for name, a, b in pairs:
        a_nonzero, b_nonzero = bool(a.ne(0).any()), bool(b.ne(0).any())
        if not a_nonzero and not b_nonzero:
            raise ValueError(f"LoRA adapter {name}: both factors are zero, so neither ever gets a gradient; "
                             "initialise one of them")
        if a_nonzero and b_nonzero:
            raise ValueError(
                f"LoRA adapter {name}: neither factor is zero (B @ A != 0), so the adapter-off base is not the initial "
                "policy and step 0 would not give loss ln 2. To continue training an existing adapter, make a frozen "
                "copy of it the reference: load it a second time as a frozen adapter (peft_model.load_adapter(dir, "
                "adapter_name='ref')) and pass ref_adapter_name='ref'")


@contextlib.contextmanager
def reference_forward(model, ref_adapter_name: str | None = None):
    """The model as the reference (see the module docstring); no gradient is recorded inside."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if ref_adapter_name is None:
                with model.disable_adapter():
                    yield model
            else:
                trained = trained_adapter(model)
                model.set_adapter(ref_adapter_name, inference_mode=True)
                try:
                    yield model
                finally:
                    model.set_adapter(trained)  # active and trainable again; the reference adapter stays frozen
    finally:
        model.train(was_training)


def trainable_parameters(model, recurse: bool = True):
    """The parameters an optimizer should update: those with requires_grad (a PEFT model's adapters)."""
    return (param for param in model.parameters(recurse=recurse) if param.requires_grad)
