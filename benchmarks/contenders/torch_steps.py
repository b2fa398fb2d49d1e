"""PyTorch contenders: x-transformers' own DPO, `dpo_torch.DPO` eager and under `torch.compile`."""

from __future__ import annotations

import contextlib

from benchmarks.contenders.inputs import PAD_ID, SEQUENCE_NAMES, Batch, Setup
from benchmarks.contenders.registry import contender
from benchmarks.presets import BenchConfig


def torch_sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(config: BenchConfig, device):
    import torch
    if config.dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _torch_batch(batch: Batch, device):
    import torch
    return {name: torch.as_tensor(getattr(batch, name)).to(device) for name in SEQUENCE_NAMES}


def _torch_train_step(dpo, setup: Setup, batch: Batch, loss_fn=None):
    import torch

    device, config = setup.torch_device, setup.config
    tensors = _torch_batch(batch, device)
    optimizer = torch.optim.AdamW(dpo.parameters(), lr=config.lr)
    loss_fn = dpo if loss_fn is None else loss_fn
    inputs = (tensors.pop("preferred_seq"), tensors.pop("unpreferred_seq"))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(config, device):
            loss = loss_fn(*inputs, **tensors)
        loss.backward()
        optimizer.step()
        torch_sync(device)
        return float(loss.detach())
    return step


@contender("x_transformers", framework="torch")
def x_transformers_dpo(setup, batch, config):
    """What users run today: `x_transformers.dpo.DPO`, eager, two forwards per model."""
    from x_transformers.dpo import DPO
    return _torch_train_step(DPO(setup.torch_model, beta=config.beta, pad_id=PAD_ID), setup, batch)


@contender("dpo_torch", framework="torch")
def dpo_torch_eager(setup, batch, config):
    from dpo_torch import DPO
    return _torch_train_step(DPO(setup.torch_model, beta=config.beta, pad_id=PAD_ID), setup, batch)


@contender("dpo_torch_compile", framework="torch")
def dpo_torch_compiled(setup, batch, config):
    """`torch.compile(dpo_torch.DPO)` (config.compile_backend, inductor by default); the input validation inside
    forward causes graph breaks, so dynamo compiles several graphs (and their backward graphs)."""
    import torch
    from dpo_torch import DPO
    dpo = DPO(setup.torch_model, beta=config.beta, pad_id=PAD_ID)
    return _torch_train_step(dpo, setup, batch, loss_fn=torch.compile(dpo, backend=config.compile_backend))
