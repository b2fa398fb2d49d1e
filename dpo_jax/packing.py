"""Packing: several (prefix-shared) pairs per row, no padding between them, a fixed number of pair slots.

Each pair is one segment ([prompt, chosen, rejected], see `dpo_jax.prefix_sharing`), or two segments
([prompt, chosen], [prompt, rejected]) with `share_prefix=False`. Attention never crosses segments
(segment ids in the mask built inside jit), positions restart per segment, and per-sequence log-probs are
segment-summed into K static pair slots; empty slots carry `pair_valid=False` and weigh 0 in the loss and
in every metric (weighted means), so a partly filled last batch trains exactly like a smaller batch.

The packer is a deterministic greedy first-fit: epoch e shuffles with `default_rng(seed + e)`, sorts each
window of `length_window` examples by packed length (longest first: first-fit decreasing), fills rows of
`row_len` tokens until a pair fits in no row or the batch has `pairs_per_batch` pairs, then shuffles the
order of the batches.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dpo_jax.data import PreferenceExample, _check_collate_options, _truncated_lengths
from dpo_jax.dpo import validate_options
from dpo_jax.losses import REFERENCE_FREE_LOSSES, pair_losses, validate_loss_options
from dpo_jax.prefix_sharing import PairSpec, SharedBatch, _check_alignment, layout_pairs, prefix_shared_pair_logprobs

__all__ = ["pair_spec_from_example", "first_fit", "pack_examples", "PackedDataset", "weighted_preference_loss",
           "packed_dpo_loss", "make_packed_loss_fn", "make_packed_train_step"]


# ------------------------------------------------------------------------------------------ host side

def pair_spec_from_example(example: PreferenceExample, *, max_len: int, truncation: str = "keep_start",
                           min_completion_tokens: int = 1) -> PairSpec:
    """The PairSpec `collate_pairs` + next_token alignment would score (same truncation), without padding.

    x-transformers alignment is refused for examples: it scores the first pad after the response only when
    the padded batch is wider than the row, which depends on the other examples of a padded batch; build
    from the padded batch instead (`prefix_sharing.pair_specs_from_batch`).
    """
    p, c, r = _truncated_lengths(example, max_len, truncation, min_completion_tokens)
    if p < 1:
        raise ValueError(f"{example.where()}: prefix sharing and packing need a prompt of at least one token")
    prompt = np.asarray(example.prompt[len(example.prompt) - p:], np.int32)
    chosen, rejected = np.asarray(example.chosen[:c], np.int32), np.asarray(example.rejected[:r], np.int32)

    def scored(completion):  # source t (in prompt + completion) scores token t + 1
        return tuple((p - 1 + i, int(tok)) for i, tok in enumerate(completion))

    return PairSpec(prompt, chosen[:-1], rejected[:-1], scored(chosen), scored(rejected))


def first_fit(lengths: Sequence[int], *, row_len: int, rows: int, pairs_per_batch: int):
    """Greedy first-fit of items (in the given order) into batches of `rows` rows of `row_len` tokens.

    Returns a list of batches; each batch is a list of `rows` lists of item indices.
    """
    batches, current, free, count = [], [[] for _ in range(rows)], [row_len] * rows, 0
    for index, length in enumerate(lengths):
        if length > row_len:
            raise ValueError(f"item {index} needs {length} tokens > row_len={row_len}")
        row = next((r for r in range(rows) if free[r] >= length), None)
        if row is None or count == pairs_per_batch:
            batches.append(current)
            current, free, count = [[] for _ in range(rows)], [row_len] * rows, 0
            row = 0
        current[row].append(index)
        free[row] -= length
        count += 1
    if count:
        batches.append(current)
    return batches


def _layout(specs, batch_rows, *, row_len, pairs_per_batch, share_prefix):
    slot, rows_of_pairs = 0, []
    for row in batch_rows:
        rows_of_pairs.append([(slot + i, index) for i, index in enumerate(row)])
        slot += len(row)
    return layout_pairs(specs, rows_of_pairs, row_len=row_len, num_pairs=pairs_per_batch, share_prefix=share_prefix)


def pack_examples(examples: Sequence[PreferenceExample], *, row_len: int, rows: int, pairs_per_batch: int,
                  max_len: int, share_prefix: bool = True, truncation: str = "keep_start",
                  min_completion_tokens: int = 1) -> list[SharedBatch]:
    """Pack examples in their given order (no shuffling or sorting) into SharedBatches of fixed shapes."""
    _check_collate_options(max_len, truncation, min_completion_tokens, 1)
    specs = [pair_spec_from_example(ex, max_len=max_len, truncation=truncation,
                                    min_completion_tokens=min_completion_tokens) for ex in examples]
    plan = first_fit([s.length(share_prefix) for s in specs], row_len=row_len, rows=rows,
                     pairs_per_batch=pairs_per_batch)
    return [_layout(specs, b, row_len=row_len, pairs_per_batch=pairs_per_batch, share_prefix=share_prefix)
            for b in plan]


class PackedDataset:
    """Seeded packed batching: `epoch(e)` yields SharedBatches [rows, row_len] with `pairs_per_batch` slots.

    `row_len` must hold the longest packed example: 2 * max_len always does.
    """

    def __init__(self, examples: Sequence[PreferenceExample], *, row_len: int, rows: int, pairs_per_batch: int,
                 seed: int, max_len: int, share_prefix: bool = True, shuffle: bool = True,
                 length_window: int | None = None, truncation: str = "keep_start", min_completion_tokens: int = 1):
        _check_collate_options(max_len, truncation, min_completion_tokens, 1)
        for name, value in (("row_len", row_len), ("rows", rows), ("pairs_per_batch", pairs_per_batch)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not examples:
            raise ValueError("PackedDataset needs at least one example")
        self.specs = [pair_spec_from_example(ex, max_len=max_len, truncation=truncation,
                                             min_completion_tokens=min_completion_tokens) for ex in examples]
        self.lengths = np.array([s.length(share_prefix) for s in self.specs], np.int64)
        too_long = int(self.lengths.max())
        if too_long > row_len:
            raise ValueError(f"an example packs to {too_long} tokens > row_len={row_len}; raise row_len "
                             f"(2 * max_len = {2 * max_len} always suffices)")
        self.row_len, self.rows, self.pairs_per_batch = row_len, rows, pairs_per_batch
        self.seed, self.share_prefix, self.shuffle = int(seed), share_prefix, shuffle
        self.length_window = length_window or 64 * pairs_per_batch

    def epoch_plan(self, epoch: int):
        """The batches of `epoch` as lists of rows of example indices (a pure function of seed and epoch)."""
        n = len(self.specs)
        rng = np.random.default_rng(self.seed + epoch)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        windows = [order[i:i + self.length_window] for i in range(0, n, self.length_window)]
        order = np.concatenate([w[np.argsort(-self.lengths[w], kind="stable")] for w in windows])
        plan = first_fit(self.lengths[order], row_len=self.row_len, rows=self.rows,
                         pairs_per_batch=self.pairs_per_batch)
        plan = [[[int(order[i]) for i in row] for row in batch] for batch in plan]
        if self.shuffle:
            plan = [plan[i] for i in rng.permutation(len(plan))]
        return plan

    def epoch(self, epoch: int = 0):
        for batch_rows in self.epoch_plan(epoch):
            yield _layout(self.specs, batch_rows, row_len=self.row_len, pairs_per_batch=self.pairs_per_batch,
                          share_prefix=self.share_prefix)


# --------------------------------------------------------------------------------------------- loss

def _weighted_mean(values, weights, total):
    return (values * weights).sum() / total


def weighted_preference_loss(policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, weights,
                             beta=0.1, loss_type="sigmoid", label_smoothing=0.0, divergence="reverse_kl",
                             alpha=0.5, gamma=0.5):
    """`dpo_jax.losses.preference_loss` with per-pair weights (1 valid slot, 0 empty): weighted means of the
    per-pair losses (`pair_losses`) and of the same TRL metrics; equal to it on the valid pairs alone."""
    validate_loss_options(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, divergence=divergence,
                          alpha=alpha, gamma=gamma, has_reference=ref_chosen is not None)
    if loss_type in REFERENCE_FREE_LOSSES:
        ref_chosen = ref_rejected = None
    weights = weights.astype(jnp.float32)
    total = jnp.maximum(weights.sum(), 1.0)
    losses = pair_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta, loss_type=loss_type,
                         label_smoothing=label_smoothing, divergence=divergence, alpha=alpha, gamma=gamma)
    loss = _weighted_mean(jnp.where(weights > 0, losses, 0.0), weights, total)
    stop = jax.lax.stop_gradient
    chosen, rejected = stop(policy_chosen), stop(policy_rejected)
    chosen_rewards, rejected_rewards = beta * chosen, beta * rejected
    if ref_chosen is not None:
        chosen_rewards, rejected_rewards = beta * (chosen - stop(ref_chosen)), beta * (rejected - stop(ref_rejected))
    mean = lambda x: _weighted_mean(x, weights, total)  # noqa: E731
    metrics = {
        "rewards/chosen": mean(chosen_rewards),
        "rewards/rejected": mean(rejected_rewards),
        "rewards/accuracies": mean((chosen_rewards > rejected_rewards).astype(jnp.float32)),
        "rewards/margins": mean(chosen_rewards - rejected_rewards),
        "logps/chosen": mean(chosen),
        "logps/rejected": mean(rejected),
        "loss": stop(loss),
    }
    return loss, metrics


def packed_dpo_loss(policy, reference, packed_batch, *, beta=0.1, loss_type="sigmoid", reduction="mean",
                    mask_alignment="next_token", label_smoothing=0.0, divergence="reverse_kl", alpha=0.5, gamma=0.5):
    """DPO loss and metrics of a SharedBatch (prefix-shared and/or packed); equals `dpo_loss` on the same pairs.

    `reference`: a model, `ReferenceLogps` [K] in slot order, or None (reference-free losses).
    """
    validate_options(beta=beta, loss_type=loss_type, reduction=reduction, mask_alignment=mask_alignment,
                     label_smoothing=label_smoothing, divergence=divergence, alpha=alpha, gamma=gamma,
                     has_reference=reference is not None)
    _check_alignment(packed_batch, mask_alignment)
    arrays = packed_batch.as_dict() if isinstance(packed_batch, SharedBatch) else packed_batch
    chosen, rejected = prefix_shared_pair_logprobs(policy, arrays, reduction=reduction)
    ref_chosen = ref_rejected = None
    if isinstance(reference, tuple):
        ref_chosen, ref_rejected = (jax.lax.stop_gradient(jnp.asarray(x)) for x in reference)
    elif reference is not None:
        ref_chosen, ref_rejected = prefix_shared_pair_logprobs(reference, arrays, reduction=reduction)
        ref_chosen, ref_rejected = jax.lax.stop_gradient(ref_chosen), jax.lax.stop_gradient(ref_rejected)
    return weighted_preference_loss(chosen, rejected, ref_chosen, ref_rejected,
                                    weights=jnp.asarray(arrays["pair_valid"]), beta=beta, loss_type=loss_type,
                                    label_smoothing=label_smoothing, divergence=divergence, alpha=alpha, gamma=gamma)


# --------------------------------------------------------------------------------------- train step

def make_packed_loss_fn(graphdef, config):
    """loss_fn(params, ref_params, batch) -> (loss, metrics) like `train.make_loss_fn`, for SharedBatch dicts
    (plus `ref_chosen_logps`/`ref_rejected_logps` [K] when the reference is precomputed)."""
    from dpo_jax.train import policy_and_reference

    def loss_fn(params, ref_params, batch):
        policy, reference = policy_and_reference(graphdef, config, params, ref_params, batch)
        arrays = {k: v for k, v in batch.items() if k in SharedBatch.ARRAY_KEYS}
        return packed_dpo_loss(policy, reference, arrays, beta=config.beta, loss_type=config.loss_type,
                               reduction=config.reduction, mask_alignment=config.mask_alignment,
                               label_smoothing=config.label_smoothing, divergence=config.divergence,
                               alpha=config.alpha, gamma=config.gamma)
    return loss_fn


def make_packed_train_step(graphdef, config, *, donate=True):
    """Jitted step(state, shared_batch_dict) -> (state, metrics): `train.make_train_step` for packed batches.

    Same TrainState, optimizer, schedule, reference sync and non-finite refusal; grad_accum must be 1 (pack
    more pairs per batch instead).
    """
    from dpo_jax.train import make_train_step

    if config.grad_accum != 1:
        raise NotImplementedError("packed batches: grad_accum must be 1 (raise pairs_per_batch instead)")
    return make_train_step(graphdef, config, donate=donate, loss_fn=make_packed_loss_fn(graphdef, config))
