"""Checks of user input to `DPO.forward`, run before any model call.

A bad batch should fail loudly with a message naming the argument and what was expected, not as an
index error deep inside an embedding or as a NaN loss three hundred steps later.
"""

import torch

from dpo_torch.helpers import exists


def model_num_tokens(model):
    """Vocabulary size: an x-transformers `TransformerWrapper`'s `num_tokens`, a transformers model's
    `config.vocab_size` (None when the model says neither)."""
    num_tokens = getattr(model, "num_tokens", None)
    if not exists(num_tokens):
        num_tokens = getattr(getattr(model, "config", None), "vocab_size", None)
    return num_tokens


def model_max_seq_len(model):
    """Longest input the model accepts: x-transformers' `max_seq_len`, a transformers model's
    `config.max_position_embeddings`; None when unbounded (x-transformers uses max_seq_len=0 for that)."""
    max_seq_len = getattr(model, "max_seq_len", None)
    if not exists(max_seq_len):
        max_seq_len = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not exists(max_seq_len) or max_seq_len <= 0:
        return None
    return max_seq_len


def _check_token_tensor(seq, name):
    if not torch.is_tensor(seq):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(seq).__name__}")
    if seq.ndim != 2:
        raise ValueError(f"{name} must be 2-D [batch, seq_len], got {seq.ndim}-D with shape {tuple(seq.shape)}")
    if seq.dtype == torch.bool or seq.dtype.is_floating_point or seq.dtype.is_complex:
        raise TypeError(f"{name} must hold integer token ids, got dtype {seq.dtype}")


def _check_mask(mask, name, expected_shape):
    if not torch.is_tensor(mask):
        raise TypeError(f"{name} must be a bool torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(expected_shape):
        raise ValueError(
            f"{name} must have the sequences' shape {tuple(expected_shape)}, got {tuple(mask.shape)}"
        )


def _check_token_range(seq, name, num_tokens):
    out_of_range = (seq < 0) | (seq >= num_tokens)
    if out_of_range.any():
        row, col = (int(i) for i in out_of_range.nonzero()[0])
        value = int(seq[row, col])
        raise ValueError(
            f"{name} holds token id {value} at (row {row}, col {col}), outside the vocabulary [0, {num_tokens})"
        )


def validate_dpo_inputs(preferred_seq, unpreferred_seq, *, prompt_mask, preferred_seq_mask=None,
                        unpreferred_seq_mask=None, num_tokens=None, max_seq_len=None):
    """Raise TypeError / ValueError naming the offending argument; return None when the batch is usable.

    `num_tokens` / `max_seq_len` of None skip the vocabulary and length checks.
    """
    _check_token_tensor(preferred_seq, "preferred_seq")
    _check_token_tensor(unpreferred_seq, "unpreferred_seq")
    if preferred_seq.shape != unpreferred_seq.shape:
        raise ValueError(
            f"preferred_seq and unpreferred_seq must have the same shape, got {tuple(preferred_seq.shape)} "
            f"and {tuple(unpreferred_seq.shape)} (pad both to one length)"
        )
    if preferred_seq.shape[0] == 0:
        raise ValueError("preferred_seq has batch size 0: a batch needs at least one pair")
    seq_len = preferred_seq.shape[-1]
    if seq_len < 2:
        raise ValueError(
            f"sequences must have length >= 2 (one input token and one target), got length {seq_len}"
        )
    if exists(max_seq_len) and seq_len - 1 > max_seq_len:
        raise ValueError(
            f"sequences of length {seq_len} are too long: the model sees N - 1 = {seq_len - 1} tokens (the last "
            f"token is only a target), which must be <= max_seq_len = {max_seq_len}"
        )

    expected_shape = tuple(preferred_seq.shape)
    _check_mask(prompt_mask, "prompt_mask", expected_shape)
    if exists(preferred_seq_mask):
        _check_mask(preferred_seq_mask, "preferred_seq_mask", expected_shape)
    if exists(unpreferred_seq_mask):
        _check_mask(unpreferred_seq_mask, "unpreferred_seq_mask", expected_shape)

    if exists(num_tokens):
        _check_token_range(preferred_seq, "preferred_seq", num_tokens)
        _check_token_range(unpreferred_seq, "unpreferred_seq", num_tokens)


def check_left_padding(seq_mask, name):
    """`seq_mask` is `seq != pad_id`: a row that starts with pad tokens and has its own tokens later is
    left-padded; the model sees no mask, so the pads would be attended to and the log-probs change with their
    count. Right padding is exact. (An explicit sequence mask may drop any position, so it cannot tell.)"""
    if not exists(seq_mask):
        return
    left = (~seq_mask[:, 0] & seq_mask.any(dim=-1)).nonzero().flatten().tolist()
    if left:
        row = left[0]
        pads = int(seq_mask[row].int().argmax())
        raise ValueError(
            f"{name} row {row} starts with {pads} pad token(s) before its own tokens: left padding is not "
            f"supported, the model would attend to the pads; pad on the right "
            f"({len(left)} such row(s) in the batch)"
        )


def check_model(model):
    """What `DPO` can score: a module mapping token ids [B, N] to logits [B, N, V]. A bare x-transformers
    `Decoder` (no embedding, no head) is refused with the wrapper to put around it; anything else is probed once
    on two tokens, so a wrong module fails here, not deep inside torch on the first batch."""
    from dpo_torch.logprobs import model_logits

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"DPO needs a torch.nn.Module causal LM, got {type(model).__name__}")
    if type(model).__module__.startswith("x_transformers") and hasattr(model, "layer_types") \
            and not hasattr(model, "attn_layers"):
        raise TypeError(f"DPO needs a causal LM, got a bare x-transformers {type(model).__name__} (no token embedding, "
                        "no logits): wrap it, TransformerWrapper(num_tokens=..., max_seq_len=..., attn_layers="
                        f"{type(model).__name__}(...))")
    parameter = next(iter(model.parameters()), None)
    tokens = torch.zeros(1, 2, dtype=torch.long, device=None if parameter is None else parameter.device)
    with torch.no_grad():
        try:
            logits = model_logits(model(tokens))
        except (RuntimeError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise TypeError(f"DPO needs a causal LM mapping token ids [B, N] to logits [B, N, V]; "
                            f"{type(model).__name__} fails on token ids of shape (1, 2): {type(err).__name__}: "
                            f"{err}") from None
    if logits.ndim != 3 or tuple(logits.shape[:2]) != (1, 2) or not logits.dtype.is_floating_point:
        raise TypeError(f"DPO needs a causal LM mapping token ids [B, N] to logits [B, N, V]; "
                        f"{type(model).__name__} maps token ids (1, 2) to {tuple(logits.shape)} {logits.dtype}")


def check_scored_rows(mask, name):
    """Refuse a row of the aligned scored mask with no True entry.

    Decision (DESIGN.md section 3): such a row has no response token to score, so its mean is undefined.
    It is an error, never a NaN nor a silent 0 that trains; it therefore never contributes to the loss.
    """
    empty_rows = (~mask.any(dim=-1)).nonzero().flatten().tolist()
    if empty_rows:
        raise ValueError(
            f"{name}: row {empty_rows[0]} has no scored response token (rows with none: {empty_rows}); "
            "every pair needs at least one non-prompt, non-pad token after the first position"
        )


def validate_reference_logps(reference_logps, batch_size):
    """`reference_logps` must be a pair (chosen [B], rejected [B]) of floating tensors."""
    if not (isinstance(reference_logps, (tuple, list)) and len(reference_logps) == 2):
        raise TypeError(
            "reference_logps must be a pair (ref_chosen_logps [B], ref_rejected_logps [B]), "
            f"got {type(reference_logps).__name__}"
        )
    for name, logps in zip(("reference_logps[0] (chosen)", "reference_logps[1] (rejected)"), reference_logps):
        if not torch.is_tensor(logps) or not logps.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating torch.Tensor, got {getattr(logps, 'dtype', type(logps).__name__)}")
        if tuple(logps.shape) != (batch_size,):
            raise ValueError(f"{name} must have shape ({batch_size},) (one log-prob per pair), got {tuple(logps.shape)}")
