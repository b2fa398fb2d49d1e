"""Liger-Kernel's fused linear DPO loss (`liger_kernel.chunked_loss.LigerFusedLinearDPOLoss`), where installed.

It never builds the [rows, T, V] logits: the output projection and the log-softmax run chunk by chunk in
Triton/compiled torch, and the backward recomputes them (the published bar: torch-anchors' 56.5 ms / 2.9 GB
at the head-128k shape on an H100). Its log-probs are the masked mean per sequence (`average_log_prob=True`),
the seed's reduction and `dpo_torch`'s default, over the same next-token targets.

- `liger_dpo`: a full training step: x-transformers' trunk (`return_embeddings=True`, the final-norm hidden
  states) for policy and frozen reference, then Liger's loss with both output heads, AdamW on the policy.
- `liger_head`: the loss head alone on the head preset's hidden states (as `torch_head` / `jax_head`).

Liger's kernels are Triton: CUDA GPUs only. `available()` says why a run cannot have them.
"""

from __future__ import annotations

import copy
import importlib.util

import numpy as np

from benchmarks.contenders.head_steps import head_inputs
from benchmarks.contenders.inputs import Batch, Setup
from benchmarks.contenders.registry import contender
from benchmarks.contenders.torch_steps import autocast, torch_sync
from benchmarks.presets import BenchConfig

IGNORE = -100
LIGER_CONTENDERS = ("liger_dpo", "liger_head")


def available() -> str | None:
    """None if Liger can run here, else the reason it cannot."""
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install liger-kernel; docs/gpu.md carries it as a wheel)"
    import torch
    if not torch.cuda.is_available():
        return "Liger-Kernel's kernels are Triton: they need a CUDA GPU"
    return None


def _loss_module(config: BenchConfig):
    reason = available()
    if reason is not None:
        raise RuntimeError(reason)
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss
    return LigerFusedLinearDPOLoss(beta=config.beta, average_log_prob=True, ignore_index=IGNORE)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def next_token_targets(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [2B, N-1], targets [2B, N-1]): chosen rows then rejected rows; a target is the next token where it
    is scored (a non-prompt, non-pad token: `dpo_torch`'s next_token alignment), else IGNORE."""
    seqs = np.concatenate([batch.preferred_seq, batch.unpreferred_seq])
    masks = np.concatenate([batch.preferred_seq_mask, batch.unpreferred_seq_mask]) & \
        ~np.concatenate([batch.prompt_mask, batch.prompt_mask])
    return seqs[:, :-1], np.where(masks[:, 1:], seqs[:, 1:], IGNORE)


@contender("liger_dpo", framework="torch")
def liger_dpo(setup: Setup, batch: Batch, config: BenchConfig):
    import torch

    device, model = setup.torch_device, setup.torch_model
    loss_module = _loss_module(config)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    inputs, targets = (torch.as_tensor(a).to(device) for a in next_token_targets(batch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(config, device):
            with torch.no_grad():
                ref_hidden = reference(inputs, return_embeddings=True)
            hidden = model(inputs, return_embeddings=True)
            loss = _first(loss_module(model.to_logits.weight, hidden, targets, ref_input=ref_hidden,
                                      ref_weight=reference.to_logits.weight))
        loss.backward()
        optimizer.step()
        torch_sync(device)
        return float(loss.detach())
    return step


@contender("liger_head", framework="torch")
def liger_head(setup: Setup, batch: Batch, config: BenchConfig):
    import torch

    device = setup.torch_device
    dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    loss_module = _loss_module(config)
    hidden, ref_hidden, weight, ref_weight, targets, masks = head_inputs(config, batch)
    hidden, ref_hidden = (torch.as_tensor(a).to(device, dtype) for a in (hidden, ref_hidden))
    weight, ref_weight = (torch.as_tensor(np.ascontiguousarray(a.T)).to(device, dtype) for a in (weight, ref_weight))
    targets = torch.as_tensor(np.where(masks, targets, IGNORE)).to(device)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)

    def step():
        hidden.grad = weight.grad = None
        loss = _first(loss_module(weight, hidden, targets, ref_input=ref_hidden, ref_weight=ref_weight))
        loss.backward()
        torch_sync(device)
        return float(loss.detach())
    return step
