"""Models by family behind one written contract (`base.py`); everything above the models speaks only it.

- `base.py`: the contract (`CausalLM`, `HiddenStatesLM`, `OutputHead`).
- `precision.py`: the compute-dtype view of any model (bf16 forward, float32 master weights).
- `validation.py`: host-side input checks every family shares.
- `x_transformers/`: the port of x-transformers' decoder and its torch conversions.
- `llama/` (Llama 2 / 3.x, Mistral, Qwen2, Qwen3) and `gemma/` (Gemma 2, Gemma 3 text): Hugging Face families,
  on the shared pieces in `hf/` (strict config reading, rotary, layers, key tables, checkpoint files).
- `pretrained.py`: the family registry, `from_pretrained` and `save_pretrained` (Hugging Face directories).
A new family is a folder beside `x_transformers/` with its config, model and checkpoint key table.
"""

from dpo_jax.models.base import CausalLM, HiddenStatesLM, OutputHead, check_layout, has_fast_path
from dpo_jax.models.precision import with_compute_dtype
from dpo_jax.models.pretrained import from_pretrained, from_transformers, save_pretrained

__all__ = ["CausalLM", "HiddenStatesLM", "OutputHead", "check_layout", "has_fast_path", "with_compute_dtype",
           "from_pretrained", "save_pretrained", "from_transformers"]
