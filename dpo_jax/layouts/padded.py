"""The padded layout: chosen and rejected as separate right-padded rows, one concatenated [2B] forward.

This is what `dpo_loss` and `dpo_torch.DPO` compute. Right padding needs no attention mask (causal attention
keeps pads out of every real token's context), so the model sees no mask. Models that are only callables
(`model(tokens) -> logits`) are scored from their full logits; models with hidden states and an output head
(`models.base.HiddenStatesLM`) send only each row's scored window to the head, through the chunked head
when the vocabulary is large (`ForwardOptions`).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from dpo_jax.data import PreferenceDataset, truncated_lengths
from dpo_jax.forward import ForwardOptions
from dpo_jax.layouts.base import PairLogps, bucketed, scored_head_statistics, window_for_masks, window_indices
from dpo_jax.logprobs import (SequenceStats, check_ld_reduction, ld_sequence_logprobs, scored_mask,
                              sequence_logprobs, sequence_statistics, token_logprobs)
from dpo_jax.models.base import has_fast_path, max_seq_len_of, vocab_size_of
from dpo_jax.models.precision import with_compute_dtype
from dpo_jax.ops.logprob_head import HEAD_STATISTICS, logit_statistics
from dpo_jax.row_guards import bad_pair_rows, left_padding_problem, no_scored_token_problem, token_range_problem
from dpo_jax.validation import check_token_range, is_concrete, validate_dpo_shapes

__all__ = ["SEQUENCE_KEYS", "PaddedLayout", "PaddedBatches", "sequence_masks", "filled_seq_masks",
           "pair_sequence_logprobs", "padded_pair_logps", "padded_score_index"]

SEQUENCE_KEYS = ("preferred_seq", "unpreferred_seq", "prompt_mask", "preferred_seq_mask", "unpreferred_seq_mask")


def filled_seq_masks(preferred_seq, unpreferred_seq, preferred_seq_mask=None, unpreferred_seq_mask=None,
                     pad_id=None):
    """The sequence masks, `seq != pad_id` where not given and `pad_id` is set (x-transformers' convention)."""
    if pad_id is not None:
        if preferred_seq_mask is None:
            preferred_seq_mask = preferred_seq != pad_id
        if unpreferred_seq_mask is None:
            unpreferred_seq_mask = unpreferred_seq != pad_id
    return preferred_seq_mask, unpreferred_seq_mask


def sequence_masks(preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
                   unpreferred_seq_mask=None, pad_id=None, mask_alignment="next_token"):
    """Scored masks [B, N-1] for chosen and rejected, with x-transformers' pad_id convention."""
    preferred_seq_mask, unpreferred_seq_mask = filled_seq_masks(preferred_seq, unpreferred_seq, preferred_seq_mask,
                                                                unpreferred_seq_mask, pad_id)
    return (scored_mask(prompt_mask, preferred_seq_mask, mask_alignment),
            scored_mask(prompt_mask, unpreferred_seq_mask, mask_alignment))


def _window(options: ForwardOptions, masks, score_index):
    """Gather indices [2B, W] of the scored window, or None for every position."""
    if options.score_positions == "all":
        return None
    if score_index is not None:  # [B, 2, W] from the batch: chosen rows first, then rejected
        return jnp.concatenate([score_index[:, 0], score_index[:, 1]], axis=0)
    if options.score_window is not None:
        window = options.score_window
    elif is_concrete(masks):
        window = window_for_masks(masks)
    else:
        return None
    if window >= masks.shape[-1]:
        return None
    return window_indices(masks, window)[0]


def _row_problems(seqs, masks, vocab_size, seq_masks):
    """What makes a row's log-prob meaningless, checked on the device (`row_guards`)."""
    problems = [no_scored_token_problem(masks)]
    if vocab_size is not None:
        problems.append(token_range_problem(seqs, vocab_size))
    if seq_masks is not None and any(mask is not None for mask in seq_masks):
        half = (seqs.shape[0] // 2, seqs.shape[1])
        full = [jnp.ones(half, bool) if mask is None else jnp.asarray(mask) for mask in seq_masks]
        problems.append(left_padding_problem(jnp.concatenate(full, axis=0)))
    return problems


def pair_sequence_logprobs(model, preferred_seq, unpreferred_seq, chosen_mask, rejected_mask, reduction="mean", *,
                           score_index=None, ld_alpha=None, checks="nan", seq_masks=None, **forward_options):
    """Per-sequence log-probs of chosen and rejected from one concatenated [2B] forward of `model`.

    `forward_options` are `ForwardOptions` fields; every setting gives the same numbers. `score_index`
    [B, 2, W] (host-built, `padded_score_index`) fixes the scored window under jit. A row whose scored
    tokens are not all inside the window gets a NaN log-prob: refused loudly, never truncated. So does a row
    with an id outside the vocabulary, with no scored token, or left-padded (`seq_masks`: `seq != pad_id`, a
    row starting with pad tokens before its own; `row_guards`); `checks="raise"` also raises naming it (through
    checkify under jit). `ld_alpha` (reduction "sum") gives LD-DPO's log-probs (`logprobs.ld_sequence_logprobs`).
    """
    logps = padded_pair_logps(model, preferred_seq, unpreferred_seq, chosen_mask, rejected_mask, reduction,
                              score_index=score_index, ld_alpha=ld_alpha, checks=checks, seq_masks=seq_masks,
                              forward=forward_options)
    return logps.chosen, logps.rejected


def padded_pair_logps(model, preferred_seq, unpreferred_seq, chosen_mask, rejected_mask, reduction="mean", *,
                      score_index=None, ld_alpha=None, statistics=(), checks="nan", seq_masks=None,
                      forward=None) -> PairLogps:
    """`pair_sequence_logprobs` as a `PairLogps`, with each sequence's `SequenceStats` when `statistics` are asked
    for (the head's per-position statistics come out of the same head pass); a row the guards refuse has NaN in
    its log-prob and in every statistic."""
    options = ForwardOptions.of(forward)
    check_ld_reduction(ld_alpha, reduction)
    batch = preferred_seq.shape[0]
    seqs = jnp.concatenate([preferred_seq, unpreferred_seq], axis=0)
    masks = jnp.concatenate([chosen_mask, rejected_mask], axis=0)
    model = with_compute_dtype(model, options.compute_dtype)
    targets = seqs[:, 1:]
    complete = None  # rows whose scored tokens are all inside the window (None: no window)
    if not has_fast_path(model):  # a plain callable: its logits at every position
        logits = model(seqs[:, :-1])
        if is_concrete(seqs):  # the logits say the vocabulary: a larger id would be clamped silently
            check_token_range(preferred_seq, "preferred_seq", logits.shape[-1])
            check_token_range(unpreferred_seq, "unpreferred_seq", logits.shape[-1])
        token_logps = token_logprobs(logits, targets)
        head_statistics = logit_statistics(logits, tuple(n for n in statistics if n in HEAD_STATISTICS))
        scored = masks
        vocab_size = logits.shape[-1]
    else:
        # no padding mask goes to the model: right padding is invisible to causal attention
        hidden = model.hidden_states(seqs[:, :-1], remat=options.remat, attention_backend=options.attention)
        index = _window(options, masks, score_index)
        token_logps, head_statistics = scored_head_statistics(model, hidden, targets, index, options, statistics)
        scored = masks if index is None else jnp.take_along_axis(masks, index, axis=1)
        if index is not None:
            complete = scored.sum(axis=-1) == masks.sum(axis=-1)
        vocab_size = vocab_size_of(model)
    if ld_alpha is None:
        logps = sequence_logprobs(token_logps, scored, reduction)
    else:
        logps = jnp.concatenate(ld_sequence_logprobs(token_logps[:batch], token_logps[batch:], scored[:batch],
                                                     scored[batch:], ld_alpha))
    stats = sequence_statistics(token_logps, scored, statistics, head_statistics)
    bad = bad_pair_rows(_row_problems(seqs, masks, vocab_size, seq_masks), checks=checks)
    if complete is not None:  # a scored token outside the window: refused loudly, never truncated
        bad = bad | ~complete

    def refuse(values):
        return None if values is None else jnp.where(bad.reshape(bad.shape + (1,) * (values.ndim - 1)), jnp.nan, values)
    logps = refuse(logps)
    stats = None if stats is None else SequenceStats(*map(refuse, stats))
    if stats is None:
        return PairLogps(logps[:batch], logps[batch:])
    chosen_stats = SequenceStats(*(None if x is None else x[:batch] for x in stats))
    rejected_stats = SequenceStats(*(None if x is None else x[batch:] for x in stats))
    return PairLogps(logps[:batch], logps[batch:], None, chosen_stats, rejected_stats)


@dataclasses.dataclass(frozen=True)
class PaddedLayout:
    """One right-padded row per sequence (the arrays `dpo_loss` takes, `SEQUENCE_KEYS`)."""
    pad_id: int | None = None
    mask_alignment: str = "next_token"
    checks: str = "nan"                # what a bad row does inside jit: "nan" or "raise" (row_guards)
    name: str = "padded"
    keys: tuple = SEQUENCE_KEYS + ("score_index",)

    def check(self, model=None, *, num_devices=1, grad_accum=1) -> None:
        """Every model, mesh and grad_accum is fine (the batch split itself is checked by `train.sharding`)."""

    def masks(self, batch):
        return sequence_masks(
            batch["preferred_seq"], batch["unpreferred_seq"], prompt_mask=batch["prompt_mask"],
            preferred_seq_mask=batch.get("preferred_seq_mask"), unpreferred_seq_mask=batch.get("unpreferred_seq_mask"),
            pad_id=self.pad_id, mask_alignment=self.mask_alignment)

    def pair_logprobs(self, model, batch, *, reduction="mean", forward=None, ld_alpha=None,
                      statistics=()) -> PairLogps:
        validate_dpo_shapes(batch["preferred_seq"], batch["unpreferred_seq"], prompt_mask=batch["prompt_mask"],
                            preferred_seq_mask=batch.get("preferred_seq_mask"),
                            unpreferred_seq_mask=batch.get("unpreferred_seq_mask"), max_seq_len=max_seq_len_of(model))
        chosen_mask, rejected_mask = self.masks(batch)
        seq_masks = None  # left padding is told by pad_id tokens: an explicit mask may drop any position
        if self.pad_id is not None:
            seq_masks = (batch["preferred_seq"] != self.pad_id, batch["unpreferred_seq"] != self.pad_id)
        return padded_pair_logps(model, batch["preferred_seq"], batch["unpreferred_seq"], chosen_mask, rejected_mask,
                                 reduction, score_index=batch.get("score_index"), ld_alpha=ld_alpha,
                                 statistics=statistics, checks=self.checks, seq_masks=seq_masks, forward=forward)

    def batches(self, examples, *, batch_size, seed, max_len, pad_id, forward=None, process_index=0,
                process_count=1, **_):
        return PaddedBatches(examples, batch_size=batch_size, seed=seed, max_len=max_len, pad_id=pad_id,
                             mask_alignment=self.mask_alignment, forward=forward, process_index=process_index,
                             process_count=process_count)


def padded_score_index(chosen_mask, rejected_mask, window: int) -> np.ndarray:
    """Host side: [B, 2, W] window start indices of every row's scored span (numpy, like `window_indices`)."""
    out = []
    for mask in (np.asarray(chosen_mask), np.asarray(rejected_mask)):
        positions = np.arange(mask.shape[-1])
        first = np.where(mask, positions, mask.shape[-1]).min(axis=-1)
        start = np.clip(first, 0, mask.shape[-1] - window)
        out.append(start[:, None] + np.arange(window)[None])
    return np.stack(out, axis=1).astype(np.int32)


class PaddedBatches:
    """Random-access padded batches for training: `get_batch(step) -> (arrays, num_scored_tokens)`.

    Every batch is padded to `max_len` (one shape, one compile). With `forward.score_positions == "scored"`
    it also carries `score_index` [B, 2, W]: W is the longest completion of the global batch (so every process
    builds the same shape), rounded up to 64. An evaluation pass takes `shuffle=False, drop_last=False`: the
    examples in order, the last batch filled with repeats that `dataset.real_rows(step)` marks.
    """

    def __init__(self, examples, *, batch_size, seed, max_len, pad_id, mask_alignment="next_token", forward=None,
                 process_index=0, process_count=1, shuffle=True, drop_last=None):
        self.forward = ForwardOptions.of(forward)
        self.mask_alignment, self.pad_id, self.max_len = mask_alignment, pad_id, max_len
        self.dataset = PreferenceDataset(
            examples, batch_size=batch_size, seed=seed, process_index=process_index, process_count=process_count,
            max_len=max_len, pad_id=pad_id, shuffle=shuffle,
            drop_last=len(examples) >= batch_size if drop_last is None else drop_last,
            pad_to_multiple_of=max_len)  # one fixed shape: one compile
        options = self.dataset.collate_options
        self._completion = np.array([max(c, r) for _, c, r in (
            truncated_lengths(ex, max_len, options["truncation"], options["min_completion_tokens"])
            for ex in self.dataset.examples)])

    def window(self, step) -> int | None:
        """The scored window of global batch `step` (None: every position)."""
        if self.forward.score_positions == "all":
            return None
        width = self.max_len - 1
        longest = int(self._completion[self.dataset.global_batch_indices(step)].max())
        window = self.forward.score_window or bucketed(longest, width)
        return None if window >= width else window

    def get_batch(self, step):
        batch = self.dataset.get_batch(step)
        arrays = batch.as_dict()
        window = self.window(step)
        if window is not None:
            chosen_mask, rejected_mask = sequence_masks(
                batch.preferred_seq, batch.unpreferred_seq, prompt_mask=batch.prompt_mask,
                preferred_seq_mask=batch.preferred_seq_mask, unpreferred_seq_mask=batch.unpreferred_seq_mask,
                mask_alignment=self.mask_alignment)
            arrays["score_index"] = padded_score_index(chosen_mask, rejected_mask, window)
        return arrays, batch.num_scored_tokens()
