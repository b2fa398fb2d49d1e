"""Autoregressive sampling from the JAX model, jit-compiled once per (batch, prompt length, max_new_tokens).

No kv cache: the demo's sequences are a few dozen tokens, so each step reruns the full forward over a
fixed-size buffer and reads the logits at the current position. Causal attention makes the not-yet-written
(pad) positions invisible to earlier logits, so the fixed buffer gives the same result as a growing one.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dpo_jax.models.base import max_seq_len_of, vocab_size_of

__all__ = ["sample"]


def _check_token_id(value, name: str, num_tokens: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) < num_tokens:
        raise ValueError(f"{name} must be a token id in [0, {num_tokens}), got {value!r}")
    return int(value)


def _limits(model) -> tuple[int, int | None]:
    """(vocabulary size, longest input): the model contract's `vocab_size` / `max_seq_len`, or a `.config` with
    `num_tokens` / `max_seq_len` (the x-transformers convention)."""
    config = getattr(model, "config", None)
    num_tokens = vocab_size_of(model)
    if num_tokens is not None:
        return num_tokens, max_seq_len_of(model)
    if getattr(config, "num_tokens", None) is not None:
        return config.num_tokens, getattr(config, "max_seq_len", None)
    raise TypeError(f"sample needs a model with `vocab_size` and `max_seq_len` (the model contract); "
                    f"got {type(model).__name__}")


def _validate(model, prompts, max_new_tokens, temperature, eos_id, pad_id) -> np.ndarray:
    """Host-side checks before tracing; returns the prompts as an int32 numpy array."""
    num_tokens, max_seq_len = _limits(model)
    prompts = np.asarray(prompts)
    if prompts.ndim != 2 or prompts.shape[0] == 0 or prompts.shape[1] == 0:
        raise ValueError(f"prompts must be a non-empty 2-D [batch, prompt_len] array (all prompts the same "
                         f"length), got shape {prompts.shape}")
    if not np.issubdtype(prompts.dtype, np.integer):
        raise TypeError(f"prompts must have an integer dtype, got {prompts.dtype}")
    bad = (prompts < 0) | (prompts >= num_tokens)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"prompts contain id {int(prompts[where])} at {where}, outside the vocabulary "
                         f"[0, {num_tokens})")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    total = prompts.shape[1] + int(max_new_tokens)
    if max_seq_len is not None and total > max_seq_len:
        raise ValueError(f"prompt length {prompts.shape[1]} + max_new_tokens {max_new_tokens} = {total} exceeds "
                         f"the model's max_seq_len {max_seq_len}")
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    _check_token_id(pad_id, "pad_id", num_tokens)
    if eos_id is not None:
        _check_token_id(eos_id, "eos_id", num_tokens)
    return prompts.astype(np.int32)


@partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy", "eos_id", "pad_id"))
def _sample_jit(graphdef, state, prompts, key, temperature, *, max_new_tokens, greedy, eos_id, pad_id):
    model = nnx.merge(graphdef, state)
    batch, prompt_len = prompts.shape
    buffer = jnp.full((batch, prompt_len + max_new_tokens), pad_id, jnp.int32)
    buffer = buffer.at[:, :prompt_len].set(prompts)
    done = jnp.zeros((batch,), bool)

    def step(i, carry):
        buffer, done = carry
        position = prompt_len + i
        logits = model(buffer)[:, position - 1].astype(jnp.float32)
        if greedy:
            token = jnp.argmax(logits, axis=-1)
        else:
            token = jax.random.categorical(jax.random.fold_in(key, i), logits / temperature, axis=-1)
        token = jnp.where(done, pad_id, token).astype(jnp.int32)
        if eos_id is not None:
            done = done | (token == eos_id)
        buffer = jax.lax.dynamic_update_slice(buffer, token[:, None], (0, position))
        return buffer, done

    buffer, _ = jax.lax.fori_loop(0, max_new_tokens, step, (buffer, done))
    return buffer


def sample(model, prompts, *, max_new_tokens: int, temperature: float = 1.0, rng=None, eos_id: int | None = None,
           pad_id: int = 0):
    """Continue equal-length `prompts` [B, P] by `max_new_tokens`; returns tokens [B, P + max_new_tokens].

    `temperature=0` is greedy (argmax); otherwise tokens are drawn from softmax(logits / temperature) with
    the jax key `rng` (required then; the same key gives the same samples). After a row emits `eos_id`, its
    remaining positions are `pad_id`. `model` is any nnx.Module with `vocab_size` and `max_seq_len` (the model
    contract, `dpo_jax.models.base`) or a `.config` with `num_tokens` and `max_seq_len`, mapping tokens [B, N]
    -> logits [B, N, V].
    """
    temperature = float(temperature)
    prompts = _validate(model, prompts, max_new_tokens, temperature, eos_id, pad_id)
    greedy = temperature == 0.0
    if rng is None:
        if not greedy:
            raise ValueError("sampling with temperature > 0 needs a jax random key: pass rng=jax.random.key(seed)")
        rng = jax.random.key(0)
    elif isinstance(rng, (int, np.integer)):
        rng = jax.random.key(int(rng))
    graphdef, state = nnx.split(model)
    return _sample_jit(graphdef, state, jnp.asarray(prompts), rng, jnp.float32(temperature if not greedy else 1.0),
                       max_new_tokens=int(max_new_tokens), greedy=greedy,
                       eos_id=None if eos_id is None else int(eos_id), pad_id=int(pad_id))
