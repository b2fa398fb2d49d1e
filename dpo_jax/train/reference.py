"""Precomputed reference log-probs: one reference forward per distinct batch, cached in host memory.

With a fixed reference the reference forward pass is the same every time a batch comes round, so
`--precompute-ref` computes it once, up front, for every batch the run will see, and the train step reads
`ref_chosen_logps`/`ref_rejected_logps` from the batch instead of holding the reference weights. Batches are
keyed by a content hash of their arrays, so the cache is correct whatever order or epoch a batch comes from.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import jax
import numpy as np

from dpo_jax.layouts.padded import SEQUENCE_KEYS
from dpo_jax.train.config import TrainConfig
from dpo_jax.train.step import layout_of, reference_model_of

__all__ = ["batch_key", "make_reference_fn", "ReferenceCache"]


def batch_key(batch, keys=SEQUENCE_KEYS) -> str:
    """sha256 over the shapes, dtypes and bytes of a batch dict's arrays `keys` (tokens and masks)."""
    digest = hashlib.sha256()
    for key in keys:
        value = batch.get(key)
        if value is None:
            digest.update(f"{key}:none;".encode())
            continue
        value = np.ascontiguousarray(np.asarray(value))
        digest.update(f"{key}:{value.dtype.str}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def make_reference_fn(graphdef, config: TrainConfig, layout="padded"):
    """Jitted (ref_params, batch) -> (chosen [K], rejected [K]) with the loss's reduction, alignment, ld_alpha and
    forward options, on `layout`'s batches. `ref_params` are the reference model's parameters, or a LoRA state's
    FrozenBase (the adapter-off base, or the frozen reference adapters on it)."""
    layout = layout_of(config, layout)

    def reference_fn(ref_params, batch):
        step_options = {} if config.ld_alpha is None else {"ld_alpha": config.ld_alpha}
        logps = layout.pair_logprobs(reference_model_of(graphdef, ref_params), batch, reduction=config.reduction,
                                     forward=config.forward, **step_options)
        return logps.chosen, logps.rejected
    return jax.jit(reference_fn)


class ReferenceCache:
    """In-memory map batch hash -> (chosen, rejected) reference log-probs (numpy float32 [B])."""

    def __init__(self, graphdef, ref_params, config: TrainConfig, layout="padded"):
        self._layout = layout_of(config, layout)
        self._fn = make_reference_fn(graphdef, config, self._layout)
        self._ref_params = ref_params
        self._table: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.misses = 0

    def __len__(self) -> int:
        return len(self._table)

    def lookup(self, batch) -> tuple[np.ndarray, np.ndarray]:
        keys = tuple(key for key in self._layout.keys if key in batch)
        key = batch_key(batch, keys)
        if key not in self._table:
            self.misses += 1
            chosen, rejected = self._fn(self._ref_params, {k: batch[k] for k in keys})
            self._table[key] = (np.asarray(chosen), np.asarray(rejected))
        return self._table[key]

    def precompute(self, batches: Iterable) -> None:
        """Fill the cache for every batch (dicts) before training; later lookups are pure host reads."""
        for batch in batches:
            self.lookup(batch)

    def with_reference(self, batch) -> dict:
        """The batch dict plus its cached ref_chosen_logps / ref_rejected_logps."""
        chosen, rejected = self.lookup(batch)
        return dict(batch, ref_chosen_logps=chosen, ref_rejected_logps=rejected)
