"""Float64 NumPy oracle of the loss family, written from DESIGN.md section 5 (the papers' formulas).

Deliberately independent of dpo_torch / dpo_jax: no shared code, plain NumPy, float64, the textbook forms
(log(1 + exp(-x)) via logaddexp, the mixture in DiscoPOP written literally where it is finite, ORPO's odds
P / (1 - P) with P = exp(mean log-prob), AOT's sorts with np.sort over the real pairs only).

The losses beyond the per-pair ones read per-sequence statistics, given here as plain dicts of float64 arrays
{"tokens", "logp_sum", "wpo_sum", "logit_sum"} (the library's SequenceStats fields):
- sigmoid_norm (TRL): -logsigmoid(beta (s(u_c) / n_c - s(u_r) / n_r)) on summed log-ratios;
- aot / aot_unpaired (Melnyk et al. 2024, AOT): sort the batch's log-ratio differences (aot: pi = lc - lr and
  rho = rc - rr; unpaired: u_c and u_r) and apply the (label-smoothed) logistic loss to the sorted difference;
- sft: the batch's token-mean NLL of the chosen completions;
- orpo (Hong et al. 2024, eq. 6-8): NLL + lambda * mean(-log sigmoid(log(odds_c / odds_r)));
- WPO (Zhou et al. 2024, eq. 2): per-pair weight exp(wpo_sum_c / n_c) * exp(wpo_sum_r / n_r).
"""

import numpy as np


def logsig(x):
    return -np.logaddexp(0.0, -x)


def sig(x):
    return np.exp(logsig(x))


def f_score(u, divergence, alpha):
    """s(u) from the f-DPO paper: reverse KL u; forward KL -exp(-u); JS log(2 e^u / (1 + e^u)) - log 2;
    alpha divergence (1 - exp(-alpha u)) / alpha. Exponents clamped at 30 as the library documents."""
    if divergence == "reverse_kl":
        return u
    if divergence == "forward_kl":
        return -np.exp(np.minimum(-u, 30.0))
    if divergence == "js_divergence":
        return np.log(2.0 * np.exp(u) / (1.0 + np.exp(u))) - np.log(2.0) if np.all(np.abs(u) < 50) else logsig(u)
    if divergence == "alpha_divergence":
        return (1.0 - np.exp(np.minimum(-alpha * u, 30.0))) / alpha
    raise ValueError(divergence)


def oracle_pair_losses(pc, pr, rc, rr, *, beta, loss_type, label_smoothing=0.0, divergence="reverse_kl",
                       alpha=0.5, gamma=0.5, chosen_tokens=None, rejected_tokens=None):
    """Per-pair losses [B] (per rank of the sorted batch for aot, aot_unpaired; every pair is real)."""
    pc, pr = np.asarray(pc, np.float64), np.asarray(pr, np.float64)
    if loss_type == "simpo":
        z = beta * (pc - pr) - gamma
        e = label_smoothing
        return -(1 - e) * logsig(z) - e * logsig(-z)
    rc, rr = np.asarray(rc, np.float64), np.asarray(rr, np.float64)
    uc, ur = pc - rc, pr - rr
    D = f_score(uc, divergence, alpha) - f_score(ur, divergence, alpha)
    e = label_smoothing
    b = beta
    if loss_type == "sigmoid":
        return -(1 - e) * logsig(b * D) - e * logsig(-b * D)
    if loss_type == "robust":
        return (-(1 - e) * logsig(b * D) + e * logsig(-b * D)) / (1 - 2 * e)
    if loss_type == "hinge":
        return np.maximum(0.0, 1 - b * D)
    if loss_type == "ipo":
        return (D - 1 / (2 * b)) ** 2
    if loss_type == "exo_pair":
        return sig(b * D) * (logsig(b * D) - np.log(1 - e)) + sig(-b * D) * (logsig(-b * D) - np.log(e))
    if loss_type == "nca_pair":
        return -logsig(b * uc) - 0.5 * logsig(-b * uc) - 0.5 * logsig(-b * ur)
    if loss_type == "bco_pair":
        return -logsig(b * uc) - logsig(-b * ur)
    if loss_type == "sppo_hard":
        return (uc - 1 / (2 * b)) ** 2 + (ur + 1 / (2 * b)) ** 2
    if loss_type == "apo_zero":
        return 1 - sig(b * uc) + sig(b * ur)
    if loss_type == "apo_down":
        return sig(b * uc) + 1 - sig(b * D)
    if loss_type == "sigmoid_norm":
        per_token = (f_score(uc, divergence, alpha) / np.maximum(chosen_tokens, 1)
                     - f_score(ur, divergence, alpha) / np.maximum(rejected_tokens, 1))
        return -logsig(b * per_token)
    if loss_type in ("aot", "aot_unpaired"):
        if loss_type == "aot":
            first, second = pc - pr, rc - rr
        else:
            first, second = uc, ur
        d = np.sort(first) - np.sort(second)
        return -(1 - e) * logsig(b * d) - e * logsig(-b * d)
    if loss_type == "discopop":
        z = b * D
        m = sig(z / 0.05)
        # m * exp(-z) overflows only where m underflows to 0; the limit there is 0.
        with np.errstate(over="ignore", invalid="ignore"):
            tail = np.where(m > 0, m * np.exp(np.minimum(-z, 700.0)), 0.0)
        return (1 - m) * -logsig(z) + tail
    raise ValueError(loss_type)


def oracle_metrics(pc, pr, rc, rr, *, beta):
    pc, pr = np.asarray(pc, np.float64), np.asarray(pr, np.float64)
    if rc is None:
        chosen, rejected = beta * pc, beta * pr
    else:
        chosen, rejected = beta * (pc - np.asarray(rc, np.float64)), beta * (pr - np.asarray(rr, np.float64))
    return {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/accuracies": (chosen > rejected).mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "logps/chosen": pc.mean(),
        "logps/rejected": pr.mean(),
    }


ORPO_MAX_MEAN_LOGP = -1e-6  # the library's documented clamp of ORPO's averaged log-prob (P <= 1 - 1e-6)


def oracle_sft(chosen, weights=None):
    """-(sum of the chosen completions' token log-probs) / (their count) over the (real) pairs of the batch."""
    w = np.ones_like(chosen["tokens"]) if weights is None else np.asarray(weights, np.float64)
    return -(w * chosen["logp_sum"]).sum() / max((w * chosen["tokens"]).sum(), 1.0)


def oracle_orpo(chosen, rejected, *, beta, weights=None):
    """ORPO: NLL(chosen) + beta * mean over real pairs of -log sigmoid(log(odds(y_c) / odds(y_r))), odds = P/(1-P)."""
    w = np.ones_like(chosen["tokens"]) if weights is None else np.asarray(weights, np.float64)

    def log_odds(side):
        average = np.minimum(side["logp_sum"] / np.maximum(side["tokens"], 1), ORPO_MAX_MEAN_LOGP)
        probability = np.exp(average)
        return np.log(probability) - np.log1p(-probability)

    odds_ratio = -logsig(log_odds(chosen) - log_odds(rejected))
    real = w > 0
    return oracle_sft(chosen, weights) + beta * odds_ratio[real].mean()


def oracle_wpo_weights(chosen, rejected):
    return np.exp(chosen["wpo_sum"] / np.maximum(chosen["tokens"], 1)) * np.exp(
        rejected["wpo_sum"] / np.maximum(rejected["tokens"], 1))


def oracle_batch_loss(pc, pr, rc, rr, *, beta, loss_type, loss_weights=None, label_smoothing=0.0,
                      divergence="reverse_kl", alpha=0.5, gamma=0.5, chosen=None, rejected=None, weights=None,
                      use_weighting=False):
    """(loss, {type: term}) of one loss type or a weighted list of them; `weights` (0/1) drop empty slots first."""
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    term_weights = [1.0] * len(types) if loss_weights is None else [float(w) for w in loss_weights]
    real = np.ones(len(pc), bool) if weights is None else np.asarray(weights) > 0
    keep = lambda x: None if x is None else np.asarray(x, np.float64)[real]  # noqa: E731
    sides = [None if s is None else {k: keep(v) for k, v in s.items()} for s in (chosen, rejected)]
    pc, pr, rc, rr = (keep(x) for x in (pc, pr, rc, rr))
    terms = {}
    for name in types:
        if name == "sft":
            terms[name] = oracle_sft(sides[0])
            continue
        if name == "orpo":
            terms[name] = oracle_orpo(sides[0], sides[1], beta=beta)
            continue
        losses = oracle_pair_losses(pc, pr, rc, rr, beta=beta, loss_type=name, label_smoothing=label_smoothing,
                                    divergence=divergence, alpha=alpha, gamma=gamma,
                                    chosen_tokens=None if sides[0] is None else sides[0]["tokens"],
                                    rejected_tokens=None if sides[1] is None else sides[1]["tokens"])
        if use_weighting:
            losses = losses * oracle_wpo_weights(sides[0], sides[1])
        terms[name] = losses.mean()
    return sum(w * terms[name] for name, w in zip(types, term_weights)), terms


def oracle_logits_metric(side, weights=None):
    """TRL's logits/<side>: the vocabulary-mean logit averaged over every scored token of the batch."""
    w = np.ones_like(side["tokens"]) if weights is None else np.asarray(weights, np.float64)
    return (w * side["logit_sum"]).sum() / max((w * side["tokens"]).sum(), 1.0)
