"""Shared helpers for parity tests: small x-transformers models with every parameter perturbed."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from x_transformers import Decoder, TransformerWrapper

SMALL_DEFAULTS = dict(num_tokens=96, max_seq_len=24, dim=32, depth=2, heads=2, attn_dim_head=16)
_WRAPPER_PARAMS = set(inspect.signature(TransformerWrapper.__init__).parameters) - {"self", "attn_layers"}


def make_torch_model(seed: int = 0, **options) -> TransformerWrapper:
    """A small decoder-only TransformerWrapper in eval mode; options go to the wrapper or Decoder."""
    settings = {**SMALL_DEFAULTS, **options}
    if settings.get("attn_dim_head") is None:
        settings.pop("attn_dim_head")
    wrapper_kwargs = {k: v for k, v in settings.items() if k in _WRAPPER_PARAMS}
    decoder_kwargs = {k: v for k, v in settings.items() if k not in _WRAPPER_PARAMS}
    torch.manual_seed(seed)
    model = TransformerWrapper(**wrapper_kwargs, attn_layers=Decoder(**decoder_kwargs))
    return model.eval()


@torch.no_grad()
def perturb_(model: torch.nn.Module, seed: int = 1, scale: float = 0.1) -> torch.nn.Module:
    """Move EVERY parameter away from its init (norm gains start at 0 and hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        param.add_(noise * scale)
    return model


def random_tokens(config_or_model, batch: int, seq_len: int, seed: int = 0) -> np.ndarray:
    num_tokens = config_or_model.num_tokens
    return np.random.default_rng(seed).integers(0, num_tokens, size=(batch, seq_len), dtype=np.int64)


def right_padding_mask(batch: int, seq_len: int, seed: int = 0) -> np.ndarray:
    """True on a random-length prefix of each row (at least one token), False on the padding."""
    lengths = np.random.default_rng(seed + 100).integers(1, seq_len + 1, size=(batch,))
    lengths[0] = seq_len  # keep one full row
    return np.arange(seq_len)[None, :] < lengths[:, None]


def torch_logits(model, tokens: np.ndarray, mask: np.ndarray | None = None, **kwargs) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(tokens), mask=None if mask is None else torch.from_numpy(mask), **kwargs)
    return out.float().numpy()


def relative_max_diff(actual, expected) -> float:
    """max |a - e| / max(1, max |e|): the parity measure used across the project."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / max(1.0, np.abs(expected).max()))
