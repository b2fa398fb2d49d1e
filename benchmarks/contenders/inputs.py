"""The inputs every contender shares: the seed-built model of its framework and one preference batch."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from benchmarks.flops import torch_model_config
from benchmarks.presets import BenchConfig

PAD_ID = 0
SEQUENCE_NAMES = ("preferred_seq", "unpreferred_seq", "prompt_mask", "preferred_seq_mask", "unpreferred_seq_mask")


@dataclasses.dataclass
class Batch:
    """Right-padded preference batch (numpy); completions are 1/2..1 x completion_len long."""
    preferred_seq: np.ndarray  # [B, N] int64, PAD_ID after the completion
    unpreferred_seq: np.ndarray
    prompt_mask: np.ndarray  # [B, N] bool, True on prompt tokens
    preferred_seq_mask: np.ndarray  # [B, N] bool, True on non-pad tokens
    unpreferred_seq_mask: np.ndarray

    @property
    def scored_tokens(self) -> int:
        """Tokens whose log-prob enters the loss (non-prompt, non-pad), chosen + rejected."""
        return int((self.preferred_seq_mask & ~self.prompt_mask).sum()
                   + (self.unpreferred_seq_mask & ~self.prompt_mask).sum())


def make_batch(config: BenchConfig) -> Batch:
    rng = np.random.default_rng(config.seed)
    b, p, c, v = config.pairs, config.prompt_len, config.completion_len, config.num_tokens
    n = p + c
    positions = np.arange(n)[None, :]
    prompt = rng.integers(1, v, size=(b, p))

    def side():
        lengths = rng.integers(max(1, c // 2), c + 1, size=(b, 1))
        mask = positions < p + lengths
        seq = np.concatenate([prompt, rng.integers(1, v, size=(b, c))], axis=1)
        return np.where(mask, seq, PAD_ID).astype(np.int64), mask

    preferred, preferred_mask = side()
    unpreferred, unpreferred_mask = side()
    prompt_mask = np.broadcast_to(positions < p, (b, n)).copy()
    return Batch(preferred, unpreferred, prompt_mask, preferred_mask, unpreferred_mask)


@dataclasses.dataclass
class Setup:
    config: BenchConfig
    torch_device: Any = None
    torch_model: Any = None
    jax_model: Any = None


def build_torch_model(config: BenchConfig, device):
    import torch
    from x_transformers import Decoder, TransformerWrapper

    kwargs = torch_model_config(config)
    torch.manual_seed(config.seed)
    model = TransformerWrapper(num_tokens=kwargs["num_tokens"], max_seq_len=kwargs["max_seq_len"],
                               attn_layers=Decoder(dim=kwargs["dim"], depth=kwargs["depth"], heads=kwargs["heads"],
                                                   attn_dim_head=kwargs["attn_dim_head"],
                                                   attn_flash=kwargs["attn_flash"]))
    return model.to(device)


def torch_device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_setup(config: BenchConfig, framework: str) -> Setup:
    """Seed-built weights for one framework (the head benchmark builds its tensors in the factory)."""
    device = torch_device()
    setup = Setup(config=config, torch_device=device)
    if config.kind == "head":
        return setup
    model = build_torch_model(config, "cpu" if framework == "jax" else device)
    if framework == "jax":  # float32 master weights; a bfloat16 preset computes in bfloat16 (ForwardOptions)
        import gc

        from dpo_jax import from_torch
        setup.jax_model = from_torch(model)
        del model
        gc.collect()
    else:
        setup.torch_model = model
    return setup




def batch_arrays(batch: Batch) -> dict[str, np.ndarray]:
    """The batch as the dict `dpo_loss` / the padded layout take."""
    return {name: getattr(batch, name) for name in SEQUENCE_NAMES}
