"""The loss head alone (the head-128k preset): hidden states + output weight -> sigmoid DPO loss, fwd+bwd.

`torch_head` and `jax_head` build the [rows, T, V] logits; `jax_chunked_head` is dpo_jax's own chunked head
(`ops.logprob_head.chunked_token_logprobs`: custom VJP, O(chunk x V) memory); `liger_head` (liger_steps.py)
is Liger-Kernel's fused linear DPO loss.
"""

from __future__ import annotations

import numpy as np

from benchmarks.contenders.inputs import Batch
from benchmarks.contenders.registry import contender
from benchmarks.contenders.torch_steps import torch_sync
from benchmarks.presets import BenchConfig


def head_inputs(config: BenchConfig, batch: Batch):
    """Hidden states [R, T, H] (policy, reference), head weights [H, V], targets and scored masks [R, T]."""
    rng = np.random.default_rng(config.seed + 1)
    rows, t, h, v = 2 * config.pairs, config.seq_len, config.dim, config.num_tokens
    hidden = rng.standard_normal((rows, t, h), dtype=np.float32)
    ref_hidden = hidden + 0.01 * rng.standard_normal((rows, t, h), dtype=np.float32)
    weight = rng.standard_normal((h, v), dtype=np.float32) / np.sqrt(h)
    ref_weight = weight + 0.001 * rng.standard_normal((h, v), dtype=np.float32)
    targets = np.concatenate([batch.preferred_seq, batch.unpreferred_seq], axis=0)
    masks = np.concatenate([batch.preferred_seq_mask & ~batch.prompt_mask,
                            batch.unpreferred_seq_mask & ~batch.prompt_mask], axis=0)
    return hidden, ref_hidden, weight, ref_weight, targets, masks


@contender("torch_head", framework="torch")
def torch_head(setup, batch, config):
    """Plain torch: matmul -> float32 log_softmax -> gather -> masked mean -> sigmoid DPO; fwd+bwd."""
    import torch
    import torch.nn.functional as F

    device = setup.torch_device
    dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    arrays = head_inputs(config, batch)
    hidden, ref_hidden, weight, ref_weight = (torch.as_tensor(a).to(device, dtype) for a in arrays[:4])
    targets, masks = torch.as_tensor(arrays[4]).to(device), torch.as_tensor(arrays[5]).to(device)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    pairs = config.pairs

    def seq_logps(h, w):
        logps = F.log_softmax((h @ w).float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
        return (logps * masks).sum(-1) / masks.sum(-1)

    def step():
        hidden.grad = weight.grad = None
        with torch.no_grad():
            ref = seq_logps(ref_hidden, ref_weight)
        pol = seq_logps(hidden, weight)
        logits = (pol[:pairs] - pol[pairs:]) - (ref[:pairs] - ref[pairs:])
        loss = -F.logsigmoid(config.beta * logits).mean()
        loss.backward()
        torch_sync(device)
        return float(loss.detach())
    return step


@contender("jax_head", framework="jax")
def jax_head(setup, batch, config):
    """Plain jax: the same computation, jit(value_and_grad) w.r.t. hidden states and head weight."""
    import jax
    import jax.numpy as jnp

    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    arrays = head_inputs(config, batch)
    hidden, ref_hidden, weight, ref_weight = (jnp.asarray(a, dtype) for a in arrays[:4])
    targets, masks = jnp.asarray(arrays[4]), jnp.asarray(arrays[5], jnp.float32)
    pairs = config.pairs

    def seq_logps(h, w):
        logps = jax.nn.log_softmax((h @ w).astype(jnp.float32), axis=-1)
        logps = jnp.take_along_axis(logps, targets[..., None], axis=-1)[..., 0]
        return (logps * masks).sum(-1) / masks.sum(-1)

    def loss_fn(h, w):
        ref = jax.lax.stop_gradient(seq_logps(ref_hidden, ref_weight))
        pol = seq_logps(h, w)
        logits = (pol[:pairs] - pol[pairs:]) - (ref[:pairs] - ref[pairs:])
        return -jax.nn.log_sigmoid(config.beta * logits).mean()

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))

    def step():
        loss, grads = grad_fn(hidden, weight)
        jax.block_until_ready((loss, grads))
        return float(loss)
    return step


@contender("jax_chunked_head", framework="jax")
def jax_chunked_head(setup, batch, config):
    """dpo_jax's chunked log-prob head (what the fast path runs): the logits never exist whole."""
    import jax
    import jax.numpy as jnp
    from dpo_jax.ops.logprob_head import DEFAULT_CHUNK_SIZE, chunked_token_logprobs

    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    arrays = head_inputs(config, batch)
    hidden, ref_hidden, weight, ref_weight = (jnp.asarray(a, dtype) for a in arrays[:4])
    targets, masks = jnp.asarray(arrays[4]), jnp.asarray(arrays[5], jnp.float32)
    pairs = config.pairs

    def seq_logps(h, w, targets, masks):
        logps = chunked_token_logprobs(h, w, targets, chunk_size=DEFAULT_CHUNK_SIZE)
        return (logps * masks).sum(-1) / masks.sum(-1)

    def loss_fn(h, w, ref_h, ref_w, targets, masks):  # every array an argument: nothing for XLA to constant-fold
        ref = jax.lax.stop_gradient(seq_logps(ref_h, ref_w, targets, masks))
        pol = seq_logps(h, w, targets, masks)
        logits = (pol[:pairs] - pol[pairs:]) - (ref[:pairs] - ref[pairs:])
        return -jax.nn.log_sigmoid(config.beta * logits).mean()

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))

    def step():
        loss, grads = grad_fn(hidden, weight, ref_hidden, ref_weight, targets, masks)
        jax.block_until_ready((loss, grads))
        return float(loss)
    return step
