"""`dpo_loss`: model + batch -> (loss, metrics), the functional mirror of `dpo_torch.DPO.forward`.

The reference gets no gradient (its log-probs pass through `stop_gradient`), so
`nnx.value_and_grad(lambda policy: dpo_loss(policy, reference, ...)[0])` differentiates the policy only.
`reference` may be a model, precomputed `ReferenceLogps`, or None for reference-free losses (simpo).
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from dpo_jax.chunked_head import DEFAULT_CHUNK_SIZE, chunked_token_logprobs
from dpo_jax.logprobs import (MASK_ALIGNMENTS, REDUCTIONS, scored_mask, sequence_logprobs, token_logprobs,
                              window_for_masks, window_indices)
from dpo_jax.losses import preference_loss, validate_loss_options
from dpo_jax.remat import validate_remat
from dpo_jax.validation import check_scored_rows, is_concrete, validate_dpo_inputs

LOGPROB_HEADS = ("full", "chunked")
SCORE_POSITIONS = ("scored", "all")


@dataclasses.dataclass(frozen=True)
class FastPath:
    """How the log-probs are computed (not what): every combination gives the plain path's numbers.

    logprob_head: "full" builds the [2B, T, V] logits; "chunked" uses `chunked_head` (O(chunk x V) memory).
    head_chunk_size: tokens per head chunk for "chunked".
    score_positions: "scored" sends only a static window covering each row's scored span to the head
      (`score_window` tokens; when None it is computed from the masks if they are concrete, else the head
      sees all positions); "all" sends every position.
    remat: per-block rematerialisation, None/"none" | "full" | "dots_saveable" (`dpo_jax.remat`).
    compute_dtype: e.g. jnp.bfloat16: parameters cast and activations computed in it; the logsumexp, the
      log-probs and the loss stay float32. None keeps the model's own dtype.
    """
    logprob_head: str = "full"
    head_chunk_size: int = DEFAULT_CHUNK_SIZE
    score_positions: str = "scored"
    score_window: int | None = None
    remat: str | None = None
    compute_dtype: Any = None

    def __post_init__(self):
        if self.logprob_head not in LOGPROB_HEADS:
            raise ValueError(f"unknown logprob_head {self.logprob_head!r}; expected one of {', '.join(LOGPROB_HEADS)}")
        if self.score_positions not in SCORE_POSITIONS:
            raise ValueError(f"unknown score_positions {self.score_positions!r}; "
                             f"expected one of {', '.join(SCORE_POSITIONS)}")
        if not isinstance(self.head_chunk_size, int) or self.head_chunk_size < 1:
            raise ValueError(f"head_chunk_size must be a positive int, got {self.head_chunk_size!r}")
        if self.score_window is not None and (not isinstance(self.score_window, int) or self.score_window < 1):
            raise ValueError(f"score_window must be a positive int or None, got {self.score_window!r}")
        validate_remat(self.remat)

    def window_for(self, masks):
        """The static window size for [R, T] scored masks, or None for every position."""
        if self.score_positions == "all":
            return None
        if self.score_window is not None:
            window = self.score_window
        elif is_concrete(masks):
            window = window_for_masks(masks)
        else:
            return None
        return None if window >= masks.shape[-1] else window


@functools.lru_cache(maxsize=None)
def _graphdef_in_dtype(model_config, dtype):
    """The same architecture computing in `dtype` (abstract: no weights are materialised)."""
    from dpo_jax.model import Transformer
    abstract = nnx.eval_shape(lambda: Transformer(model_config.replace(dtype=dtype), rngs=nnx.Rngs(0)))
    return nnx.split(abstract, nnx.Param, ...)[0]


def with_compute_dtype(model, dtype):
    """`model` computing in `dtype`, its floating parameters cast (gradients flow back to the originals)."""
    if jnp.dtype(model.config.dtype) == jnp.dtype(dtype):
        return model
    _, params, rest = nnx.split(model, nnx.Param, ...)
    params = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    return nnx.merge(_graphdef_in_dtype(model.config, jnp.dtype(dtype)), params, rest)


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


def pair_sequence_logprobs(model, preferred_seq, unpreferred_seq, chosen_mask, rejected_mask, reduction="mean",
                           **fast_options):
    """Per-sequence log-probs of chosen and rejected from one concatenated [2B] forward of `model`.

    `fast_options` are the `FastPath` fields (docs/fast-path.md); every setting gives the same numbers.
    """
    options = FastPath(**fast_options)
    batch = preferred_seq.shape[0]
    seqs = jnp.concatenate([preferred_seq, unpreferred_seq], axis=0)
    masks = jnp.concatenate([chosen_mask, rejected_mask], axis=0)
    if options.compute_dtype is not None:
        model = with_compute_dtype(model, options.compute_dtype)
    # no padding mask goes to the model: right padding is invisible to causal attention
    hidden = model.hidden_states(seqs[:, :-1], remat=options.remat)
    targets, overflow = seqs[:, 1:], None
    window = options.window_for(masks)
    if window is not None:
        index, overflow = window_indices(masks, window)
        hidden = jnp.take_along_axis(hidden, index[..., None], axis=1)
        targets = jnp.take_along_axis(targets, index, axis=1)
        masks = jnp.take_along_axis(masks, index, axis=1)
    if options.logprob_head == "chunked":
        weight, scale = model.head_weight()
        token_logps = chunked_token_logprobs(hidden, weight, targets, scale=scale, chunk_size=options.head_chunk_size)
    else:
        token_logps = token_logprobs(model.unembed(hidden), targets)
    logps = sequence_logprobs(token_logps, masks, reduction)
    if overflow is not None:  # a scored span longer than the static window: refuse loudly, never truncate
        logps = jnp.where(overflow, jnp.nan, logps)
    return logps[:batch], logps[batch:]


def reference_logprobs(reference, preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
                       unpreferred_seq_mask=None, pad_id=None, reduction="mean", mask_alignment="next_token",
                       **fast_options):
    """ReferenceLogps of a batch, e.g. to precompute them once for a fixed reference (`FastPath` options)."""
    chosen_mask, rejected_mask = sequence_masks(
        preferred_seq, unpreferred_seq, prompt_mask=prompt_mask, preferred_seq_mask=preferred_seq_mask,
        unpreferred_seq_mask=unpreferred_seq_mask, pad_id=pad_id, mask_alignment=mask_alignment)
    chosen, rejected = pair_sequence_logprobs(reference, preferred_seq, unpreferred_seq, chosen_mask,
                                              rejected_mask, reduction, **fast_options)
    return ReferenceLogps(jax.lax.stop_gradient(chosen), jax.lax.stop_gradient(rejected))


def dpo_loss(policy, reference, preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
             unpreferred_seq_mask=None, beta=0.1, pad_id=None, loss_type="sigmoid", reduction="mean",
             mask_alignment="next_token", label_smoothing=0.0, divergence="reverse_kl", alpha=0.5, gamma=0.5,
             **fast_options):
    """DPO loss and TRL-named metrics; same arguments and defaults as `dpo_torch.DPO`.

    `fast_options` (`FastPath` fields: logprob_head, head_chunk_size, score_positions, score_window, remat,
    compute_dtype) choose how the log-probs are computed for policy and reference; never what they are.

    Inputs are validated when concrete (outside jit): shapes, dtypes, vocabulary, max_seq_len, and that every
    row has at least one scored token.
    """
    validate_options(beta=beta, loss_type=loss_type, reduction=reduction, mask_alignment=mask_alignment,
                     label_smoothing=label_smoothing, divergence=divergence, alpha=alpha, gamma=gamma,
                     has_reference=reference is not None)
    FastPath(**fast_options)  # unknown or invalid options fail here, before any compute
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
                                                            rejected_mask, reduction, **fast_options)
    ref_chosen = ref_rejected = None
    if isinstance(reference, ReferenceLogps) or isinstance(reference, tuple):
        ref_chosen, ref_rejected = (jax.lax.stop_gradient(jnp.asarray(x)) for x in reference)
    elif reference is not None:
        ref_chosen, ref_rejected = pair_sequence_logprobs(reference, preferred_seq, unpreferred_seq, chosen_mask,
                                                          rejected_mask, reduction, **fast_options)
        ref_chosen, ref_rejected = jax.lax.stop_gradient(ref_chosen), jax.lax.stop_gradient(ref_rejected)
    return preference_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta, loss_type=loss_type,
                           label_smoothing=label_smoothing, divergence=divergence, alpha=alpha, gamma=gamma)
