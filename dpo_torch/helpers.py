"""The seed's small helpers, kept with its names and semantics (x-transformers 2.31 `dpo.py`)."""

import torch


def exists(v):
    """True when `v` is not None."""
    return v is not None


def default(v, d):
    return v if exists(v) else d


def freeze_all_layers_(module):
    """Stop every parameter of `module` from receiving gradients (in place, hence the trailing underscore)."""
    for param in module.parameters():
        param.requires_grad = False
    return module


def maybe_and_mask(*masks):
    """Logical AND of the masks that are not None; None when every mask is None."""
    masks = [mask for mask in masks if exists(mask)]
    if not masks:
        return None
    combined, *rest = masks
    for mask in rest:
        combined = combined & mask
    return combined


def masked_sum(log_probs, mask=None):
    """Sum over the last axis of the entries where `mask` is True (all of them without a mask)."""
    if not exists(mask):
        return log_probs.sum(dim=-1)
    _check_mask_shape(log_probs, mask)
    return log_probs.masked_fill(~mask, 0.0).sum(dim=-1)


def masked_mean(log_probs, mask=None):
    """Mean over the last axis of the entries where `mask` is True.

    The mask must already be aligned with `log_probs` (see `scored_mask`): unlike x-transformers, a mask one
    longer than the log-probs is refused instead of being trimmed silently, because trimming the wrong end is
    exactly the off-by-one DESIGN.md section 3 describes. A row with no True entry gives 0 (x-transformers'
    clamp); `DPO.forward` refuses such rows before they get here.
    """
    if not exists(mask):
        return log_probs.mean(dim=-1)
    _check_mask_shape(log_probs, mask)
    total = log_probs.masked_fill(~mask, 0.0).sum(dim=-1)
    count = mask.sum(dim=-1)
    return total / count.clamp(min=1)


def _check_mask_shape(log_probs, mask):
    if mask.shape != log_probs.shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not match log_probs of shape {tuple(log_probs.shape)}; "
            "align a per-token mask with scored_mask(...) first"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}")
