"""Prefix sharing: score chosen and rejected of a pair from ONE forward pass over [prompt, chosen, rejected].

Layout of one pair (one "segment"; `layouts/packed.py` puts several per row):

    tokens     p0 p1 .. p(P-1) | c0 .. c(k-1)     | r0 .. r(m-1)
    positions  0  1  .. P-1    | P  .. P+k-1      | P  .. P+m-1      (rejected restarts where the prompt ends)
    branch     0  0  .. 0      | 1  .. 1          | 2  .. 2

Attention (the segment and branch ids go to the model as an `ops.attention.AttentionMask`, AND-ed with the
causal rule): a query sees a key of the same segment whose branch is 0 (prompt) or its own branch, so the rejected branch never sees the
chosen tokens and every token sees exactly the context, at exactly the positions, it has in the unshared
[prompt, completion] row. Every positional scheme sees only positions (learned table, rotary, alibi and T5
all use pos or pos_j - pos_i), so the per-token logits are the unshared ones.

The paper duplicates the last prompt token so that rejected token 0 is predicted from the prompt; here the
logits at the prompt's last position already are that prediction, so rejected token 0 is gathered from the
same logit row with a second target (`extra_targets`): one token less per pair, same numbers.
A branch holds only the tokens that serve as context for a scored token (the unshared path also drops the
last token: it runs the model on seq[:, :-1]); the scored (source, target) pairs are taken from the unshared
scored mask itself (`layouts.padded.sequence_masks`), so both mask alignments are reproduced exactly, including
x-transformers' scoring of the first pad after the response (it is a target, never an input).

Per-sequence log-probs are `segment_sum`s of token log-probs into 2K+1 buckets (chosen slot k -> k,
rejected slot k -> K + k, unscored -> 2K); mean = sum / count, exactly `masked_mean`. Only the positions
that score something reach the head (`score_index` [R, W], built on the host), through the chunked head when
the vocabulary is large: the [R, L, V] logits are never built.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dpo_jax.forward import ForwardOptions
from dpo_jax.layouts.base import PairLogps, bucketed, scored_head_statistics
from dpo_jax.layouts.padded import PaddedBatches, sequence_masks
from dpo_jax.logprobs import MASK_ALIGNMENTS, REDUCTIONS, SequenceStats, check_ld_reduction, check_statistics
from dpo_jax.models.base import check_layout
from dpo_jax.models.precision import with_compute_dtype
from dpo_jax.ops.attention import PROMPT_BRANCH, AttentionMask

__all__ = ["PairSpec", "SharedBatch", "pair_specs_from_batch", "layout_pairs", "shared_batch_from_batch",
           "branch_attention_mask", "shared_sequence_logprobs", "shared_pair_logps", "prefix_shared_pair_logprobs",
           "prefix_shared_pair_logps",
           "shared_score_index", "PrefixSharedLayout", "SHARED_KEYS"]

PROMPT, CHOSEN, REJECTED = PROMPT_BRANCH, 1, 2
PAD_SEGMENT = -1


class PairSpec(NamedTuple):
    """One pair, ready to lay out: the shared prompt, each branch's context tokens (after the prompt), and each
    branch's scored (source, target) pairs, source indexing the branch's own sequence prompt + inputs."""
    prompt: np.ndarray
    chosen_inputs: np.ndarray
    rejected_inputs: np.ndarray
    chosen_scored: tuple  # ((src, target_token), ...)
    rejected_scored: tuple

    def length(self, share_prefix: bool = True) -> int:
        p = len(self.prompt)
        if share_prefix:
            return p + len(self.chosen_inputs) + len(self.rejected_inputs)
        return 2 * p + len(self.chosen_inputs) + len(self.rejected_inputs)


@dataclasses.dataclass(frozen=True)
class SharedBatch:
    """Host (numpy) arrays of a prefix-shared (and possibly packed) batch: R rows of L tokens, K pair slots.

    tokens, positions, segment_ids, branch_ids, targets, owners, extra_targets, extra_owners: [R, L] int32;
    pair_valid: [K] bool (False for empty slots). The logits at (r, i) score `targets[r, i]` for bucket
    `owners[r, i]` and `extra_targets[r, i]` for `extra_owners[r, i]` (bucket 2K = not scored).
    `mask_alignment` records how the scored tokens were chosen (checked by the loss entry points).
    """
    tokens: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    branch_ids: np.ndarray
    targets: np.ndarray
    owners: np.ndarray
    extra_targets: np.ndarray
    extra_owners: np.ndarray
    pair_valid: np.ndarray
    mask_alignment: str = "next_token"

    ARRAY_KEYS = ("tokens", "positions", "segment_ids", "branch_ids", "targets", "owners", "extra_targets",
                  "extra_owners", "pair_valid")

    @property
    def num_pairs(self) -> int:
        return int(self.pair_valid.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)

    def num_scored_tokens(self) -> int:
        none = 2 * self.num_pairs
        return int((self.owners != none).sum() + (self.extra_owners != none).sum())

    def num_real_tokens(self) -> int:
        return int((self.segment_ids != PAD_SEGMENT).sum())

    def as_dict(self) -> dict[str, np.ndarray]:
        return {key: getattr(self, key) for key in self.ARRAY_KEYS}


# ------------------------------------------------------------------------------------------ host side

def _prefix_length(mask_row: np.ndarray, what: str, row: int) -> int:
    length = int(mask_row.sum())
    if not mask_row[:length].all():
        raise ValueError(f"row {row}: {what} must be a prefix (True then False) for prefix sharing")
    return length


def _branch(seq: np.ndarray, scored: np.ndarray, prompt_len: int, row: int, name: str):
    """(inputs after the prompt, ((src, target), ...)) of one unshared row and its scored mask [N-1]."""
    sources = np.flatnonzero(scored)
    if sources.size == 0:
        raise ValueError(f"row {row}: {name} has no scored token (empty completion after masking)")
    if sources[0] < prompt_len - 1:
        raise ValueError(f"row {row}: {name} scores a prompt token; prefix sharing needs prompt_mask to cover it")
    inputs = seq[prompt_len:sources[-1] + 1]
    return inputs, tuple((int(t), int(seq[t + 1])) for t in sources)


def pair_specs_from_batch(preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
                          unpreferred_seq_mask=None, pad_id=None, mask_alignment="next_token") -> list[PairSpec]:
    """PairSpecs of a padded DPO batch (the `dpo_loss` arguments), scoring exactly what `dpo_loss` scores."""
    if mask_alignment not in MASK_ALIGNMENTS:
        raise ValueError(f"unknown mask_alignment {mask_alignment!r}; expected one of {', '.join(MASK_ALIGNMENTS)}")
    preferred, unpreferred = np.asarray(preferred_seq), np.asarray(unpreferred_seq)
    prompt_mask = np.asarray(prompt_mask, dtype=bool)
    as_np = (lambda m: None if m is None else np.asarray(m, dtype=bool))
    chosen_mask, rejected_mask = sequence_masks(preferred, unpreferred, prompt_mask=prompt_mask,
                                                preferred_seq_mask=as_np(preferred_seq_mask),
                                                unpreferred_seq_mask=as_np(unpreferred_seq_mask), pad_id=pad_id,
                                                mask_alignment=mask_alignment)
    specs = []
    for row in range(preferred.shape[0]):
        p = _prefix_length(prompt_mask[row], "prompt_mask", row)
        if p < 1:
            raise ValueError(f"row {row}: prefix sharing needs a prompt of at least one token")
        if not np.array_equal(preferred[row, :p], unpreferred[row, :p]):
            raise ValueError(f"row {row}: preferred and unpreferred prompts differ; nothing to share")
        c_inputs, c_scored = _branch(preferred[row], np.asarray(chosen_mask[row]), p, row, "preferred_seq")
        r_inputs, r_scored = _branch(unpreferred[row], np.asarray(rejected_mask[row]), p, row, "unpreferred_seq")
        specs.append(PairSpec(preferred[row, :p].copy(), c_inputs.copy(), r_inputs.copy(), c_scored, r_scored))
    return specs


def _place(arrays, row, scored, owner, branch_start, prompt_start, prompt_len):
    """Write a branch's scored targets: source src < P is the prompt, else the branch's own tokens."""
    targets, owners, extra_targets, extra_owners, none = arrays
    for src, target in scored:
        at = prompt_start + src if src < prompt_len else branch_start + (src - prompt_len)
        if owners[row, at] == none:
            targets[row, at], owners[row, at] = target, owner
        elif extra_owners[row, at] == none:
            extra_targets[row, at], extra_owners[row, at] = target, owner
        else:
            raise AssertionError("more than two targets at one position")


def layout_pairs(specs, rows_of_pairs, *, row_len: int, num_pairs: int, share_prefix: bool = True,
                 mask_alignment: str = "next_token") -> SharedBatch:
    """Lay PairSpecs out into rows: `rows_of_pairs[r]` lists (slot, spec index) placed in row r, in order.

    share_prefix=False writes each pair as two segments [prompt, chosen] and [prompt, rejected] (packing
    without sharing, the baseline layout).
    """
    rows = len(rows_of_pairs)
    shape = (rows, row_len)
    tokens, positions = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    segment_ids, branch_ids = np.full(shape, PAD_SEGMENT, np.int32), np.zeros(shape, np.int32)
    none = 2 * num_pairs
    targets, extra_targets = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    owners, extra_owners = np.full(shape, none, np.int32), np.full(shape, none, np.int32)
    arrays = (targets, owners, extra_targets, extra_owners, none)
    pair_valid = np.zeros((num_pairs,), bool)
    for r, placed in enumerate(rows_of_pairs):
        cursor, segment = 0, 0
        for slot, index in placed:
            spec = specs[index]
            if not 0 <= slot < num_pairs or pair_valid[slot]:
                raise ValueError(f"pair slot {slot} out of range or used twice")
            pair_valid[slot] = True
            if spec.length(share_prefix) + cursor > row_len:
                raise ValueError(f"row {r} overflows row_len={row_len}")
            p = len(spec.prompt)
            branches = ((CHOSEN, spec.chosen_inputs, spec.chosen_scored, slot),
                        (REJECTED, spec.rejected_inputs, spec.rejected_scored, num_pairs + slot))
            prompt_start = None
            for branch, inputs, scored, owner in branches:
                if prompt_start is None or not share_prefix:
                    prompt_start = cursor
                    tokens[r, cursor:cursor + p] = spec.prompt
                    positions[r, cursor:cursor + p] = np.arange(p)
                    segment_ids[r, cursor:cursor + p] = segment
                    cursor += p
                n = len(inputs)
                tokens[r, cursor:cursor + n] = inputs
                positions[r, cursor:cursor + n] = p + np.arange(n)
                segment_ids[r, cursor:cursor + n] = segment
                branch_ids[r, cursor:cursor + n] = branch
                _place(arrays, r, scored, owner, cursor, prompt_start, p)
                cursor += n
                if not share_prefix:
                    segment += 1
            segment += 1 if share_prefix else 0
    return SharedBatch(tokens, positions, segment_ids, branch_ids, targets, owners, extra_targets, extra_owners,
                       pair_valid, mask_alignment)


def shared_batch_from_batch(preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
                            unpreferred_seq_mask=None, pad_id=None, mask_alignment="next_token",
                            row_len: int | None = None, pad_to_multiple_of: int = 1) -> SharedBatch:
    """One prefix-shared row per pair of a padded DPO batch (a PreferenceBatch: `**batch.as_dict()`).

    Row length: the longest shared row, rounded up to `pad_to_multiple_of`, or exactly `row_len`.
    """
    specs = pair_specs_from_batch(preferred_seq, unpreferred_seq, prompt_mask=prompt_mask,
                                  preferred_seq_mask=preferred_seq_mask, unpreferred_seq_mask=unpreferred_seq_mask,
                                  pad_id=pad_id, mask_alignment=mask_alignment)
    needed = max(spec.length() for spec in specs)
    if row_len is None:
        row_len = -(-needed // pad_to_multiple_of) * pad_to_multiple_of
    elif row_len < needed:
        raise ValueError(f"row_len={row_len} is shorter than the longest shared row ({needed})")
    return layout_pairs(specs, [[(k, k)] for k in range(len(specs))], row_len=row_len, num_pairs=len(specs),
                        mask_alignment=mask_alignment)


def shared_score_index(arrays, *, bucket: int | None = None) -> np.ndarray:
    """Host side: [R, W] positions of each row that score a token (owner or extra owner set), W bucketed.

    A row with fewer scored positions than W repeats one of its unscored positions (its owners are "none",
    so it adds nothing); W == L when a row scores every position.
    """
    none = 2 * np.asarray(arrays["pair_valid"]).shape[0]
    scored = (np.asarray(arrays["owners"]) != none) | (np.asarray(arrays["extra_owners"]) != none)
    length = scored.shape[1]
    needed = int(scored.sum(axis=1).max(initial=0))
    window = bucketed(needed, length) if bucket is None else bucketed(needed, length, bucket)
    index = np.zeros((scored.shape[0], window), np.int32)
    for row, mask in enumerate(scored):
        positions = np.flatnonzero(mask)
        if len(positions) < window:
            filler = np.flatnonzero(~mask)[0]
            positions = np.concatenate([positions, np.full(window - len(positions), filler)])
        index[row] = positions
    return index


# ------------------------------------------------------------------------------------------- device side

def branch_attention_mask(segment_ids, branch_ids):
    """[R, L, L] True where query i may attend key j: same segment, and key in the prompt or i's branch."""
    allowed = AttentionMask(segment_ids=segment_ids, branch_ids=branch_ids).allowed(segment_ids.shape[-1])
    return jnp.broadcast_to(allowed, (segment_ids.shape[0],) + allowed.shape[1:])


def shared_sequence_logprobs(token_logps, owners, num_pairs: int, reduction: str = "mean"):
    """(chosen [K], rejected [K]) per-sequence log-probs: `segment_sum` of token log-probs [..., 2] (target and
    extra target of each position) by their owners [..., 2] into the 2K+1 buckets."""
    logps = shared_pair_logps(token_logps, owners, num_pairs, reduction)
    return logps.chosen, logps.rejected


def _ranks_within_owner(owners, positions, buckets):
    """0-based rank of every entry among its owner's entries in sequence order (position ids are unique per owner:
    a position scores one token of a sequence): a sort by (owner, position), then the index minus the owner's
    first index."""
    order = jnp.lexsort((positions, owners))
    index = jnp.arange(owners.shape[0])
    sorted_owners = owners[order]
    first = jax.ops.segment_min(index, sorted_owners, num_segments=buckets)
    return jnp.zeros_like(index).at[order].set(index - first[sorted_owners])


def shared_pair_logps(token_logps, owners, num_pairs: int, reduction: str = "mean", *, positions=None,
                      ld_alpha=None, head_statistics=None, statistics=()) -> PairLogps:
    """`shared_sequence_logprobs` as a `PairLogps` (no weights), LD-DPO-scaled with `ld_alpha` (which needs the
    entries' `positions` [...], their sequence order), with `SequenceStats` when `statistics` are asked for
    (`head_statistics`: the per-position [...] head statistics, shared by a position's two targets)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}")
    statistics = check_statistics(statistics)
    check_ld_reduction(ld_alpha, reduction)

    def flat(per_target=None, per_position=None):  # [..., 2] or [...] -> entries in the owners' order
        if per_position is not None:
            per_target = jnp.stack([per_position, per_position], axis=-1)
        return jnp.concatenate([per_target[..., 0].ravel(), per_target[..., 1].ravel()])

    values, entry_owners = flat(token_logps), flat(owners)
    buckets = 2 * num_pairs + 1

    sums = jax.ops.segment_sum(values, entry_owners, num_segments=buckets)[:-1]
    counts = None
    if reduction == "mean" or ld_alpha is not None or statistics:
        counts = jax.ops.segment_sum(jnp.ones_like(values), entry_owners, num_segments=buckets)[:-1]
    if ld_alpha is not None:
        rank = _ranks_within_owner(entry_owners, flat(per_position=positions), buckets)
        shared_length = jnp.minimum(counts[:num_pairs], counts[num_pairs:])
        shared = rank < jnp.concatenate([shared_length, shared_length, jnp.zeros((1,), counts.dtype)])[entry_owners]
        shared_sums = jax.ops.segment_sum(jnp.where(shared, values, 0.0), entry_owners, num_segments=buckets)[:-1]
        tail_sums = jax.ops.segment_sum(jnp.where(shared, 0.0, values), entry_owners, num_segments=buckets)[:-1]
        logps = shared_sums + ld_alpha * tail_sums
    elif reduction == "mean":
        logps = sums / jnp.maximum(counts, 1.0)
    else:
        logps = sums
    if not statistics:
        return PairLogps(logps[:num_pairs], logps[num_pairs:])
    head_statistics = head_statistics or {}
    columns = {"tokens": counts, "logp_sum": sums}
    if "sq_probs" in statistics:  # WPO's weights are detached
        columns["wpo_sum"] = jax.lax.stop_gradient(
            jax.ops.segment_sum(values - flat(per_position=head_statistics["sq_probs"]), entry_owners,
                                num_segments=buckets)[:-1])
    if "mean_logits" in statistics:
        columns["logit_sum"] = jax.ops.segment_sum(flat(per_position=head_statistics["mean_logits"]), entry_owners,
                                                   num_segments=buckets)[:-1]
    chosen = SequenceStats(**{name: column[:num_pairs] for name, column in columns.items()})
    rejected = SequenceStats(**{name: column[num_pairs:] for name, column in columns.items()})
    return PairLogps(logps[:num_pairs], logps[num_pairs:], None, chosen, rejected)


def _as_arrays(shared_batch):
    if isinstance(shared_batch, SharedBatch):
        return shared_batch.as_dict()
    return shared_batch


def check_alignment(shared_batch, mask_alignment):
    """A SharedBatch fixes its alignment when its targets are chosen: another alignment is an error."""
    if mask_alignment is None or not isinstance(shared_batch, SharedBatch):
        return
    if shared_batch.mask_alignment != mask_alignment:
        raise ValueError(f"the batch was built with mask_alignment={shared_batch.mask_alignment!r}, "
                         f"not {mask_alignment!r}; rebuild it (alignment is fixed when the targets are chosen)")


def prefix_shared_pair_logprobs(model, shared_batch, *, reduction="mean", mask_alignment=None, ld_alpha=None,
                                **forward_options):
    """(chosen [K], rejected [K]) per-sequence log-probs from one forward over a SharedBatch (or its dict).

    Equal to `layouts.padded.pair_sequence_logprobs` on the unshared batch (same reduction and alignment).
    Empty slots (pair_valid False) give 0. Called eagerly, rows longer than max_seq_len are refused by the
    model's own token check; under jit they are fine for rotary/alibi/T5 (positions stay < max_seq_len).
    """
    logps = prefix_shared_pair_logps(model, shared_batch, reduction=reduction, mask_alignment=mask_alignment,
                                     ld_alpha=ld_alpha, forward=forward_options)
    return logps.chosen, logps.rejected


def prefix_shared_pair_logps(model, shared_batch, *, reduction="mean", mask_alignment=None, ld_alpha=None,
                             statistics=(), forward=None) -> PairLogps:
    """`prefix_shared_pair_logprobs` as a `PairLogps` (weights: `pair_valid`), with `SequenceStats` when
    `statistics` are asked for."""
    options = ForwardOptions.of(forward)
    check_layout(model, "prefix_shared")
    check_alignment(shared_batch, mask_alignment)
    arrays = _as_arrays(shared_batch)
    num_pairs = arrays["pair_valid"].shape[0]
    model = with_compute_dtype(model, options.compute_dtype)
    positions = jnp.asarray(arrays["positions"])
    attention = AttentionMask(segment_ids=jnp.asarray(arrays["segment_ids"]),
                              branch_ids=jnp.asarray(arrays["branch_ids"]), positions=positions)
    hidden = model.hidden_states(arrays["tokens"], positions=positions, attention=attention, remat=options.remat,
                                 attention_backend=options.attention)
    targets = jnp.stack([jnp.asarray(arrays["targets"]), jnp.asarray(arrays["extra_targets"])], axis=-1)
    owners = jnp.stack([jnp.asarray(arrays["owners"]), jnp.asarray(arrays["extra_owners"])], axis=-1)
    index = arrays.get("score_index") if options.score_positions == "scored" else None
    if index is not None:
        index = jnp.asarray(index)
        owners = jnp.take_along_axis(owners, index[..., None], axis=1)
        positions = jnp.take_along_axis(positions, index, axis=1)
    token_logps, head_statistics = scored_head_statistics(model, hidden, targets, index, options, statistics)
    logps = shared_pair_logps(token_logps, owners, num_pairs, reduction, positions=positions, ld_alpha=ld_alpha,
                              head_statistics=head_statistics, statistics=statistics)
    return logps._replace(weights=jnp.asarray(arrays["pair_valid"]))


SHARED_KEYS = SharedBatch.ARRAY_KEYS + ("score_index",)


@dataclasses.dataclass(frozen=True)
class PrefixSharedLayout:
    """One [prompt, chosen, rejected] row per pair: the prompt is computed once (same losses as padded)."""
    mask_alignment: str = "next_token"
    name: str = "prefix_shared"
    keys: tuple = SHARED_KEYS

    def check(self, model=None, *, num_devices=1, grad_accum=1) -> None:
        if num_devices != 1:
            raise ValueError(f"layout {self.name!r} runs on one device for now (mesh of {num_devices}); "
                             "use layout 'padded'")
        if grad_accum != 1:
            raise NotImplementedError(f"layout {self.name!r} needs grad_accum 1 (put more pairs in a batch instead)")
        if model is not None:
            check_layout(model, self.name)

    def pair_logprobs(self, model, batch, *, reduction="mean", forward=None, ld_alpha=None,
                      statistics=()) -> PairLogps:
        return prefix_shared_pair_logps(model, batch, reduction=reduction, mask_alignment=self.mask_alignment,
                                        ld_alpha=ld_alpha, statistics=statistics, forward=forward)

    def batches(self, examples, *, batch_size, seed, max_len, pad_id, forward=None, row_len=None, **_):
        return SharedBatches(examples, batch_size=batch_size, seed=seed, max_len=max_len, pad_id=pad_id,
                             mask_alignment=self.mask_alignment, forward=forward, row_len=row_len)


class SharedBatches:
    """The padded batches of a run, each laid out as one shared row per pair of `row_len` (2 x max_len)."""

    def __init__(self, examples, *, batch_size, seed, max_len, pad_id, mask_alignment, forward=None, row_len=None):
        self.forward = ForwardOptions.of(forward)
        self.padded = PaddedBatches(examples, batch_size=batch_size, seed=seed, max_len=max_len, pad_id=pad_id,
                                    mask_alignment=mask_alignment, forward=self.forward.replace(score_positions="all"))
        self.pad_id, self.mask_alignment = pad_id, mask_alignment
        self.row_len = row_len or 2 * max_len  # a prefix-shared pair is at most prompt + 2 completions

    def get_batch(self, step):
        batch = self.padded.dataset.get_batch(step)
        shared = shared_batch_from_batch(**batch.as_dict(), pad_id=self.pad_id, mask_alignment=self.mask_alignment,
                                         row_len=self.row_len)
        return with_score_index(shared.as_dict(), self.forward), shared.num_scored_tokens()


def with_score_index(arrays, forward: ForwardOptions, *, bucket: int | None = None):
    """The shared batch's arrays plus `score_index` when only scored positions go to the head."""
    if forward.score_positions != "scored":
        return arrays
    return dict(arrays, score_index=shared_score_index(arrays, bucket=bucket))
