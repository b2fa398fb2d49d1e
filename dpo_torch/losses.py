"""The DPO loss family as pure functions of per-sequence log-probs (PyTorch side).

Mirrors `dpo_jax/losses.py` name for name. Notation (DESIGN.md section 5): u = policy logp - reference
logp per sequence, D = s(u_chosen) - s(u_rejected) where s is the f-divergence score (s(u) = u for the
default reverse KL, which is plain DPO). The caller's `reduction` already made the log-probs (mean or sum);
no loss normalises again.
"""

import math

import torch
import torch.nn.functional as F

LOSS_TYPES = (
    "sigmoid", "robust", "hinge", "ipo", "exo_pair", "nca_pair", "bco_pair",
    "sppo_hard", "apo_zero", "apo_down", "discopop", "simpo",
)
DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# Losses built on the margin D alone accept every divergence; the others read u_chosen / u_rejected
# directly (or no reference at all), where an f-divergence score has no agreed meaning.
DIVERGENCE_LOSSES = ("sigmoid", "robust", "hinge", "ipo", "exo_pair", "discopop")
REFERENCE_FREE_LOSSES = ("simpo",)
# label_smoothing: allowed interval per loss, as (low, high, low_inclusive, high_inclusive).
LABEL_SMOOTHING_RANGES = {
    "sigmoid": (0.0, 0.5, True, False),   # cDPO
    "robust": (0.0, 0.5, True, False),    # divides by 1 - 2e
    "simpo": (0.0, 0.5, True, False),
    "exo_pair": (0.0, 1.0, False, False),  # log(e) and log(1 - e) must be finite
}
DISCOPOP_TAU = 0.05
# exp() of a log-ratio overflows float32 past ~88; forward-KL and alpha scores clamp their exponent here
# (|u| > 30 nats per sequence is far outside any sane training regime; the gradient is 0 beyond it).
EXP_CLAMP = 30.0

METRIC_NAMES = (
    "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
    "logps/chosen", "logps/rejected",
)


def validate_loss_options(*, beta, loss_type, label_smoothing, divergence, alpha, gamma, has_reference=True):
    """Raise ValueError naming the bad option; called once at construction / before tracing."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; expected one of {', '.join(DIVERGENCES)}")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number, got {gamma!r}")
    if divergence != "reverse_kl" and loss_type not in DIVERGENCE_LOSSES:
        raise ValueError(
            f"divergence {divergence!r} is not defined for loss_type {loss_type!r}; "
            f"f-divergences apply to {', '.join(DIVERGENCE_LOSSES)}"
        )
    if divergence == "alpha_divergence" and not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie in (0, 1) for alpha_divergence (f-DPO paper convention), got {alpha!r}")
    smoothing_range = LABEL_SMOOTHING_RANGES.get(loss_type)
    if smoothing_range is None:
        if label_smoothing != 0:
            raise ValueError(f"label_smoothing is not used by loss_type {loss_type!r}; got {label_smoothing!r}, expected 0")
    else:
        low, high, low_inclusive, high_inclusive = smoothing_range
        above = label_smoothing >= low if low_inclusive else label_smoothing > low
        below = label_smoothing <= high if high_inclusive else label_smoothing < high
        if not (above and below):
            interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
            hint = " (EXO recommends 1e-3)" if loss_type == "exo_pair" else ""
            raise ValueError(
                f"label_smoothing for loss_type {loss_type!r} must lie in {interval}, got {label_smoothing!r}{hint}")
    if not has_reference and loss_type not in REFERENCE_FREE_LOSSES:
        raise ValueError(
            f"loss_type {loss_type!r} needs a reference model or precomputed reference log-probs; "
            f"reference-free losses: {', '.join(REFERENCE_FREE_LOSSES)}"
        )


def divergence_score(log_ratio, divergence="reverse_kl", alpha=0.5):
    """f-DPO score s(u) of a log-ratio u = log(pi / pi_ref); constants that cancel in D are dropped."""
    if divergence == "reverse_kl":
        return log_ratio
    if divergence == "forward_kl":
        return -torch.exp((-log_ratio).clamp(max=EXP_CLAMP))
    if divergence == "js_divergence":
        return F.logsigmoid(log_ratio)
    if divergence == "alpha_divergence":
        return (1.0 - torch.exp((-alpha * log_ratio).clamp(max=EXP_CLAMP))) / alpha
    raise ValueError(f"unknown divergence {divergence!r}")


def preference_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                      divergence="reverse_kl", alpha=0.5):
    """D = s(u_chosen) - s(u_rejected); reverse KL in the DPO paper's order (pi ratio minus ref ratio)."""
    if divergence == "reverse_kl":
        return (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    chosen_score = divergence_score(policy_chosen_logps - ref_chosen_logps, divergence, alpha)
    rejected_score = divergence_score(policy_rejected_logps - ref_rejected_logps, divergence, alpha)
    return chosen_score - rejected_score


def _smoothed_logsigmoid_loss(z, label_smoothing):
    """cDPO: -(1 - e) logsigmoid(z) - e logsigmoid(-z); exactly -logsigmoid(z) when e = 0."""
    if label_smoothing == 0:
        return -F.logsigmoid(z)
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def pair_losses(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, *,
                beta=0.1, loss_type="sigmoid", label_smoothing=0.0, divergence="reverse_kl", alpha=0.5, gamma=0.5):
    """Per-pair loss [B] for `loss_type` (DESIGN.md section 5)."""
    if loss_type == "simpo":
        return _smoothed_logsigmoid_loss(beta * (policy_chosen_logps - policy_rejected_logps) - gamma, label_smoothing)

    if loss_type in DIVERGENCE_LOSSES:
        margin = preference_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                   ref_rejected_logps, divergence, alpha)
        z = beta * margin
        if loss_type == "sigmoid":
            return _smoothed_logsigmoid_loss(z, label_smoothing)
        if loss_type == "robust":
            e = label_smoothing
            return (-(1.0 - e) * F.logsigmoid(z) + e * F.logsigmoid(-z)) / (1.0 - 2.0 * e)
        if loss_type == "hinge":
            return torch.relu(1.0 - z)
        if loss_type == "ipo":
            return (margin - 1.0 / (2.0 * beta)) ** 2
        if loss_type == "exo_pair":
            e = label_smoothing
            return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log(1.0 - e))
                    + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(e)))
        if loss_type == "discopop":
            # m * exp(-z) written as exp(logsigmoid(z / tau) - z): finite for any z.
            log_mix = F.logsigmoid(z / DISCOPOP_TAU)
            return (1.0 - torch.exp(log_mix)) * -F.logsigmoid(z) + torch.exp(log_mix - z)

    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    if loss_type == "nca_pair":
        return (-F.logsigmoid(beta * chosen_ratio) - 0.5 * F.logsigmoid(-beta * chosen_ratio)
                - 0.5 * F.logsigmoid(-beta * rejected_ratio))
    if loss_type == "bco_pair":
        return -F.logsigmoid(beta * chosen_ratio) - F.logsigmoid(-beta * rejected_ratio)
    if loss_type == "sppo_hard":
        return (chosen_ratio - 1.0 / (2.0 * beta)) ** 2 + (rejected_ratio + 1.0 / (2.0 * beta)) ** 2
    if loss_type == "apo_zero":
        return 1.0 - torch.sigmoid(beta * chosen_ratio) + torch.sigmoid(beta * rejected_ratio)
    if loss_type == "apo_down":
        margin = chosen_ratio - rejected_ratio
        return torch.sigmoid(beta * chosen_ratio) + 1.0 - torch.sigmoid(beta * margin)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def preference_metrics(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta):
    """TRL's metric names; reward = beta * (policy - reference) logp, or beta * policy logp without reference."""
    with torch.no_grad():
        chosen_rewards = beta * policy_chosen_logps.detach()
        rejected_rewards = beta * policy_rejected_logps.detach()
        if ref_chosen_logps is not None:
            chosen_rewards = beta * (policy_chosen_logps.detach() - ref_chosen_logps.detach())
            rejected_rewards = beta * (policy_rejected_logps.detach() - ref_rejected_logps.detach())
        return {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "logps/chosen": policy_chosen_logps.detach().mean(),
            "logps/rejected": policy_rejected_logps.detach().mean(),
        }


def preference_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, *,
                    beta=0.1, loss_type="sigmoid", label_smoothing=0.0, divergence="reverse_kl", alpha=0.5,
                    gamma=0.5):
    """Batch-mean loss and metrics from per-sequence log-probs [B]; the reference may be None for simpo."""
    validate_loss_options(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, divergence=divergence,
                          alpha=alpha, gamma=gamma, has_reference=ref_chosen_logps is not None)
    if loss_type in REFERENCE_FREE_LOSSES:
        ref_chosen_logps = ref_rejected_logps = None
    losses = pair_losses(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                         beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, divergence=divergence,
                         alpha=alpha, gamma=gamma)
    loss = losses.mean()
    metrics = preference_metrics(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                 beta=beta)
    metrics["loss"] = loss.detach()
    return loss, metrics
