"""Per-token and per-sequence log-probs of a causal LM (JAX side; mirrors `dpo_torch/logprobs.py`).

Besides the one reduced log-prob per sequence, some losses and metrics read more of the same scored tokens
(`SequenceStats`, computed only when a loss or metric asks for them, by name in `STATISTICS`):
- "token_sums": the scored-token count and the plain sum of their log-probs (sft, orpo, sigmoid_norm);
- "sq_probs": the sum of logp_t - log sum_v p_v(t)^2 over the tokens (WPO's weights);
- "mean_logits": the sum of the vocabulary-mean logit over the tokens (`logits/chosen`, `logits/rejected`).
LD-DPO (`ld_alpha`) changes the reduced log-prob itself: `ld_sequence_logprobs`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from dpo_jax.ops.logprob_head import HEAD_STATISTICS, token_logprobs

__all__ = ["MASK_ALIGNMENTS", "REDUCTIONS", "STATISTICS", "SequenceStats", "check_statistics", "token_logprobs",
           "log_prob_from_model_and_seq", "maybe_and_mask", "scored_mask", "masked_sum", "masked_mean",
           "sequence_logprobs", "check_ld_reduction", "ld_sequence_logprobs", "sequence_statistics"]

MASK_ALIGNMENTS = ("next_token", "x_transformers")
REDUCTIONS = ("mean", "sum")
STATISTICS = ("token_sums",) + HEAD_STATISTICS


class SequenceStats(NamedTuple):
    """Per-sequence statistics [B] of the scored tokens, beside the reduced log-prob; None: not computed.

    tokens: how many tokens are scored (float); logp_sum: their log-probs summed, never LD-scaled; wpo_sum: the sum
    of logp_t - log sum_v p_v(t)^2 (WPO); logit_sum: the sum of the vocabulary-mean logit (TRL's logits/*).
    """
    tokens: jax.Array
    logp_sum: jax.Array
    wpo_sum: jax.Array | None = None
    logit_sum: jax.Array | None = None


def check_statistics(statistics):
    """The requested statistics as a tuple of known names, in `STATISTICS` order (a static argument)."""
    statistics = tuple(statistics)
    unknown = [name for name in statistics if name not in STATISTICS]
    if unknown:
        raise ValueError(f"unknown statistic(s) {unknown}; expected some of {', '.join(STATISTICS)}")
    return tuple(name for name in STATISTICS if name in statistics)


def log_prob_from_model_and_seq(model, seq):
    """Log-probs [B, N-1] of `seq` under `model`: entry t scores token t+1 given tokens 0..t.

    No padding mask goes to the model (as in x-transformers): with right padding, causal attention already
    keeps pads out of every real token's context.
    """
    logits = model(seq[:, :-1])
    return token_logprobs(logits, seq[:, 1:])


def maybe_and_mask(*masks):
    """Logical AND of the masks that are not None; None when every mask is None."""
    masks = [mask for mask in masks if mask is not None]
    if not masks:
        return None
    combined, *rest = masks
    for mask in rest:
        combined = combined & mask
    return combined


def scored_mask(prompt_mask, seq_mask=None, alignment="next_token"):
    """Which of the N-1 next-token log-probs count: response tokens that are not padding.

    Log-prob t scores token t+1, so the correct mask is `mask[:, 1:]`; "x_transformers" reproduces 2.31's
    `mask[:, :-1]` (skips the first response token, scores the first pad; DESIGN.md section 3).
    """
    mask = maybe_and_mask(~prompt_mask, seq_mask)
    if alignment == "next_token":
        return mask[:, 1:]
    if alignment == "x_transformers":
        return mask[:, :-1]
    raise ValueError(f"unknown mask_alignment {alignment!r}; expected one of {', '.join(MASK_ALIGNMENTS)}")


def masked_sum(values, mask=None):
    if mask is None:
        return values.sum(axis=-1)
    return jnp.where(mask, values, 0.0).sum(axis=-1)


def masked_mean(values, mask=None):
    """Masked mean over the last axis; an all-False row gives 0 (callers refuse such rows up front)."""
    if mask is None:
        return values.mean(axis=-1)
    count = mask.sum(axis=-1)
    return masked_sum(values, mask) / jnp.maximum(count, 1)


def sequence_logprobs(token_logps, mask, reduction="mean"):
    """Reduce token log-probs [B, T] to one number per sequence [B]: masked mean (the seed) or sum (the paper)."""
    if reduction == "mean":
        return masked_mean(token_logps, mask)
    if reduction == "sum":
        return masked_sum(token_logps, mask)
    raise ValueError(f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}")


def check_ld_reduction(ld_alpha, reduction):
    """LD-DPO rescales summed log-probs: refuse `ld_alpha` with another reduction (it would be silently ignored)."""
    if ld_alpha is not None and reduction != "sum":
        raise ValueError(f"ld_alpha (LD-DPO) rescales summed log-probs: it needs reduction='sum', got {reduction!r}")


def ld_sequence_logprobs(chosen_token_logps, rejected_token_logps, chosen_mask, rejected_mask, ld_alpha):
    """LD-DPO per-sequence log-probs (chosen [B], rejected [B]): the sum over the first min(|y_c|, |y_r|) scored
    tokens of the pair plus `ld_alpha` times the sum over the rest (TRL's definition; both completions alike).

    References: Liu et al. 2024, "Length Desensitization in Direct Preference Optimization" (arXiv:2409.06411).
    """
    shared_length = jnp.minimum(chosen_mask.sum(axis=-1), rejected_mask.sum(axis=-1))[:, None]

    def reduce(token_logps, mask):
        rank = jnp.cumsum(mask, axis=-1)  # 1-based position among the scored tokens
        shared = masked_sum(token_logps, mask & (rank <= shared_length))
        tail = masked_sum(token_logps, mask & (rank > shared_length))
        return shared + ld_alpha * tail

    return reduce(chosen_token_logps, chosen_mask), reduce(rejected_token_logps, rejected_mask)


def sequence_statistics(token_logps, mask, statistics, head_statistics=None):
    """`SequenceStats` [B] of token log-probs [B, T] under `mask` [B, T], or None when nothing is asked for.

    `head_statistics` holds the per-position "sq_probs" / "mean_logits" [B, T] of the logits (when asked for).
    """
    statistics = check_statistics(statistics)
    if not statistics:
        return None
    head_statistics = head_statistics or {}
    tokens = mask.sum(axis=-1).astype(token_logps.dtype)
    wpo_sum = logit_sum = None
    if "sq_probs" in statistics:  # WPO's weights are detached (no gradient through the policy's own probs)
        wpo_sum = jax.lax.stop_gradient(masked_sum(token_logps - head_statistics["sq_probs"], mask))
    if "mean_logits" in statistics:
        logit_sum = masked_sum(head_statistics["mean_logits"], mask)
    return SequenceStats(tokens, masked_sum(token_logps, mask), wpo_sum, logit_sum)
