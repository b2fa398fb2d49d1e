"""Held-out evaluation: the loss and TRL's metrics on eval pairs, without gradients, every pair counted once.

Eval batches use the padded layout whatever layout trains: every layout computes the same loss (parity tests),
and in the padded layout a batch row is a pair, so the last, partly filled batch can be weighted exactly. The
jitted function runs `train.step.make_loss_fn` on each pair alone (vmap over batches of one), then sums each
metric over the real pairs: the result is the mean over the whole eval set, not a mean of batch means, and repeats
that fill the last batch weigh 0. The reference is the run's: the frozen model, or its precomputed log-probs
(the run's ReferenceCache covers eval batches too). For batch-level losses (aot's sort across pairs, sft's and
orpo's token mean over the batch) this makes eval/loss the mean of each pair's loss alone: independent of the eval
batch size, by design, and not a training batch's loss.
"""

from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from dpo_jax import sharding
from dpo_jax.layouts.padded import PaddedBatches
from dpo_jax.train.config import TrainConfig
from dpo_jax.train.step import make_loss_fn

__all__ = ["EVAL_PREFIX", "EVAL_METRICS", "make_eval_fn", "Evaluator"]

EVAL_PREFIX = "eval/"
EVAL_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected")
WEIGHT_KEY = "eval_weight"


def make_eval_fn(graphdef, config: TrainConfig):
    """Jitted (params, ref_params, batch, weights [B]) -> {metric: sum over the batch's pairs of weight x value}."""
    loss_fn = make_loss_fn(graphdef, config, "padded")

    def one_pair(params, ref_params, pair):
        _, metrics = loss_fn(params, ref_params, pair)
        return {name: metrics[name] for name in EVAL_METRICS}

    def eval_fn(params, ref_params, batch, weights):
        pairs = jax.tree.map(lambda array: array[:, None], batch)  # [B, ...] -> B batches of one pair
        values = jax.vmap(one_pair, in_axes=(None, None, 0))(params, ref_params, pairs)
        real = weights > 0
        return {name: jnp.where(real, value, 0.0).sum() for name, value in values.items()}

    return jax.jit(eval_fn)


_EVAL_FNS: dict = {}


def _cached_eval_fn(graphdef, config: TrainConfig):
    """One jitted eval function per (model graph, config) in a process, like the train step."""
    key = (graphdef, config)
    if key not in _EVAL_FNS:
        if len(_EVAL_FNS) >= 8:
            _EVAL_FNS.pop(next(iter(_EVAL_FNS)))
        _EVAL_FNS[key] = make_eval_fn(graphdef, config)
    return _EVAL_FNS[key]


class Evaluator:
    """The eval set in fixed padded batches; `evaluate(state, cache)` -> {"eval/loss": ..., "eval/rewards/...": ...}."""

    def __init__(self, graphdef, config: TrainConfig, examples, *, batch_size: int, max_len: int, pad_id: int,
                 mesh, process_index: int = 0, process_count: int = 1):
        self.examples = list(examples)
        self.mesh = mesh
        self.source = PaddedBatches(self.examples, batch_size=batch_size, seed=0, max_len=max_len, pad_id=pad_id,
                                    mask_alignment=config.mask_alignment, forward=config.forward,
                                    process_index=process_index, process_count=process_count, shuffle=False,
                                    drop_last=False)
        self.num_batches = self.source.dataset.steps_per_epoch
        self._fn = _cached_eval_fn(graphdef, config)

    def __len__(self) -> int:
        return len(self.examples)

    def batch_arrays(self) -> Iterator[dict]:
        """This process's arrays of every eval batch (what the reference cache precomputes)."""
        for index in range(self.num_batches):
            yield self.source.get_batch(index)[0]

    def evaluate(self, state, cache=None) -> dict[str, float]:
        totals = dict.fromkeys(EVAL_METRICS, 0.0)
        for index in range(self.num_batches):
            arrays, _ = self.source.get_batch(index)
            if cache is not None:
                arrays = cache.with_reference(arrays)
            weights = self.source.dataset.real_rows(index).astype(np.float32)
            batch = sharding.make_global_batch({**arrays, WEIGHT_KEY: weights}, self.mesh)
            weights = batch.pop(WEIGHT_KEY)
            sums = jax.device_get(self._fn(state.params, state.ref_params, batch, weights))
            for name in EVAL_METRICS:
                totals[name] += float(np.asarray(sums[name]))
        return {EVAL_PREFIX + name: total / len(self.examples) for name, total in totals.items()}
