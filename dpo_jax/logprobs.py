"""Per-token and per-sequence log-probs of a causal LM (JAX side; mirrors `dpo_torch/logprobs.py`)."""

import jax
import jax.numpy as jnp

MASK_ALIGNMENTS = ("next_token", "x_transformers")
REDUCTIONS = ("mean", "sum")


def token_logprobs(logits, targets):
    """Target logit minus float32 logsumexp [B, T]: log_softmax + gather without the [B, T, V] copy."""
    logits = logits.astype(jnp.float32)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return target_logits - jax.nn.logsumexp(logits, axis=-1)


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


# ---- scoring only the scored positions (the fast path's head skips prompt and padding) -----------------

def scored_span(mask):
    """(first scored index, span length) per row of a [R, T] mask; span = last - first + 1 (0 if none)."""
    positions = jnp.arange(mask.shape[-1])
    first = jnp.where(mask, positions, mask.shape[-1]).min(axis=-1)
    last = jnp.where(mask, positions, -1).max(axis=-1)
    return first, jnp.maximum(last - first + 1, 0)


def window_for_masks(*masks, bucket=64):
    """Host side: the static window size covering every row's scored span, rounded up to `bucket`.

    Rounding keeps the number of distinct jit shapes small when completion lengths vary between batches.
    """
    import numpy as np
    width = max(int(np.asarray(mask).shape[-1]) for mask in masks)
    spans = [int(np.asarray(scored_span(jnp.asarray(mask))[1]).max(initial=0)) for mask in masks]
    window = -(-max(max(spans), 1) // bucket) * bucket
    return min(window, width)


def window_indices(mask, window):
    """Static-size gather indices [R, window] covering each row's scored span, and rows that overflow it.

    The window starts at the first scored position, shifted left when it would run past the end, so it never
    repeats a position. A row whose span is longer than `window` is flagged (its log-prob becomes NaN).
    """
    length = mask.shape[-1]
    first, span = scored_span(mask)
    start = jnp.clip(first, 0, length - window)
    return start[:, None] + jnp.arange(window)[None], span > window
