"""The DPO loss family as pure functions of per-sequence log-probs (PyTorch side).

Mirrors `dpo_jax/losses.py` name for name; the option tables are kept in each face (so neither imports
the other's framework) and `parity_tests/test_loss_tables.py` proves the two copies equal.

Notation: u = policy logp - reference logp per sequence, D = s(u_chosen) - s(u_rejected) where s is the
f-divergence score (s(u) = u for the default reverse KL, which is plain DPO). The caller's `reduction`
already made the log-probs (mean or sum); no loss normalises again. Options are Python values;
`validate_loss_options` checks them once, at construction.

Each loss is one small function, named after the loss type, of the quantities it reads:
- margin losses take D (`margin`) and accept every divergence;
- log-ratio losses take u_chosen and u_rejected separately (an f-divergence score has no agreed meaning
  there, so they take reverse KL only);
- reference-free losses take the policy's log-probs alone.
`LOSSES` is the table of them; `pair_losses` looks the loss up instead of branching on its name.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "LossSpec", "LOSSES", "LOSS_TYPES", "DIVERGENCES", "DIVERGENCE_LOSSES", "REFERENCE_FREE_LOSSES",
    "LABEL_SMOOTHING_RANGES", "METRIC_NAMES", "DISCOPOP_TAU", "EXP_CLAMP", "validate_loss_options",
    "divergence_score", "preference_margin", "pair_losses", "preference_metrics", "preference_loss",
    "sigmoid", "robust", "hinge", "ipo", "exo_pair", "discopop", "nca_pair", "bco_pair", "sppo_hard",
    "apo_zero", "apo_down", "simpo",
]

DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
DISCOPOP_TAU = 0.05
# exp() of a log-ratio overflows float32 past ~88; forward-KL and alpha scores clamp their exponent here
# (|u| > 30 nats per sequence is far outside any sane training regime; the gradient is 0 beyond it).
EXP_CLAMP = 30.0
METRIC_NAMES = (
    "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
    "logps/chosen", "logps/rejected",
)

log_sigmoid = F.logsigmoid


def _smoothed_logsigmoid_loss(z, label_smoothing):
    """cDPO: -(1 - e) logsigmoid(z) - e logsigmoid(-z); exactly -logsigmoid(z) when e = 0."""
    if label_smoothing == 0:
        return -log_sigmoid(z)
    return -(1.0 - label_smoothing) * log_sigmoid(z) - label_smoothing * log_sigmoid(-z)


# ---- margin losses: functions of D ------------------------------------------------------------------------

def sigmoid(margin, *, beta, label_smoothing=0.0):
    """DPO: -logsigmoid(beta D); cDPO with label smoothing e: -(1-e) logsigmoid(beta D) - e logsigmoid(-beta D).

    References: Rafailov et al. 2023, "Direct Preference Optimization" (arXiv:2305.18290), eq. 7;
    Mitchell 2023, "A note on DPO with noisy preferences and relationship to IPO" (cDPO).
    """
    return _smoothed_logsigmoid_loss(beta * margin, label_smoothing)


def robust(margin, *, beta, label_smoothing=0.0):
    """rDPO: [-(1-e) logsigmoid(beta D) + e logsigmoid(-beta D)] / (1 - 2e), unbiased under label noise e.

    References: Chowdhury et al. 2024, "Provably Robust DPO" (arXiv:2403.00409).
    """
    z, e = beta * margin, label_smoothing
    return (-(1.0 - e) * log_sigmoid(z) + e * log_sigmoid(-z)) / (1.0 - 2.0 * e)


def hinge(margin, *, beta, label_smoothing=0.0):
    """SLiC / RSO hinge: relu(1 - beta D).

    References: Zhao et al. 2023, "SLiC-HF" (arXiv:2305.10425); Liu et al. 2023, "Statistical Rejection
    Sampling Improves Preference Optimization" (RSO, arXiv:2309.06657).
    """
    return torch.relu(1.0 - beta * margin)


def ipo(margin, *, beta, label_smoothing=0.0):
    """IPO: (D - 1/(2 beta))^2 on the log-probs as the caller's reduction made them.

    References: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences" (arXiv:2310.12036).
    """
    return (margin - 1.0 / (2.0 * beta)) ** 2


def exo_pair(margin, *, beta, label_smoothing=0.0):
    """EXO (pairwise): sigmoid(z)(logsigmoid(z) - log(1-e)) + sigmoid(-z)(logsigmoid(-z) - log e), z = beta D.

    References: Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment"
    (arXiv:2402.00856).
    """
    z, e = beta * margin, label_smoothing
    return (torch.sigmoid(z) * (log_sigmoid(z) - math.log(1.0 - e))
            + torch.sigmoid(-z) * (log_sigmoid(-z) - math.log(e)))


def discopop(margin, *, beta, label_smoothing=0.0):
    """DiscoPOP: z = beta D, m = sigmoid(z / tau): (1-m)(-logsigmoid z) + m exp(-z), tau = 0.05.

    m exp(-z) is written as exp(logsigmoid(z / tau) - z): finite for any z.
    References: Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
    Models" (arXiv:2406.08414), the log-ratio modulated loss.
    """
    z = beta * margin
    log_mix = log_sigmoid(z / DISCOPOP_TAU)
    return (1.0 - torch.exp(log_mix)) * -log_sigmoid(z) + torch.exp(log_mix - z)


# ---- log-ratio losses: functions of u_chosen and u_rejected ----------------------------------------------

def nca_pair(chosen_ratio, rejected_ratio, *, beta):
    """NCA (pairwise): -logsigmoid(beta u_c) - 0.5 logsigmoid(-beta u_c) - 0.5 logsigmoid(-beta u_r).

    References: Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards"
    (arXiv:2402.05369).
    """
    return (-log_sigmoid(beta * chosen_ratio) - 0.5 * log_sigmoid(-beta * chosen_ratio)
            - 0.5 * log_sigmoid(-beta * rejected_ratio))


def bco_pair(chosen_ratio, rejected_ratio, *, beta):
    """BCO (pairwise, no running-mean delta): -logsigmoid(beta u_c) - logsigmoid(-beta u_r).

    References: Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment"
    (arXiv:2404.04656).
    """
    return -log_sigmoid(beta * chosen_ratio) - log_sigmoid(-beta * rejected_ratio)


def sppo_hard(chosen_ratio, rejected_ratio, *, beta):
    """SPPO with hard labels: (u_c - 1/(2 beta))^2 + (u_r + 1/(2 beta))^2.

    References: Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment"
    (arXiv:2405.00675).
    """
    return (chosen_ratio - 1.0 / (2.0 * beta)) ** 2 + (rejected_ratio + 1.0 / (2.0 * beta)) ** 2


def apo_zero(chosen_ratio, rejected_ratio, *, beta):
    """APO-zero: 1 - sigmoid(beta u_c) + sigmoid(beta u_r) (chosen better than the reference's outputs).

    References: D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions"
    (arXiv:2408.06266).
    """
    return 1.0 - torch.sigmoid(beta * chosen_ratio) + torch.sigmoid(beta * rejected_ratio)


def apo_down(chosen_ratio, rejected_ratio, *, beta):
    """APO-down: sigmoid(beta u_c) + 1 - sigmoid(beta (u_c - u_r)) (the reference's outputs are better).

    References: D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions"
    (arXiv:2408.06266).
    """
    margin = chosen_ratio - rejected_ratio
    return torch.sigmoid(beta * chosen_ratio) + 1.0 - torch.sigmoid(beta * margin)


# ---- reference-free losses: functions of the policy's log-probs --------------------------------------------

def simpo(chosen_logps, rejected_logps, *, beta, gamma, label_smoothing=0.0):
    """SimPO: -logsigmoid(beta (logp_c - logp_r) - gamma) (the paper: length-averaged logps, beta 2.0, gamma 0.5).

    References: Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"
    (arXiv:2405.14734).
    """
    return _smoothed_logsigmoid_loss(beta * (chosen_logps - rejected_logps) - gamma, label_smoothing)


# ---- the table ----------------------------------------------------------------------------------------------

class LossSpec(NamedTuple):
    """One loss type: its function, what it reads ("margin", "log_ratios" or "policy_logps") and, when it
    uses label smoothing, the allowed interval (low, high, low_inclusive, high_inclusive)."""
    fn: Callable
    reads: str
    label_smoothing: tuple | None = None


LOSSES = {
    "sigmoid": LossSpec(sigmoid, "margin", (0.0, 0.5, True, False)),     # cDPO
    "robust": LossSpec(robust, "margin", (0.0, 0.5, True, False)),       # divides by 1 - 2e
    "hinge": LossSpec(hinge, "margin"),
    "ipo": LossSpec(ipo, "margin"),
    "exo_pair": LossSpec(exo_pair, "margin", (0.0, 1.0, False, False)),  # log(e) and log(1 - e) finite
    "nca_pair": LossSpec(nca_pair, "log_ratios"),
    "bco_pair": LossSpec(bco_pair, "log_ratios"),
    "sppo_hard": LossSpec(sppo_hard, "log_ratios"),
    "apo_zero": LossSpec(apo_zero, "log_ratios"),
    "apo_down": LossSpec(apo_down, "log_ratios"),
    "discopop": LossSpec(discopop, "margin"),
    "simpo": LossSpec(simpo, "policy_logps", (0.0, 0.5, True, False)),
}
LOSS_TYPES = tuple(LOSSES)
# Losses built on the margin D alone accept every divergence; the others read u_chosen / u_rejected
# directly (or no reference at all), where an f-divergence score has no agreed meaning.
DIVERGENCE_LOSSES = tuple(name for name, spec in LOSSES.items() if spec.reads == "margin")
REFERENCE_FREE_LOSSES = tuple(name for name, spec in LOSSES.items() if spec.reads == "policy_logps")
# label_smoothing: allowed interval per loss, as (low, high, low_inclusive, high_inclusive).
LABEL_SMOOTHING_RANGES = {name: spec.label_smoothing for name, spec in LOSSES.items()
                          if spec.label_smoothing is not None}


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
    """f-DPO score s(u) of a log-ratio u = log(pi / pi_ref); constants that cancel in D are dropped.

    References: Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse
    Divergence Constraints" (arXiv:2309.16240); alpha-divergence in the paper's convention, 0 < alpha < 1.
    """
    if divergence == "reverse_kl":
        return log_ratio
    if divergence == "forward_kl":
        return -torch.exp((-log_ratio).clamp(max=EXP_CLAMP))
    if divergence == "js_divergence":
        return log_sigmoid(log_ratio)
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


def pair_losses(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, *,
                beta=0.1, loss_type="sigmoid", label_smoothing=0.0, divergence="reverse_kl", alpha=0.5, gamma=0.5):
    """Per-pair loss [B] of `loss_type` (the `LOSSES` table)."""
    spec = LOSSES.get(loss_type)
    if spec is None:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    if spec.reads == "policy_logps":
        return spec.fn(policy_chosen_logps, policy_rejected_logps, beta=beta, gamma=gamma,
                       label_smoothing=label_smoothing)
    if spec.reads == "margin":
        margin = preference_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                   ref_rejected_logps, divergence, alpha)
        return spec.fn(margin, beta=beta, label_smoothing=label_smoothing)
    return spec.fn(policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps, beta=beta)


def _mean(values, weights):
    """Plain mean, or the weighted mean sum(w x) / max(sum(w), 1) (weights 1 for real pairs, 0 for empty slots)."""
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def preference_metrics(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta,
                       weights=None):
    """TRL's metric names; reward = beta * (policy - reference) logp, or beta * policy logp without reference."""
    with torch.no_grad():
        policy_chosen_logps, policy_rejected_logps = policy_chosen_logps.detach(), policy_rejected_logps.detach()
        chosen_rewards = beta * policy_chosen_logps
        rejected_rewards = beta * policy_rejected_logps
        if ref_chosen_logps is not None:
            chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps.detach())
            rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps.detach())
        return {
            "rewards/chosen": _mean(chosen_rewards, weights),
            "rewards/rejected": _mean(rejected_rewards, weights),
            "rewards/accuracies": _mean((chosen_rewards > rejected_rewards).float(), weights),
            "rewards/margins": _mean(chosen_rewards - rejected_rewards, weights),
            "logps/chosen": _mean(policy_chosen_logps, weights),
            "logps/rejected": _mean(policy_rejected_logps, weights),
        }


def preference_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, *,
                    beta=0.1, loss_type="sigmoid", label_smoothing=0.0, divergence="reverse_kl", alpha=0.5,
                    gamma=0.5, weights=None):
    """Batch-mean loss and metrics from per-sequence log-probs [B]; the reference may be None for simpo.

    `weights` [B] (optional) makes every mean a weighted one: packed batches give empty pair slots weight 0,
    so they count in neither the loss nor a metric (their per-pair loss is masked to 0 before weighting, so
    a NaN from an empty slot cannot leak in).
    """
    validate_loss_options(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, divergence=divergence,
                          alpha=alpha, gamma=gamma, has_reference=ref_chosen_logps is not None)
    if loss_type in REFERENCE_FREE_LOSSES:
        ref_chosen_logps = ref_rejected_logps = None
    losses = pair_losses(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                         beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, divergence=divergence,
                         alpha=alpha, gamma=gamma)
    if weights is not None:
        weights = torch.as_tensor(weights, device=losses.device).to(losses.dtype)
        losses = torch.where(weights > 0, losses, torch.zeros_like(losses))
    loss = _mean(losses, weights)
    metrics = preference_metrics(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                 beta=beta, weights=weights)
    metrics["loss"] = loss.detach()
    return loss, metrics
