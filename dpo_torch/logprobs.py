"""Per-token and per-sequence log-probs of a causal LM (PyTorch side; mirrors `dpo_jax/logprobs.py`).

Besides the one reduced log-prob per sequence, some losses and metrics read more of the same scored tokens
(`SequenceStats`, computed only when a loss or metric asks for them, by name in `STATISTICS`):
- "token_sums": the scored-token count and the plain sum of their log-probs (sft, orpo, sigmoid_norm);
- "sq_probs": the sum of logp_t - log sum_v p_v(t)^2 over the tokens (WPO's weights);
- "mean_logits": the sum of the vocabulary-mean logit over the tokens (`logits/chosen`, `logits/rejected`).
LD-DPO (`ld_alpha`) changes the reduced log-prob itself: `ld_sequence_logprobs`.
"""

from typing import NamedTuple

import torch

from dpo_torch.helpers import masked_mean, masked_sum, maybe_and_mask

MASK_ALIGNMENTS = ("next_token", "x_transformers")
REDUCTIONS = ("mean", "sum")
# per-position statistics of the logits (dpo_jax keeps them with its log-prob head, `ops.logprob_head`)
HEAD_STATISTICS = ("sq_probs", "mean_logits")
STATISTICS = ("token_sums",) + HEAD_STATISTICS


class SequenceStats(NamedTuple):
    """Per-sequence statistics [B] of the scored tokens, beside the reduced log-prob; None: not computed.

    tokens: how many tokens are scored (float); logp_sum: their log-probs summed, never LD-scaled; wpo_sum: the sum
    of logp_t - log sum_v p_v(t)^2 (WPO); logit_sum: the sum of the vocabulary-mean logit (TRL's logits/*).
    """
    tokens: torch.Tensor
    logp_sum: torch.Tensor
    wpo_sum: torch.Tensor | None = None
    logit_sum: torch.Tensor | None = None


def check_statistics(statistics):
    """The requested statistics as a tuple of known names, in `STATISTICS` order (a static argument)."""
    statistics = tuple(statistics)
    unknown = [name for name in statistics if name not in STATISTICS]
    if unknown:
        raise ValueError(f"unknown statistic(s) {unknown}; expected some of {', '.join(STATISTICS)}")
    return tuple(name for name in STATISTICS if name in statistics)


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


def logit_statistics(logits, statistics=()):
    """{name: [...] float32} per-position statistics of `logits` [..., V], without gradient: "sq_probs" is
    log sum_v p_v^2 = logsumexp(2 z) - 2 logsumexp(z), "mean_logits" the mean logit over the vocabulary."""
    unknown = [name for name in statistics if name not in HEAD_STATISTICS]
    if unknown:
        raise ValueError(f"unknown head statistic(s) {unknown}; expected some of {', '.join(HEAD_STATISTICS)}")
    with torch.no_grad():
        logits = logits.detach().float()
        lse = torch.logsumexp(logits, dim=-1) if "sq_probs" in statistics else None
        out = {}
        for name in statistics:
            out[name] = (torch.logsumexp(2.0 * logits, dim=-1) - 2.0 * lse if name == "sq_probs"
                         else logits.mean(dim=-1))
        return out


def log_prob_and_statistics_from_model_and_seq(model, seq, statistics=()):
    """(log-probs [B, N-1] as `log_prob_from_model_and_seq`, `logit_statistics` [B, N-1] of the same logits)."""
    source, target = seq[:, :-1], seq[:, 1:]
    logits = model(source)
    token_logps = logits.log_softmax(dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return token_logps, logit_statistics(logits, tuple(name for name in statistics if name in HEAD_STATISTICS))


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


def check_ld_reduction(ld_alpha, reduction):
    """LD-DPO rescales summed log-probs: refuse `ld_alpha` with another reduction (it would be silently ignored)."""
    if ld_alpha is not None and reduction != "sum":
        raise ValueError(f"ld_alpha (LD-DPO) rescales summed log-probs: it needs reduction='sum', got {reduction!r}")


def ld_sequence_logprobs(chosen_token_logps, rejected_token_logps, chosen_mask, rejected_mask, ld_alpha):
    """LD-DPO per-sequence log-probs (chosen [B], rejected [B]): the sum over the first min(|y_c|, |y_r|) scored
    tokens of the pair plus `ld_alpha` times the sum over the rest (TRL's definition; both completions alike).

    References: Liu et al. 2024, "Length Desensitization in Direct Preference Optimization" (arXiv:2409.06411).
    """
    shared_length = torch.minimum(chosen_mask.sum(dim=-1), rejected_mask.sum(dim=-1))[:, None]

    def reduce(token_logps, mask):
        rank = torch.cumsum(mask, dim=-1)  # 1-based position among the scored tokens
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
    tokens = mask.sum(dim=-1).to(token_logps.dtype)
    wpo_sum = logit_sum = None
    if "sq_probs" in statistics:  # WPO's weights are detached (no gradient through the policy's own probs)
        wpo_sum = masked_sum(token_logps.detach() - head_statistics["sq_probs"].to(token_logps.dtype), mask)
    if "mean_logits" in statistics:
        logit_sum = masked_sum(head_statistics["mean_logits"].to(token_logps.dtype), mask)
    return SequenceStats(tokens, masked_sum(token_logps, mask), wpo_sum, logit_sum)
