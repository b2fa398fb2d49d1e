"""Float64 NumPy oracle of token and sequence log-probs, written from the definitions (DESIGN.md section 3).

Deliberately independent of dpo_torch / dpo_jax: plain NumPy loops over positions, so that a shared bug
in the vectorised code (an off-by-one slice, a mask applied to the wrong end) cannot hide in both.

Definitions. A model run on the inputs `seq[:, :-1]` gives logits [B, N-1, V]; log-prob t is
log softmax(logits[t])[seq[t+1]], i.e. log-prob t scores token t+1. A token j is a response token when
`prompt_mask[j]` is False and, if a sequence mask is given, `seq_mask[j]` is True.
- alignment "next_token": log-prob t counts when token t+1 (the token it scores) is a response token.
- alignment "x_transformers": log-prob t counts when token t is (x-transformers 2.31 `mask[:, :-1]`).
"""

import numpy as np

ALIGNMENTS = ("next_token", "x_transformers")
REDUCTIONS = ("mean", "sum")


def oracle_token_logprobs(logits64, seq):
    """[B, N-1] float64 log-probs of tokens 1..N-1 of `seq` [B, N] from logits [B, N-1, V] of `seq[:, :-1]`.

    Logits of length N (the model run on the whole sequence) are accepted too: the last position predicts
    a token beyond the sequence and is dropped.
    """
    logits64 = np.asarray(logits64, dtype=np.float64)
    seq = np.asarray(seq)
    batch, seq_len = seq.shape
    if logits64.shape[1] == seq_len:
        logits64 = logits64[:, :-1]
    assert logits64.shape[:2] == (batch, seq_len - 1), (logits64.shape, seq.shape)

    out = np.empty((batch, seq_len - 1), dtype=np.float64)
    for b in range(batch):
        for t in range(seq_len - 1):
            row = logits64[b, t]
            top = row.max()
            log_normaliser = top + np.log(np.exp(row - top).sum())
            out[b, t] = row[seq[b, t + 1]] - log_normaliser
    return out


def oracle_scored(seq, prompt_mask, seq_mask=None, alignment="next_token", pad_id=None):
    """[B, N-1] bool: which log-probs count, built position by position from the definition above."""
    seq = np.asarray(seq)
    prompt_mask = np.asarray(prompt_mask, dtype=bool)
    if seq_mask is None and pad_id is not None:
        seq_mask = seq != pad_id
    seq_mask = None if seq_mask is None else np.asarray(seq_mask, dtype=bool)
    if alignment not in ALIGNMENTS:
        raise ValueError(alignment)

    batch, seq_len = seq.shape

    def is_response(b, j):
        return (not prompt_mask[b, j]) and (seq_mask is None or seq_mask[b, j])

    scored = np.zeros((batch, seq_len - 1), dtype=bool)
    for b in range(batch):
        for t in range(seq_len - 1):
            token_read = t + 1 if alignment == "next_token" else t
            scored[b, t] = is_response(b, token_read)
    return scored


def oracle_sequence_logprobs(logits_or_token_logps, seq, prompt_mask, seq_mask=None, *, alignment="next_token",
                             reduction="mean", pad_id=None):
    """[B] float64 per-sequence log-probs: masked mean or sum of the scored token log-probs.

    Takes logits [B, N-1 or N, V] or token log-probs [B, N-1]. A row with no scored token raises
    ValueError (the library's decision: such a row is an error, never NaN nor 0).
    """
    values = np.asarray(logits_or_token_logps, dtype=np.float64)
    token_logps = oracle_token_logprobs(values, seq) if values.ndim == 3 else values
    scored = oracle_scored(seq, prompt_mask, seq_mask, alignment, pad_id)
    if reduction not in REDUCTIONS:
        raise ValueError(reduction)

    out = np.empty(token_logps.shape[0], dtype=np.float64)
    for b in range(token_logps.shape[0]):
        picked = [token_logps[b, t] for t in range(token_logps.shape[1]) if scored[b, t]]
        if not picked:
            raise ValueError(f"row {b} has no scored token")
        out[b] = sum(picked) / len(picked) if reduction == "mean" else sum(picked)
    return out


def oracle_ld_logprobs(chosen_token_logps, rejected_token_logps, chosen_scored, rejected_scored, ld_alpha):
    """LD-DPO (Liu et al. 2024; TRL's ld_alpha), token by token: for each pair, the first min(|y_c|, |y_r|)
    scored tokens of each completion count fully, later ones times ld_alpha."""
    out = [np.empty(len(chosen_token_logps)), np.empty(len(chosen_token_logps))]
    for b in range(len(chosen_token_logps)):
        picked = [[lp[b, t] for t in range(lp.shape[1]) if scored[b, t]]
                  for lp, scored in ((np.asarray(chosen_token_logps, np.float64), np.asarray(chosen_scored)),
                                     (np.asarray(rejected_token_logps, np.float64), np.asarray(rejected_scored)))]
        shared = min(len(picked[0]), len(picked[1]))
        for side in (0, 1):
            out[side][b] = sum(picked[side][:shared]) + ld_alpha * sum(picked[side][shared:])
    return out


def oracle_sequence_statistics(logits64, seq, scored):
    """Per sequence, from logits [B, N-1, V] of seq[:, :-1] and the scored mask [B, N-1], in float64 loops:
    tokens, logp_sum, wpo_sum = sum_t (logp_t - log sum_v p_v(t)^2) and logit_sum = sum_t mean_v z_v(t)."""
    logits64 = np.asarray(logits64, np.float64)
    token_logps = oracle_token_logprobs(logits64, seq)
    stats = {name: np.zeros(len(seq)) for name in ("tokens", "logp_sum", "wpo_sum", "logit_sum")}
    for b in range(len(seq)):
        for t in range(token_logps.shape[1]):
            if not scored[b, t]:
                continue
            row = logits64[b, t]
            probs = np.exp(row - row.max())
            probs /= probs.sum()
            stats["tokens"][b] += 1
            stats["logp_sum"][b] += token_logps[b, t]
            stats["wpo_sum"][b] += token_logps[b, t] - np.log(np.sum(probs ** 2))
            stats["logit_sum"][b] += row.mean()
    return stats
