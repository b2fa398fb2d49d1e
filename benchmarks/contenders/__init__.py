"""The contenders, one module per family of them; importing this package registers them all.

`registry.py` (the `@contender` decorator and `CONTENDERS`), `inputs.py` (the shared model and batch),
`torch_steps.py` (x_transformers, dpo_torch, dpo_torch_compile), `jax_steps.py` (dpo_jax, dpo_jax_plain,
dpo_jax_precomputed_ref, dpo_jax_xla, dpo_jax_jax_nn: the library's own train step), `layout_steps.py` (prefix
sharing, packing), `head_steps.py` (the loss head alone), `liger_steps.py` (Liger-Kernel's fused linear DPO
loss, CUDA only), `lora_steps.py` (dpo_jax_lora, dpo_torch_lora: rank-16 adapters, the adapter-off reference).
Each module imports only its siblings `registry`, `inputs` and the step helpers it reuses, never this package,
so there is no import circle.
"""

from benchmarks.contenders import (head_steps, jax_steps, layout_steps, liger_steps, lora_steps,  # noqa: F401
                                   torch_steps)  # (register)
from benchmarks.contenders.inputs import PAD_ID, Batch, Setup, make_batch, make_setup
from benchmarks.contenders.registry import CONTENDERS, contender

__all__ = ["CONTENDERS", "contender", "PAD_ID", "Batch", "Setup", "make_batch", "make_setup"]
