"""The model contract: all that log-probs, losses, layouts and the train step may ask of a model.

Two levels, written as `typing.Protocol`s (a model need not inherit from them; having the members is enough):

`CausalLM`, the minimum: a callable `model(tokens [B, T] int32) -> logits [B, T, V]`, an NNX module or a
plain function closed over a user's parameters. The padded layout runs on it with the full head: one
forward over chosen and rejected, a float32 log-softmax, the target log-probs. Nothing else is assumed, so
token ids are checked against the logits' vocabulary (`V`) when they are concrete.

`HiddenStatesLM`, for the fast path and every batch layout: the model also exposes

- `hidden_states(tokens, *, positions=None, attention=None, remat=None, attention_backend="auto") -> [B, T, d]`,
  the hidden states after the final norm. `positions [B, T]` int are the positions each token is computed at
  (prefix sharing restarts them where a branch begins; None means 0..T-1); `attention` is an
  `ops.attention.AttentionMask` (segment and branch ids for shared and packed rows; None means plain causal);
  `remat` is a policy name of `ops.remat` ("none", "full", "dots_saveable") applied per block;
  `attention_backend` is handed to `ops.attention.attend` (the run's `ForwardOptions.attention`);
- `output_head() -> OutputHead(weight [d, V], scale, softcap)`, so the log-prob head can skip positions it
  does not score and chunk the vocabulary projection (Gemma's final-logit softcap included);
- `vocab_size: int` and `max_seq_len: int | None` (None: no limit), for the host-side input checks.

Optional members a family may add:

- `check_layout(layout_name)`: raise `NotImplementedError` naming what the layout cannot compute exactly
  for this model (the x-transformers port refuses prefix sharing with memory tokens and rotary positions);
- `config` (a frozen dataclass with `replace(dtype=...)`) and a constructor `Family(config, *, rngs)`: then
  `models.precision.with_compute_dtype` rebuilds the same graph computing in another dtype. A model without
  them computes in its parameters' dtype, and the compute copy is the parameters cast.

Every model this package ships (`models.x_transformers`, the Hugging Face families) is a `HiddenStatesLM`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import jax

from dpo_jax.ops.attention import AttentionMask
from dpo_jax.ops.logprob_head import OutputHead

__all__ = ["CausalLM", "HiddenStatesLM", "OutputHead", "AttentionMask", "has_fast_path", "vocab_size_of",
           "max_seq_len_of", "check_layout"]


@runtime_checkable
class CausalLM(Protocol):
    """tokens [B, T] int32 -> logits [B, T, V]."""

    def __call__(self, tokens: jax.Array) -> jax.Array: ...


@runtime_checkable
class HiddenStatesLM(Protocol):
    """A causal LM that exposes its final hidden states and its output head (the fast path's contract)."""

    vocab_size: int
    max_seq_len: int | None

    def __call__(self, tokens: jax.Array) -> jax.Array: ...

    def hidden_states(self, tokens: jax.Array, *, positions: jax.Array | None = None,
                      attention: AttentionMask | None = None, remat: str | None = None,
                      attention_backend: str = "auto") -> jax.Array: ...

    def output_head(self) -> OutputHead: ...


def has_fast_path(model) -> bool:
    """Whether `model` offers hidden states and an output head (else only the full-logits path applies)."""
    return callable(getattr(model, "hidden_states", None)) and callable(getattr(model, "output_head", None))


def vocab_size_of(model) -> int | None:
    """The model's vocabulary size, or None for a plain callable (then the logits' last axis says it)."""
    return getattr(model, "vocab_size", None)


def max_seq_len_of(model) -> int | None:
    """The longest input the model accepts, or None when it states no limit."""
    return getattr(model, "max_seq_len", None)


def check_layout(model, layout_name: str) -> None:
    """The model's own refusal of a batch layout, if it has one; layouts beyond "padded" need the fast path."""
    if layout_name != "padded" and not has_fast_path(model):
        raise NotImplementedError(
            f"layout {layout_name!r} needs a model with hidden_states(tokens, positions=, attention=) and "
            f"output_head() (dpo_jax.models.base.HiddenStatesLM); this model is a plain callable: use 'padded'")
    check = getattr(model, "check_layout", None)
    if callable(check):
        check(layout_name)
