"""Per-token and per-sequence log-probs of a causal LM (PyTorch side; mirrors `dpo_jax/logprobs.py`)."""

import torch

from dpo_torch.helpers import masked_mean, masked_sum, maybe_and_mask

MASK_ALIGNMENTS = ("next_token", "x_transformers")
REDUCTIONS = ("mean", "sum")


def model_logits(output):
    """The logits of a model's output: x-transformers returns them; a transformers causal LM returns an output
    object with `.logits`."""
    if torch.is_tensor(output):
        return output
    logits = getattr(output, "logits", None)
    if not torch.is_tensor(logits):
        raise TypeError(f"the model returned {type(output).__name__}, neither logits nor an output with .logits")
    return logits


def log_prob_from_model_and_seq(model, seq):
    """Log-probs [B, N-1] of `seq` under `model`: entry t scores token t+1 given tokens 0..t.

    Computed as x-transformers 2.31 does (log_softmax, then gather), so the compatibility mode is bit-exact.
    `model` is an x-transformers `TransformerWrapper` or a transformers causal LM (its `.logits` are read).
    """
    source, target = seq[:, :-1], seq[:, 1:]
    logits = model_logits(model(source))
    return logits.log_softmax(dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)


def token_logprobs(logits, targets):
    """Target logit minus float32 logsumexp: the same numbers as log_softmax + gather, without the copy."""
    logits = logits.float()
    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return target_logits - torch.logsumexp(logits, dim=-1)


def scored_mask(prompt_mask, seq_mask=None, alignment="next_token"):
    """Which of the N-1 next-token log-probs count: response tokens that are not padding.

    `prompt_mask` and `seq_mask` are per input token [B, N]. Log-prob t scores token t+1, so the correct
    mask is `mask[:, 1:]`; "x_transformers" reproduces 2.31's `mask[:, :-1]` (skips the first response token,
    scores the first pad; DESIGN.md section 3).
    """
    mask = maybe_and_mask(~prompt_mask, seq_mask)
    if alignment == "next_token":
        return mask[:, 1:]
    if alignment == "x_transformers":
        return mask[:, :-1]
    raise ValueError(f"unknown mask_alignment {alignment!r}; expected one of {', '.join(MASK_ALIGNMENTS)}")


def sequence_logprobs(token_logps, mask, reduction="mean"):
    """Reduce token log-probs [B, T] to one number per sequence [B]: masked mean (the seed) or sum (the paper)."""
    if reduction == "mean":
        return masked_mean(token_logps, mask)
    if reduction == "sum":
        return masked_sum(token_logps, mask)
    raise ValueError(f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}")
