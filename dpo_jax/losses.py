"""The DPO loss family as pure functions of per-sequence log-probs (JAX side).

Mirrors `dpo_torch/losses.py` name for name. Notation (DESIGN.md section 5): u = policy logp - reference
logp per sequence, D = s(u_chosen) - s(u_rejected) where s is the f-divergence score (s(u) = u for the
default reverse KL, which is plain DPO). The caller's `reduction` already made the log-probs (mean or sum);
no loss normalises again. Options are Python values (static under jit); validate them before tracing.
"""

import math

import jax
import jax.numpy as jnp

from dpo_torch.losses import (  # framework-neutral option tables and validation: one source of truth
    DISCOPOP_TAU,
    DIVERGENCE_LOSSES,
    DIVERGENCES,
    EXP_CLAMP,
    LABEL_SMOOTHING_RANGES,
    LOSS_TYPES,
    METRIC_NAMES,
    REFERENCE_FREE_LOSSES,
    validate_loss_options,
)

__all__ = [
    "DISCOPOP_TAU", "DIVERGENCE_LOSSES", "DIVERGENCES", "EXP_CLAMP", "LABEL_SMOOTHING_RANGES", "LOSS_TYPES",
    "METRIC_NAMES", "REFERENCE_FREE_LOSSES", "validate_loss_options", "divergence_score", "preference_margin",
    "pair_losses", "preference_metrics", "preference_loss",
]

log_sigmoid = jax.nn.log_sigmoid


def divergence_score(log_ratio, divergence="reverse_kl", alpha=0.5):
    """f-DPO score s(u) of a log-ratio u = log(pi / pi_ref); constants that cancel in D are dropped."""
    if divergence == "reverse_kl":
        return log_ratio
    if divergence == "forward_kl":
        return -jnp.exp(jnp.minimum(-log_ratio, EXP_CLAMP))
    if divergence == "js_divergence":
        return log_sigmoid(log_ratio)
    if divergence == "alpha_divergence":
        return (1.0 - jnp.exp(jnp.minimum(-alpha * log_ratio, EXP_CLAMP))) / alpha
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
        return -log_sigmoid(z)
    return -(1.0 - label_smoothing) * log_sigmoid(z) - label_smoothing * log_sigmoid(-z)


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
            return (-(1.0 - e) * log_sigmoid(z) + e * log_sigmoid(-z)) / (1.0 - 2.0 * e)
        if loss_type == "hinge":
            return jax.nn.relu(1.0 - z)
        if loss_type == "ipo":
            return (margin - 1.0 / (2.0 * beta)) ** 2
        if loss_type == "exo_pair":
            e = label_smoothing
            return (jax.nn.sigmoid(z) * (log_sigmoid(z) - math.log(1.0 - e))
                    + jax.nn.sigmoid(-z) * (log_sigmoid(-z) - math.log(e)))
        if loss_type == "discopop":
            # m * exp(-z) written as exp(logsigmoid(z / tau) - z): finite for any z.
            log_mix = log_sigmoid(z / DISCOPOP_TAU)
            return (1.0 - jnp.exp(log_mix)) * -log_sigmoid(z) + jnp.exp(log_mix - z)

    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    if loss_type == "nca_pair":
        return (-log_sigmoid(beta * chosen_ratio) - 0.5 * log_sigmoid(-beta * chosen_ratio)
                - 0.5 * log_sigmoid(-beta * rejected_ratio))
    if loss_type == "bco_pair":
        return -log_sigmoid(beta * chosen_ratio) - log_sigmoid(-beta * rejected_ratio)
    if loss_type == "sppo_hard":
        return (chosen_ratio - 1.0 / (2.0 * beta)) ** 2 + (rejected_ratio + 1.0 / (2.0 * beta)) ** 2
    if loss_type == "apo_zero":
        return 1.0 - jax.nn.sigmoid(beta * chosen_ratio) + jax.nn.sigmoid(beta * rejected_ratio)
    if loss_type == "apo_down":
        margin = chosen_ratio - rejected_ratio
        return jax.nn.sigmoid(beta * chosen_ratio) + 1.0 - jax.nn.sigmoid(beta * margin)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def preference_metrics(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta):
    """TRL's metric names; reward = beta * (policy - reference) logp, or beta * policy logp without reference."""
    stop = jax.lax.stop_gradient
    policy_chosen_logps, policy_rejected_logps = stop(policy_chosen_logps), stop(policy_rejected_logps)
    chosen_rewards = beta * policy_chosen_logps
    rejected_rewards = beta * policy_rejected_logps
    if ref_chosen_logps is not None:
        chosen_rewards = beta * (policy_chosen_logps - stop(ref_chosen_logps))
        rejected_rewards = beta * (policy_rejected_logps - stop(ref_rejected_logps))
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).astype(jnp.float32).mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": policy_chosen_logps.mean(),
        "logps/rejected": policy_rejected_logps.mean(),
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
    metrics["loss"] = jax.lax.stop_gradient(loss)
    return loss, metrics
