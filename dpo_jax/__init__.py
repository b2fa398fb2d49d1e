"""dpo_jax: DPO in JAX/Flax/optax, with a Flax port of x-transformers that agrees with PyTorch."""

from dpo_jax.model import Transformer, TransformerConfig
from dpo_jax.convert import from_torch
from dpo_jax.convert import to_torch
from dpo_jax.convert import config_from_torch
from dpo_jax.convert import build_torch_model
from dpo_jax.convert import state_dict_from_model
from dpo_jax.convert import model_from_state_dict
from dpo_jax.checkpoint_io import save_safetensors
from dpo_jax.checkpoint_io import load_safetensors
from dpo_jax.dpo import ReferenceLogps, dpo_loss, reference_logprobs
from dpo_jax.losses import DIVERGENCES, LOSS_TYPES, pair_losses, preference_loss
from dpo_jax.logprobs import scored_mask, sequence_logprobs, token_logprobs
