"""Per-token and per-sequence log-probs of a causal LM (JAX side; mirrors `dpo_torch/logprobs.py`)."""

import jax.numpy as jnp

from dpo_jax.ops.logprob_head import token_logprobs

__all__ = ["MASK_ALIGNMENTS", "REDUCTIONS", "token_logprobs", "log_prob_from_model_and_seq", "maybe_and_mask",
           "scored_mask", "masked_sum", "masked_mean", "sequence_logprobs"]

MASK_ALIGNMENTS = ("next_token", "x_transformers")
REDUCTIONS = ("mean", "sum")


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
