"""The Python-API side of the red-team cases: tiny models and batches, and one function per call tried."""

from __future__ import annotations

import functools
import math
import os

import numpy as np

V, T, P, B = 256, 12, 4, 2   # vocabulary, sequence length, prompt length, pairs


def jax_model(num_tokens=V, max_seq_len=16, seed=0, dim=32):
    from flax import nnx

    from dpo_jax.models.x_transformers import Transformer, TransformerConfig

    config = TransformerConfig(num_tokens=num_tokens, max_seq_len=max_seq_len, dim=dim, depth=1, heads=2,
                               attn_dim_head=16)
    return Transformer(config, rngs=nnx.Rngs(seed))


def torch_model(dtype=None, **decoder_options):
    import torch
    from x_transformers import Decoder, TransformerWrapper

    torch.manual_seed(0)
    wrapper_options = {k: decoder_options.pop(k) for k in ("emb_dropout", "logits_dim", "scaled_sinu_pos_emb",
                                                              "num_memory_tokens") if k in decoder_options}
    model = TransformerWrapper(num_tokens=V, max_seq_len=16, **wrapper_options,
                               attn_layers=Decoder(dim=32, depth=1, heads=2, **decoder_options))
    return model.to(dtype) if dtype is not None else model


def batch(batch_size=B, length=T, prompt=P, seed=0):
    """Right-padded-free pairs of random ids in [1, V) sharing a prompt of `prompt` tokens."""
    rng = np.random.default_rng(seed)
    chosen = rng.integers(1, V, (batch_size, length))
    rejected = rng.integers(1, V, (batch_size, length))
    rejected[:, :prompt] = chosen[:, :prompt]
    prompt_mask = np.arange(length)[None].repeat(batch_size, 0) < prompt
    return dict(preferred_seq=chosen, unpreferred_seq=rejected, prompt_mask=prompt_mask)


DEFAULT = object()


def dpo(ws, policy=DEFAULT, reference=DEFAULT, **changes):
    """`dpo_jax.dpo_loss` on a tiny model, with `changes` to the batch or the options; returns the float loss."""
    from dpo_jax import dpo_loss

    options = {**batch(), **changes}
    policy = jax_model() if policy is DEFAULT else policy
    reference = jax_model() if reference is DEFAULT else reference
    loss, _ = dpo_loss(policy, reference, **options)
    return float(loss)


@functools.lru_cache(maxsize=None)
def jitted(checks="nan"):
    """dpo_loss under jax.jit with the batch as traced arguments (models closed over); one per `checks` mode, so
    the rows with the batch's shapes share one compilation (`checks="raise"`: the checkify-wrapped function)."""
    import jax
    from jax.experimental import checkify

    from dpo_jax import dpo_loss

    policy, reference = jax_model(), jax_model()

    def loss(preferred_seq, unpreferred_seq, prompt_mask):
        return dpo_loss(policy, reference, preferred_seq, unpreferred_seq, prompt_mask=prompt_mask, checks=checks)[0]
    return jax.jit(loss if checks == "nan" else checkify.checkify(loss))


def jit_loss(ws, **changes):
    return float(jitted()(**{**batch(), **changes}))


def jit_nan_then_raise(ws, **changes):
    """(loss under plain jit, the message the checkify mode raises with): a bad row must give NaN by default and
    name itself under `checks="raise"`."""
    arrays = {**batch(), **changes}
    default = float(jitted()(**arrays))
    error, _ = jitted("raise")(**arrays)
    return {"loss": default, "checked": error.get()}


def nan_then_raise_check(pattern):
    import re

    def check(case, outcome):
        value = outcome.value
        if not math.isnan(value["loss"]):
            return f"finite loss {value['loss']} for a bad row"
        if not value["checked"] or not re.search(pattern, value["checked"]):
            return f"checks='raise' gave {value['checked']!r}"
        return None
    return check


def loss_near_ln2(case, outcome):
    return None if abs(outcome.value - math.log(2)) < 1e-3 else f"loss {outcome.value}, expected ln 2"


def finite_loss(case, outcome):
    return None if math.isfinite(outcome.value) else f"loss {outcome.value}"


def nan_loss(case, outcome):
    return None if math.isnan(outcome.value) else f"loss {outcome.value}, expected NaN"


def left_padded(**changes):
    """Three leading pads (id 0, preferred_seq_mask False there), then a prompt of 4 and a completion."""
    arrays = batch()
    seq_mask = np.ones((B, T), bool)
    seq_mask[:, :3] = False
    arrays["preferred_seq"][:, :3] = 0
    arrays["prompt_mask"] = (np.arange(T)[None] < 3 + P).repeat(B, 0)
    arrays["unpreferred_seq"][:, :3 + P] = arrays["preferred_seq"][:, :3 + P]
    return dict(arrays, preferred_seq_mask=seq_mask, unpreferred_seq_mask=seq_mask.copy(), **changes)


def torch_dpo(ws, model=None, construct=None, **changes):
    """`dpo_torch.DPO(model, **construct)` forward on the tiny batch as torch tensors; returns the float loss."""
    import torch

    from dpo_torch import DPO

    module = DPO(torch_model() if model is None else model, **(construct or {}))
    arrays = {**batch(), **changes}
    tensors = {k: (torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v) for k, v in arrays.items()}
    return float(module(**tensors))


def from_torch_call(ws, model=None, **options):
    from dpo_jax import from_torch

    return type(from_torch(torch_model(**options) if model is None else model, verify=True)).__name__


def safetensors_file(ws, name, mutate=None):
    """A tiny policy saved with save_safetensors at `name`, then `mutate(path)`; returns the path."""
    from dpo_jax import save_safetensors

    path = ws.path("data", name)
    save_safetensors(jax_model(dim=32), path)
    if mutate is not None:
        mutate(path)
    return path


def load(path):
    from dpo_jax import load_safetensors

    model = load_safetensors(path)
    return type(model).__name__


def truncate_half(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)


def overwrite_tail(path):
    with open(path, "r+b") as handle:
        handle.seek(-100, os.SEEK_END)
        handle.write(bytes(range(100)))


def edit_metadata_dim(path):
    with open(path, "rb") as handle:
        data = handle.read()
    header_len = int.from_bytes(data[:8], "little")
    header = data[8:8 + header_len].replace(b'\\"dim\\": 32', b'\\"dim\\": 48')
    with open(path, "wb") as handle:
        handle.write(data[:8] + header + data[8 + header_len:])


def resave(path, *, drop_metadata=False, extra_tensor=False, dtype=None):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(path, framework="numpy") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if extra_tensor:
        tensors["extra.weight"] = np.zeros(3, np.float32)
    if dtype is not None:
        tensors = {key: value.astype(dtype) for key, value in tensors.items()}
        metadata = {k: v for k, v in metadata.items() if k == "dpo_jax_config"}
    save_file(tensors, path, metadata=None if drop_metadata else metadata)


def file_mode_under_umask(ws):
    """(mode of save_safetensors' file, mode of a file open() creates) under umask 022."""
    previous = os.umask(0o022)
    try:
        path = safetensors_file(ws, "mode.safetensors")
        plain = ws.path("data", "mode.txt")
        with open(plain, "w") as handle:
            handle.write("x")
        return oct(os.stat(path).st_mode & 0o777), oct(os.stat(plain).st_mode & 0o777)
    finally:
        os.umask(previous)
