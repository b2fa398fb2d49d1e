"""Prefix sharing: score chosen and rejected of a pair from ONE forward pass over [prompt, chosen, rejected].

Layout of one pair (one "segment"; `dpo_jax.packing` puts several per row):

    tokens     p0 p1 .. p(P-1) | c0 .. c(k-1)     | r0 .. r(m-1)
    positions  0  1  .. P-1    | P  .. P+k-1      | P  .. P+m-1      (rejected restarts where the prompt ends)
    branch     0  0  .. 0      | 1  .. 1          | 2  .. 2

Attention (built inside jit from segment and branch ids, AND-ed with the model's causal mask): a query sees a
key of the same segment whose branch is 0 (prompt) or its own branch, so the rejected branch never sees the
chosen tokens and every token sees exactly the context, at exactly the positions, it has in the unshared
[prompt, completion] row. Every positional scheme sees only positions (learned table, rotary, alibi and T5
all use pos or pos_j - pos_i), so the per-token logits are the unshared ones.

The paper duplicates the last prompt token so that rejected token 0 is predicted from the prompt; here the
logits at the prompt's last position already are that prediction, so rejected token 0 is gathered from the
same logit row with a second target (`extra_targets`): one token less per pair, same numbers.
A branch holds only the tokens that serve as context for a scored token (the unshared path also drops the
last token: it runs the model on seq[:, :-1]); the scored (source, target) pairs are taken from the unshared
scored mask itself (`dpo_jax.dpo.sequence_masks`), so both mask alignments are reproduced exactly, including
x-transformers' scoring of the first pad after the response (it is a target, never an input).

Per-sequence log-probs are `segment_sum`s of token log-probs into 2K+1 buckets (chosen slot k -> k,
rejected slot k -> K + k, unscored -> 2K); mean = sum / count, exactly `masked_mean`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dpo_jax.dpo import sequence_masks
from dpo_jax.logprobs import MASK_ALIGNMENTS, REDUCTIONS

__all__ = ["PairSpec", "SharedBatch", "pair_specs_from_batch", "layout_pairs", "shared_batch_from_batch",
           "branch_attention_mask", "shared_sequence_logprobs", "prefix_shared_pair_logprobs",
           "check_model_supported"]

PROMPT, CHOSEN, REJECTED = 0, 1, 2
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


# ------------------------------------------------------------------------------------------- device side

def check_model_supported(config) -> None:
    """Refuse what cannot be exact. Memory tokens only with the learned absolute table (the model itself
    refuses custom positions with memory tokens and rotary/alibi/T5); everything else is position- or
    mask-driven and exact (residual_attn adds the previous layer's scores of the same allowed (i, j))."""
    if config.num_memory_tokens > 0 and (config.rotary_pos_emb or config.alibi_pos_bias or config.rel_pos_bias):
        raise NotImplementedError("prefix sharing/packing with num_memory_tokens needs the learned absolute "
                                  "positions: custom positions are undefined with rotary/alibi/rel_pos_bias")


def branch_attention_mask(segment_ids, branch_ids):
    """[R, L, L] True where query i may attend key j: same segment, and key in the prompt or i's branch."""
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    key_branch, query_branch = branch_ids[:, None, :], branch_ids[:, :, None]
    return same_segment & ((key_branch == PROMPT) | (key_branch == query_branch))


def shared_sequence_logprobs(logits, batch, num_pairs: int, reduction: str = "mean"):
    """(chosen [K], rejected [K]) per-sequence log-probs from logits [R, L, V] of a shared batch (dict)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}")
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    gather = lambda t: jnp.take_along_axis(logits, jnp.asarray(t)[..., None], axis=-1)[..., 0] - lse  # noqa: E731
    values = jnp.concatenate([gather(batch["targets"]).ravel(), gather(batch["extra_targets"]).ravel()])
    owners = jnp.concatenate([jnp.asarray(batch["owners"]).ravel(), jnp.asarray(batch["extra_owners"]).ravel()])
    buckets = 2 * num_pairs + 1
    sums = jax.ops.segment_sum(values, owners, num_segments=buckets)[:-1]
    if reduction == "mean":
        counts = jax.ops.segment_sum(jnp.ones_like(values), owners, num_segments=buckets)[:-1]
        sums = sums / jnp.maximum(counts, 1.0)
    return sums[:num_pairs], sums[num_pairs:]


def _as_arrays(shared_batch):
    if isinstance(shared_batch, SharedBatch):
        return shared_batch.as_dict()
    return shared_batch


def _check_alignment(shared_batch, mask_alignment):
    if mask_alignment is None or not isinstance(shared_batch, SharedBatch):
        return
    if shared_batch.mask_alignment != mask_alignment:
        raise ValueError(f"the batch was built with mask_alignment={shared_batch.mask_alignment!r}, "
                         f"not {mask_alignment!r}; rebuild it (alignment is fixed when the targets are chosen)")


def prefix_shared_pair_logprobs(model, shared_batch, *, reduction="mean", mask_alignment=None):
    """(chosen [K], rejected [K]) per-sequence log-probs from one forward over a SharedBatch (or its dict).

    Equal to `dpo_jax.dpo.pair_sequence_logprobs` on the unshared batch (same reduction and alignment).
    Empty slots (pair_valid False) give 0. Called eagerly, rows longer than max_seq_len are refused by the
    model's own token check; under jit they are fine for rotary/alibi/T5 (positions stay < max_seq_len).
    """
    check_model_supported(model.config)
    _check_alignment(shared_batch, mask_alignment)
    arrays = _as_arrays(shared_batch)
    num_pairs = arrays["pair_valid"].shape[0]
    attn_mask = branch_attention_mask(jnp.asarray(arrays["segment_ids"]), jnp.asarray(arrays["branch_ids"]))
    logits = model(arrays["tokens"], positions=arrays["positions"], attn_mask=attn_mask)
    return shared_sequence_logprobs(logits, arrays, num_pairs, reduction)
