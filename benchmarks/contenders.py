"""The contenders: one full training step each, registered by name.

`CONTENDERS = {name: factory}`; `factory(setup, batch, config) -> step`, where `step()` runs one full
training step (loss, backward, optimizer update; or the loss head's fwd+bwd) and blocks until the device is
done, returning the loss as a float. Adding a contender is one decorated function:

    @contender("dpo_jax_plain", framework="jax")
    def dpo_jax_plain(setup, batch, config): ...

`framework` tells the worker which model to build in `setup` before it takes the memory baseline:
"torch" gives `setup.torch_model` (the seed-built TransformerWrapper on the torch device), "jax" gives
`setup.jax_model` (the same weights through `dpo_jax.from_torch`; the torch copy is dropped first).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import numpy as np

from benchmarks.flops import torch_model_config
from benchmarks.presets import BenchConfig

PAD_ID = 0
CONTENDERS: dict[str, Callable] = {}


def contender(name: str, *, framework: str):
    def register(factory):
        factory.framework = framework
        CONTENDERS[name] = factory
        return factory
    return register


# ---- shared inputs ------------------------------------------------------------------------------------

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
                                                   attn_dim_head=kwargs["attn_dim_head"]))
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
    if framework == "jax":
        import gc

        import jax.numpy as jnp
        from dpo_jax import from_torch
        dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
        setup.jax_model = from_torch(model, dtype=dtype)
        del model
        gc.collect()
    else:
        setup.torch_model = model
    return setup


# ---- torch ----------------------------------------------------------------------------------------------

def _torch_sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(config: BenchConfig, device):
    import torch
    if config.dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _torch_batch(batch: Batch, device):
    import torch
    return {name: torch.as_tensor(getattr(batch, name)).to(device)
            for name in ("preferred_seq", "unpreferred_seq", "prompt_mask", "preferred_seq_mask",
                         "unpreferred_seq_mask")}


def _torch_train_step(dpo, setup: Setup, batch: Batch, loss_fn=None):
    import torch

    device, config = setup.torch_device, setup.config
    tensors = _torch_batch(batch, device)
    optimizer = torch.optim.AdamW(dpo.parameters(), lr=config.lr)
    loss_fn = dpo if loss_fn is None else loss_fn
    inputs = (tensors.pop("preferred_seq"), tensors.pop("unpreferred_seq"))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(config, device):
            loss = loss_fn(*inputs, **tensors)
        loss.backward()
        optimizer.step()
        _torch_sync(device)
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


# ---- jax ------------------------------------------------------------------------------------------------

def jax_adamw_step(setup, config, inputs, loss_of, *, reference=None):
    """The training step every JAX contender times: jit(value_and_grad) + optax.adamw over nnx.split params,
    buffers donated. `loss_of(policy, reference, inputs) -> loss`. The reference is a live frozen copy of the
    policy's weights unless `reference(graphdef, ref_params, rest, inputs)` returns a replacement computed once
    up front (precomputed log-probs)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    policy = setup.jax_model
    graphdef, params, rest = nnx.split(policy, nnx.Param, ...)
    ref_state = jax.tree.map(jnp.copy, params)  # the frozen reference: same weights, own buffers
    live_reference = reference is None
    if not live_reference:
        ref_state = reference(graphdef, ref_state, rest, inputs)
    optimizer = optax.adamw(config.lr)
    opt_state = optimizer.init(params)
    del policy, setup.jax_model

    def train_step(params, opt_state, ref_state, inputs):
        ref = nnx.merge(graphdef, ref_state, rest) if live_reference else ref_state
        loss, grads = jax.value_and_grad(lambda p: loss_of(nnx.merge(graphdef, p, rest), ref, inputs))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    jitted = jax.jit(train_step, donate_argnums=(0, 1))
    state = {"params": params, "opt_state": opt_state}

    def step():
        state["params"], state["opt_state"], loss = jitted(state["params"], state["opt_state"], ref_state, inputs)
        jax.block_until_ready((state["params"], state["opt_state"], loss))
        return float(loss)
    return step


# ---- the loss head alone (head-128k) -------------------------------------------------------------------

def _head_inputs(config: BenchConfig, batch: Batch):
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
    arrays = _head_inputs(config, batch)
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
        _torch_sync(device)
        return float(loss.detach())
    return step


@contender("jax_head", framework="jax")
def jax_head(setup, batch, config):
    """Plain jax: the same computation, jit(value_and_grad) w.r.t. hidden states and head weight."""
    import jax
    import jax.numpy as jnp

    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    arrays = _head_inputs(config, batch)
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


# contenders defined in other files register themselves on import (keep these lines last)
from benchmarks import contenders_packing  # noqa: E402,F401


# the fast-path JAX contenders (dpo_jax replaced by the fast path, dpo_jax_plain, dpo_jax_precomputed_ref)
from benchmarks import contenders_fast  # noqa: E402,F401  (registers on import)
