"""`ForwardOptions`: how the log-probs are computed (never what): every combination gives the same numbers.

They reach every entry point the same way: `dpo_loss(..., **options)`, `TrainConfig(forward=ForwardOptions(...))`
and `dpo-jax train --logprob-head ... --remat ... --compute-dtype ... --attention ...`.

- logprob_head: "full" builds the [rows, T, V] logits; "chunked" never does (`ops.logprob_head`, O(chunk x V)
  memory); "auto" picks "chunked" when the vocabulary is large (>= `CHUNKED_HEAD_MIN_VOCAB`), where the
  logits dominate memory and the chunked head is faster, and "full" for small vocabularies. A plain callable
  model (no hidden states) always takes the full logits.
- head_chunk_size: tokens per head chunk for "chunked".
- score_positions: "scored" sends only the positions a row scores to the head (a static window per row: the
  batch's `score_index`, or computed from concrete masks; under jit without either, every position);
  "all" sends every position.
- score_window: a fixed window size for "scored" (None: from the batch).
- remat: per-block rematerialisation, None/"none" | "full" | "dots_saveable" (`ops.remat`).
- compute_dtype: e.g. "bfloat16": parameters cast and activations computed in it (`models.precision`); the
  logsumexp, the log-probs and the loss stay float32. None keeps the model's own dtype.
- attention: the `ops.attention.attend` backend: "auto" (default: cuDNN on NVIDIA GPUs in bfloat16/float16,
  splash on TPU where they can express the call, else the einsum "xla"; on CPU always "xla"), or one of
  "xla", "jax_nn", "cudnn", "splash" explicitly (an error if it cannot express the call).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from dpo_jax.ops.attention import ATTENTION_BACKENDS
from dpo_jax.ops.logprob_head import DEFAULT_CHUNK_SIZE, LOGPROB_HEADS
from dpo_jax.ops.remat import validate_remat

__all__ = ["ForwardOptions", "FastPath", "LOGPROB_HEAD_CHOICES", "SCORE_POSITIONS", "CHUNKED_HEAD_MIN_VOCAB"]

LOGPROB_HEAD_CHOICES = ("auto",) + LOGPROB_HEADS
SCORE_POSITIONS = ("scored", "all")
CHUNKED_HEAD_MIN_VOCAB = 4096


@dataclasses.dataclass(frozen=True)
class ForwardOptions:
    logprob_head: str = "auto"
    head_chunk_size: int = DEFAULT_CHUNK_SIZE
    score_positions: str = "scored"
    score_window: int | None = None
    remat: str | None = None
    compute_dtype: Any = None
    attention: str = "auto"

    def __post_init__(self):
        if self.logprob_head not in LOGPROB_HEAD_CHOICES:
            raise ValueError(f"unknown logprob_head {self.logprob_head!r}; "
                             f"expected one of {', '.join(LOGPROB_HEAD_CHOICES)}")
        if self.score_positions not in SCORE_POSITIONS:
            raise ValueError(f"unknown score_positions {self.score_positions!r}; "
                             f"expected one of {', '.join(SCORE_POSITIONS)}")
        if isinstance(self.head_chunk_size, bool) or not isinstance(self.head_chunk_size, int) \
                or self.head_chunk_size < 1:
            raise ValueError(f"head_chunk_size must be a positive int, got {self.head_chunk_size!r}")
        if self.score_window is not None and (isinstance(self.score_window, bool)
                                              or not isinstance(self.score_window, int) or self.score_window < 1):
            raise ValueError(f"score_window must be a positive int or None, got {self.score_window!r}")
        validate_remat(self.remat)
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {self.attention!r}; "
                             f"expected one of {', '.join(ATTENTION_BACKENDS)}")
        if self.compute_dtype is not None:
            try:
                name = jnp.dtype(self.compute_dtype).name
            except TypeError:
                raise ValueError(f"compute_dtype must be a floating dtype name such as 'bfloat16', "
                                 f"got {self.compute_dtype!r}") from None
            if not jnp.issubdtype(jnp.dtype(name), jnp.floating):
                raise ValueError(f"compute_dtype must be a floating dtype, got {name!r}")
            object.__setattr__(self, "compute_dtype", name)  # a name: hashable, JSON-able, one spelling

    def head_for(self, vocab_size: int | None) -> str:
        """The log-prob head this model gets: "auto" resolved by its vocabulary size."""
        if self.logprob_head != "auto":
            return self.logprob_head
        return "chunked" if vocab_size is not None and vocab_size >= CHUNKED_HEAD_MIN_VOCAB else "full"

    def replace(self, **changes) -> "ForwardOptions":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ForwardOptions":
        return cls(**data)

    @classmethod
    def of(cls, options) -> "ForwardOptions":
        """ForwardOptions from None, a ForwardOptions or a dict of its fields (unknown names refused)."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        unknown = set(options) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown forward option(s) {sorted(unknown)}; "
                            f"expected some of {[f.name for f in dataclasses.fields(cls)]}")
        return cls(**options)


FastPath = ForwardOptions  # the name before 0.2 (the options were called "the fast path")
