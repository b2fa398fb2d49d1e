"""`dpo_loss`: model + batch -> (loss, metrics), the functional mirror of `dpo_torch.DPO.forward`.

`batch_loss` is the one place that combines a layout's log-probs, the reference and the loss; `dpo_loss` is
it on the padded layout with the seed's argument names (`preferred_seq`, `unpreferred_seq`) and eager input
validation. Inside, the pair is `chosen` / `rejected` (TRL's names).

The reference gets no gradient (its log-probs pass through `stop_gradient`), so
`nnx.value_and_grad(lambda policy: dpo_loss(policy, reference, ...)[0])` differentiates the policy only.
`reference` may be a model, precomputed `ReferenceLogps`, or None for reference-free losses (simpo, orpo, sft).

The log-prob step computes only what the loss and metrics read: `losses.required_statistics` names the
per-sequence statistics (token sums and counts, WPO's squared-probability sums, mean logits), a static choice,
so the default options run exactly the plain path.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from dpo_jax.forward import FastPath, ForwardOptions
from dpo_jax.layouts import get_layout
from dpo_jax.layouts.padded import pair_sequence_logprobs, sequence_masks
from dpo_jax.logprobs import MASK_ALIGNMENTS, REDUCTIONS
from dpo_jax.losses import preference_loss, required_statistics, validate_loss_options
from dpo_jax.models.base import max_seq_len_of, vocab_size_of
from dpo_jax.row_guards import check_mode
from dpo_jax.validation import (check_left_padding, check_model, check_reference_logps, check_scored_rows,
                                is_concrete, validate_dpo_shapes, validate_dpo_values)

__all__ = ["ReferenceLogps", "dpo_loss", "batch_loss", "reference_logprobs", "validate_options",
           "sequence_masks", "pair_sequence_logprobs", "ForwardOptions", "FastPath"]


class ReferenceLogps(NamedTuple):
    """Precomputed per-sequence reference log-probs [B] (with the same reduction and alignment)."""
    chosen: jax.Array
    rejected: jax.Array


def validate_options(*, beta, loss_type, reduction, mask_alignment, label_smoothing, divergence, alpha, gamma,
                     has_reference, loss_weights=None, ld_alpha=None, use_weighting=False, logits_metrics=False):
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}")
    if mask_alignment not in MASK_ALIGNMENTS:
        raise ValueError(f"unknown mask_alignment {mask_alignment!r}; expected one of {', '.join(MASK_ALIGNMENTS)}")
    if not isinstance(logits_metrics, bool):
        raise ValueError(f"logits_metrics must be True or False, got {logits_metrics!r}")
    validate_loss_options(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, divergence=divergence,
                          alpha=alpha, gamma=gamma, has_reference=has_reference, loss_weights=loss_weights,
                          use_weighting=use_weighting, ld_alpha=ld_alpha, reduction=reduction)


def _step_options(ld_alpha, statistics):
    """The log-prob step's keywords beyond reduction and forward, only those that are set (a Layout written
    before them keeps working on the default path)."""
    options = {}
    if ld_alpha is not None:
        options["ld_alpha"] = ld_alpha
    if statistics:
        options["statistics"] = statistics
    return options


def _reference_pair_logps(reference, batch, layout, *, reduction, forward, ld_alpha=None, num_pairs=None):
    """(chosen, rejected) reference log-probs without gradient: precomputed (one per pair: checked against
    `num_pairs`, statically), or one forward of the reference."""
    if reference is None:
        return None, None
    if isinstance(reference, tuple):  # ReferenceLogps or a plain (chosen, rejected) pair
        if num_pairs is not None:
            check_reference_logps(reference, num_pairs)
        return tuple(jax.lax.stop_gradient(jnp.asarray(x)) for x in reference)
    logps = layout.pair_logprobs(reference, batch, reduction=reduction, forward=forward,
                                 **_step_options(ld_alpha, ()))
    return jax.lax.stop_gradient(logps.chosen), jax.lax.stop_gradient(logps.rejected)


def batch_loss(policy, reference, batch, *, layout="padded", beta=0.1, pad_id=None, loss_type="sigmoid",
               reduction="mean", mask_alignment="next_token", label_smoothing=0.0, divergence="reverse_kl",
               alpha=0.5, gamma=0.5, loss_weights=None, ld_alpha=None, use_weighting=False, logits_metrics=False,
               forward=None, checks="nan"):
    """DPO loss and TRL-named metrics of a batch dict in any layout (`dpo_jax.layouts`).

    `batch` holds the layout's arrays (`layout.keys`); `reference` is a model, `ReferenceLogps` [K] in the
    layout's pair order, or None (reference-free losses). Pairs with weight 0 (empty packed slots) count in
    neither the loss nor a metric. `forward` (ForwardOptions or a dict of its fields) chooses how the
    log-probs are computed for policy and reference, never what they are. `checks` ("nan" or "raise", padded
    layout) is what a bad row does inside jit (`dpo_jax.row_guards`).

    `loss_type` may be a list with `loss_weights` (a weighted sum; `loss/<type>` per term); `ld_alpha` (LD-DPO,
    reduction "sum") rescales the policy's and the reference's log-probs past the pair's shorter completion
    (precomputed `ReferenceLogps` must come from `reference_logprobs(..., ld_alpha=)`); `use_weighting` is WPO;
    `logits_metrics` adds `logits/chosen` and `logits/rejected`.
    """
    validate_options(beta=beta, loss_type=loss_type, reduction=reduction, mask_alignment=mask_alignment,
                     label_smoothing=label_smoothing, divergence=divergence, alpha=alpha, gamma=gamma,
                     has_reference=reference is not None, loss_weights=loss_weights, ld_alpha=ld_alpha,
                     use_weighting=use_weighting, logits_metrics=logits_metrics)
    forward = ForwardOptions.of(forward)
    layout = get_layout(layout, pad_id=pad_id, mask_alignment=mask_alignment, checks=check_mode(checks))
    statistics = required_statistics(loss_type, use_weighting=use_weighting, logits_metrics=logits_metrics)
    policy_logps = layout.pair_logprobs(policy, batch, reduction=reduction, forward=forward,
                                        **_step_options(ld_alpha, statistics))
    ref_chosen, ref_rejected = _reference_pair_logps(reference, batch, layout, reduction=reduction, forward=forward,
                                                     ld_alpha=ld_alpha, num_pairs=policy_logps.chosen.shape[0])
    return preference_loss(policy_logps.chosen, policy_logps.rejected, ref_chosen, ref_rejected, beta=beta,
                           loss_type=loss_type, label_smoothing=label_smoothing, divergence=divergence, alpha=alpha,
                           gamma=gamma, weights=policy_logps.weights, loss_weights=loss_weights,
                           use_weighting=use_weighting, chosen_stats=policy_logps.chosen_stats,
                           rejected_stats=policy_logps.rejected_stats)


def _padded_batch(preferred_seq, unpreferred_seq, prompt_mask, preferred_seq_mask, unpreferred_seq_mask):
    def as_array(x):
        return None if x is None else jnp.asarray(x)

    return {"preferred_seq": jnp.asarray(preferred_seq), "unpreferred_seq": jnp.asarray(unpreferred_seq),
            "prompt_mask": jnp.asarray(prompt_mask), "preferred_seq_mask": as_array(preferred_seq_mask),
            "unpreferred_seq_mask": as_array(unpreferred_seq_mask)}


def _validate_padded(model, preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask,
                     unpreferred_seq_mask, pad_id, mask_alignment, reference=None):
    """Checks of a padded batch: shapes and dtypes always (static, also at trace time; the length against the
    policy's and a model reference's max_seq_len); on concrete arrays the values too: vocabulary, left padding
    and scored rows."""
    for name, limit_of in (("the policy", model), ("the reference", reference)):
        if limit_of is None or isinstance(limit_of, tuple):
            continue
        validate_dpo_shapes(preferred_seq, unpreferred_seq, prompt_mask=prompt_mask,
                            preferred_seq_mask=preferred_seq_mask, unpreferred_seq_mask=unpreferred_seq_mask,
                            max_seq_len=max_seq_len_of(limit_of), model=name)
    arrays = (preferred_seq, unpreferred_seq, prompt_mask, preferred_seq_mask, unpreferred_seq_mask)
    if not is_concrete(*arrays):
        return
    validate_dpo_values(preferred_seq, unpreferred_seq, num_tokens=vocab_size_of(model))
    batch = _padded_batch(*arrays)
    if pad_id is not None:  # left padding is told by pad tokens: an explicit mask may drop any position
        for name in ("preferred_seq", "unpreferred_seq"):
            check_left_padding(batch[name] != pad_id, name)
    chosen_mask, rejected_mask = sequence_masks(
        batch["preferred_seq"], batch["unpreferred_seq"], prompt_mask=batch["prompt_mask"],
        preferred_seq_mask=batch["preferred_seq_mask"], unpreferred_seq_mask=batch["unpreferred_seq_mask"],
        pad_id=pad_id, mask_alignment=mask_alignment)
    check_scored_rows(chosen_mask, "preferred_seq")
    check_scored_rows(rejected_mask, "unpreferred_seq")


def dpo_loss(policy, reference, preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
             unpreferred_seq_mask=None, beta=0.1, pad_id=None, loss_type="sigmoid", reduction="mean",
             mask_alignment="next_token", label_smoothing=0.0, divergence="reverse_kl", alpha=0.5, gamma=0.5,
             loss_weights=None, ld_alpha=None, use_weighting=False, logits_metrics=False, checks="nan",
             **forward_options):
    """DPO loss and TRL-named metrics; same arguments and defaults as `dpo_torch.DPO`.

    `policy` and a model `reference` fulfil the model contract (`dpo_jax.models.base`): any callable
    `model(tokens) -> logits`, or a model with hidden states and an output head (the fast path).
    `forward_options` (`ForwardOptions` fields: logprob_head, head_chunk_size, score_positions, score_window,
    remat, compute_dtype, attention) choose how the log-probs are computed; never what they are.

    Shapes and dtypes are checked on every call, inside jit at trace time (float ids, a non-bool or misshapen
    mask, a batch mismatch, an empty batch, sequences longer than max_seq_len + 1 raise while tracing). Values
    are checked when concrete (outside jit): token ids in the vocabulary, no left padding, a scored token in
    every row, each a ValueError naming the row. Inside jit the same rows get a NaN log-prob, so the loss is NaN
    and a train step refuses the update (never a finite wrong number); `checks="raise"` makes them checkify
    errors that name the row (wrap the jitted function in `jax.experimental.checkify.checkify`).
    """
    check_model(policy, "policy")
    if reference is not None and not isinstance(reference, tuple):
        check_model(reference, "reference")
    options = dict(beta=beta, loss_type=loss_type, reduction=reduction, mask_alignment=mask_alignment,
                   label_smoothing=label_smoothing, divergence=divergence, alpha=alpha, gamma=gamma,
                   loss_weights=loss_weights, ld_alpha=ld_alpha, use_weighting=use_weighting,
                   logits_metrics=logits_metrics)
    validate_options(**options, has_reference=reference is not None)
    check_mode(checks)
    forward = ForwardOptions.of(forward_options)  # unknown or invalid options fail here, before any compute
    _validate_padded(policy, preferred_seq, unpreferred_seq, prompt_mask=prompt_mask,
                     preferred_seq_mask=preferred_seq_mask, unpreferred_seq_mask=unpreferred_seq_mask, pad_id=pad_id,
                     mask_alignment=mask_alignment, reference=reference)
    batch = _padded_batch(preferred_seq, unpreferred_seq, prompt_mask, preferred_seq_mask, unpreferred_seq_mask)
    return batch_loss(policy, reference, batch, layout="padded", pad_id=pad_id, forward=forward, checks=checks,
                      **options)


def reference_logprobs(reference, preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
                       unpreferred_seq_mask=None, pad_id=None, reduction="mean", mask_alignment="next_token",
                       ld_alpha=None, **forward_options):
    """ReferenceLogps of a padded batch, e.g. to precompute them once for a fixed reference (with the loss's
    reduction, alignment and ld_alpha)."""
    batch = _padded_batch(preferred_seq, unpreferred_seq, prompt_mask, preferred_seq_mask, unpreferred_seq_mask)
    layout = get_layout("padded", pad_id=pad_id, mask_alignment=mask_alignment)
    chosen, rejected = _reference_pair_logps(reference, batch, layout, reduction=reduction,
                                             forward=ForwardOptions.of(forward_options), ld_alpha=ld_alpha)
    return ReferenceLogps(chosen, rejected)
