"""Flax NNX port of x-transformers' decoder-only TransformerWrapper."""

from dpo_jax.model.config import TransformerConfig
from dpo_jax.model.transformer import Transformer
from dpo_jax.model.validation import validate_mask, validate_tokens

__all__ = ["TransformerConfig", "Transformer", "validate_tokens", "validate_mask"]
