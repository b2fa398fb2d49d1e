"""`dpo_loss`: model + batch -> (loss, metrics), the functional mirror of `dpo_torch.DPO.forward`.

The reference gets no gradient (its log-probs pass through `stop_gradient`), so
`nnx.value_and_grad(lambda policy: dpo_loss(policy, reference, ...)[0])` differentiates the policy only.
`reference` may be a model, precomputed `ReferenceLogps`, or None for reference-free losses (simpo).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from dpo_jax.logprobs import MASK_ALIGNMENTS, REDUCTIONS, scored_mask, sequence_logprobs, token_logprobs
from dpo_jax.losses import preference_loss, validate_loss_options
from dpo_jax.validation import check_scored_rows, is_concrete, validate_dpo_inputs


class ReferenceLogps(NamedTuple):
    """Precomputed per-sequence reference log-probs [B] (with the same reduction and alignment)."""
    chosen: jax.Array
    rejected: jax.Array


def validate_options(*, beta, loss_type, reduction, mask_alignment, label_smoothing, divergence, alpha, gamma,
                     has_reference):
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}")
    if mask_alignment not in MASK_ALIGNMENTS:
        raise ValueError(f"unknown mask_alignment {mask_alignment!r}; expected one of {', '.join(MASK_ALIGNMENTS)}")
    validate_loss_options(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, divergence=divergence,
                          alpha=alpha, gamma=gamma, has_reference=has_reference)


def sequence_masks(preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
                   unpreferred_seq_mask=None, pad_id=None, mask_alignment="next_token"):
    """Scored masks [B, N-1] for chosen and rejected, with x-transformers' pad_id convention."""
    if pad_id is not None:
        if preferred_seq_mask is None:
            preferred_seq_mask = preferred_seq != pad_id
        if unpreferred_seq_mask is None:
            unpreferred_seq_mask = unpreferred_seq != pad_id
    return (scored_mask(prompt_mask, preferred_seq_mask, mask_alignment),
            scored_mask(prompt_mask, unpreferred_seq_mask, mask_alignment))


def pair_sequence_logprobs(model, preferred_seq, unpreferred_seq, chosen_mask, rejected_mask, reduction="mean"):
    """Per-sequence log-probs of chosen and rejected from one concatenated [2B] forward of `model`."""
    batch = preferred_seq.shape[0]
    seqs = jnp.concatenate([preferred_seq, unpreferred_seq], axis=0)
    masks = jnp.concatenate([chosen_mask, rejected_mask], axis=0)
    logits = model(seqs[:, :-1])  # no padding mask: right padding is invisible to causal attention
    logps = sequence_logprobs(token_logprobs(logits, seqs[:, 1:]), masks, reduction)
    return logps[:batch], logps[batch:]


def reference_logprobs(reference, preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
                       unpreferred_seq_mask=None, pad_id=None, reduction="mean", mask_alignment="next_token"):
    """ReferenceLogps of a batch, e.g. to precompute them once for a fixed reference."""
    chosen_mask, rejected_mask = sequence_masks(
        preferred_seq, unpreferred_seq, prompt_mask=prompt_mask, preferred_seq_mask=preferred_seq_mask,
        unpreferred_seq_mask=unpreferred_seq_mask, pad_id=pad_id, mask_alignment=mask_alignment)
    chosen, rejected = pair_sequence_logprobs(reference, preferred_seq, unpreferred_seq, chosen_mask,
                                              rejected_mask, reduction)
    return ReferenceLogps(jax.lax.stop_gradient(chosen), jax.lax.stop_gradient(rejected))


def dpo_loss(policy, reference, preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
             unpreferred_seq_mask=None, beta=0.1, pad_id=None, loss_type="sigmoid", reduction="mean",
             mask_alignment="next_token", label_smoothing=0.0, divergence="reverse_kl", alpha=0.5, gamma=0.5):
    """DPO loss and TRL-named metrics; same arguments and defaults as `dpo_torch.DPO`.

    Inputs are validated when concrete (outside jit): shapes, dtypes, vocabulary, max_seq_len, and that every
    row has at least one scored token.
    """
    validate_options(beta=beta, loss_type=loss_type, reduction=reduction, mask_alignment=mask_alignment,
                     label_smoothing=label_smoothing, divergence=divergence, alpha=alpha, gamma=gamma,
                     has_reference=reference is not None)
    concrete = is_concrete(preferred_seq, unpreferred_seq, prompt_mask, preferred_seq_mask, unpreferred_seq_mask)
    if concrete:
        validate_dpo_inputs(preferred_seq, unpreferred_seq, prompt_mask=prompt_mask,
                            preferred_seq_mask=preferred_seq_mask, unpreferred_seq_mask=unpreferred_seq_mask,
                            num_tokens=policy.config.num_tokens, max_seq_len=policy.config.max_seq_len)
    preferred_seq, unpreferred_seq = jnp.asarray(preferred_seq), jnp.asarray(unpreferred_seq)
    chosen_mask, rejected_mask = sequence_masks(
        preferred_seq, unpreferred_seq, prompt_mask=jnp.asarray(prompt_mask),
        preferred_seq_mask=None if preferred_seq_mask is None else jnp.asarray(preferred_seq_mask),
        unpreferred_seq_mask=None if unpreferred_seq_mask is None else jnp.asarray(unpreferred_seq_mask),
        pad_id=pad_id, mask_alignment=mask_alignment)
    if concrete:
        check_scored_rows(chosen_mask, "preferred_seq")
        check_scored_rows(rejected_mask, "unpreferred_seq")

    policy_chosen, policy_rejected = pair_sequence_logprobs(policy, preferred_seq, unpreferred_seq, chosen_mask,
                                                            rejected_mask, reduction)
    ref_chosen = ref_rejected = None
    if isinstance(reference, ReferenceLogps) or isinstance(reference, tuple):
        ref_chosen, ref_rejected = (jax.lax.stop_gradient(jnp.asarray(x)) for x in reference)
    elif reference is not None:
        ref_chosen, ref_rejected = pair_sequence_logprobs(reference, preferred_seq, unpreferred_seq, chosen_mask,
                                                          rejected_mask, reduction)
        ref_chosen, ref_rejected = jax.lax.stop_gradient(ref_chosen), jax.lax.stop_gradient(ref_rejected)
    return preference_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta, loss_type=loss_type,
                           label_smoothing=label_smoothing, divergence=divergence, alpha=alpha, gamma=gamma)
