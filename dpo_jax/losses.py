"""The DPO loss family as pure functions of per-sequence log-probs (JAX side).

Mirrors `dpo_torch/losses.py` name for name; the option tables are kept in each face (so neither imports
the other's framework) and `parity_tests/test_loss_tables.py` proves the two copies equal.

Notation: u = policy logp - reference logp per sequence, D = s(u_chosen) - s(u_rejected) where s is the
f-divergence score (s(u) = u for the default reverse KL, which is plain DPO). The caller's `reduction`
already made the log-probs (mean or sum); no loss normalises again. Options are Python values (static under
jit); `validate_loss_options` checks them before anything is traced.

Each loss is one small function, named after the loss type, of the quantities it reads (`LossSpec.reads`):
- "margin": D; accepts every divergence;
- "log_ratios": u_chosen and u_rejected separately (an f-divergence score has no agreed meaning there, so they
  take reverse KL only);
- "policy_logps": the policy's log-probs alone (reference-free);
- "normalized_scores": s(u_chosen) / n_chosen - s(u_rejected) / n_rejected with n the scored-token counts
  (`SequenceStats.tokens`); every divergence;
- "batch_sorted": the log-probs of every pair of the batch, sorted across it (one loss per rank; reverse KL);
- "token_sums": the chosen completions' token sums and counts (`SequenceStats`): a batch-level NLL;
- "odds": both completions' token sums and counts (ORPO's odds ratio plus the NLL), reference-free.
`LOSSES` is the table of them; `pair_losses` looks the loss up instead of branching on its name.

A combination (`loss_type` a list, `loss_weights` default all 1.0) is the weighted sum of the terms' batch
losses, as TRL computes it: RPO is ["sigmoid", "sft"] with weights [1, alpha]; MPO is ["sigmoid", "bco_pair",
"sft"] with [0.8, 0.2, 1.0]. WPO (`use_weighting`) multiplies every per-pair loss by the pair's detached weight
exp(mean_t(logp_t - log sum_v p_v^2)) of chosen times that of rejected.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from dpo_jax.logprobs import check_statistics

__all__ = [
    "LossSpec", "LOSSES", "LOSS_TYPES", "DIVERGENCES", "DIVERGENCE_LOSSES", "REFERENCE_FREE_LOSSES",
    "TOKEN_STATISTICS_LOSSES", "BATCH_LEVEL_LOSSES", "LABEL_SMOOTHING_RANGES", "METRIC_NAMES",
    "EXTRA_METRIC_NAMES", "DISCOPOP_TAU", "EXP_CLAMP", "ORPO_MAX_MEAN_LOGP", "loss_terms", "is_combination",
    "needs_reference", "required_statistics", "validate_loss_options", "divergence_score", "preference_margin",
    "pair_losses", "wpo_weights", "preference_metrics", "preference_loss",
    "sigmoid", "robust", "hinge", "ipo", "exo_pair", "discopop", "nca_pair", "bco_pair", "sppo_hard",
    "apo_zero", "apo_down", "simpo", "sigmoid_norm", "aot", "aot_unpaired", "sft", "orpo",
]

DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
DISCOPOP_TAU = 0.05
# exp() of a log-ratio overflows float32 past ~88; forward-KL and alpha scores clamp their exponent here
# (|u| > 30 nats per sequence is far outside any sane training regime; the gradient is 0 beyond it).
EXP_CLAMP = 30.0
# ORPO's odds P / (1 - P) are infinite at P = 1 (a length-averaged log-prob of exactly 0, which float32 reaches
# when every token's probability rounds to 1): the averaged log-prob is clamped here (P <= 1 - 1e-6).
ORPO_MAX_MEAN_LOGP = -1e-6
METRIC_NAMES = (
    "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
    "logps/chosen", "logps/rejected",
)
# reported when they apply: nll_loss with an sft or orpo term, logits/* when asked for (`logits_metrics`);
# a combination also reports loss/<type> per term
EXTRA_METRIC_NAMES = ("nll_loss", "logits/chosen", "logits/rejected")

log_sigmoid = jax.nn.log_sigmoid


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
    return jax.nn.relu(1.0 - beta * margin)


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
    return (jax.nn.sigmoid(z) * (log_sigmoid(z) - math.log(1.0 - e))
            + jax.nn.sigmoid(-z) * (log_sigmoid(-z) - math.log(e)))


def discopop(margin, *, beta, label_smoothing=0.0):
    """DiscoPOP: z = beta D, m = sigmoid(z / tau): (1-m)(-logsigmoid z) + m exp(-z), tau = 0.05.

    m exp(-z) is written as exp(logsigmoid(z / tau) - z): finite for any z.
    References: Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
    Models" (arXiv:2406.08414), the log-ratio modulated loss.
    """
    z = beta * margin
    log_mix = log_sigmoid(z / DISCOPOP_TAU)
    return (1.0 - jnp.exp(log_mix)) * -log_sigmoid(z) + jnp.exp(log_mix - z)


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
    return 1.0 - jax.nn.sigmoid(beta * chosen_ratio) + jax.nn.sigmoid(beta * rejected_ratio)


def apo_down(chosen_ratio, rejected_ratio, *, beta):
    """APO-down: sigmoid(beta u_c) + 1 - sigmoid(beta (u_c - u_r)) (the reference's outputs are better).

    References: D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions"
    (arXiv:2408.06266).
    """
    margin = chosen_ratio - rejected_ratio
    return jax.nn.sigmoid(beta * chosen_ratio) + 1.0 - jax.nn.sigmoid(beta * margin)


# ---- reference-free losses: functions of the policy's log-probs --------------------------------------------

def simpo(chosen_logps, rejected_logps, *, beta, gamma, label_smoothing=0.0):
    """SimPO: -logsigmoid(beta (logp_c - logp_r) - gamma) (the paper: length-averaged logps, beta 2.0, gamma 0.5).

    References: Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"
    (arXiv:2405.14734).
    """
    return _smoothed_logsigmoid_loss(beta * (chosen_logps - rejected_logps) - gamma, label_smoothing)


# ---- length-normalised scores: s(u) / token count --------------------------------------------------------------

def sigmoid_norm(chosen_score, rejected_score, chosen_tokens, rejected_tokens, *, beta):
    """Length-normalised DPO: -logsigmoid(beta (s(u_c) / n_c - s(u_r) / n_r)) on summed log-ratios, n the scored-token
    counts (TRL's `sigmoid_norm`). With reverse KL this is `sigmoid` on length-averaged log-probs
    (reduction="mean"); with another divergence it averages the score of the summed log-ratio instead.

    References: Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"
    (arXiv:2405.14734), the length normalisation, here with a reference as in TRL's DPOTrainer.
    """
    chosen = chosen_score / jnp.maximum(chosen_tokens, 1.0)
    rejected = rejected_score / jnp.maximum(rejected_tokens, 1.0)
    return -log_sigmoid(beta * (chosen - rejected))


# ---- batch-sorted losses: every pair of the batch, sorted across it (one loss per rank) -------------------------

def _sorted(values, valid):
    """`values` [B] in ascending order, the entries with `valid` False (empty packed slots) after all others."""
    invalid = jnp.zeros(values.shape, bool) if valid is None else ~valid
    order = jnp.lexsort((jax.lax.stop_gradient(values), invalid))
    return values[order]


def aot(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta,
        label_smoothing=0.0, valid=None):
    """AOT (paired): d = sort(logp_c - logp_r) - sort(ref_c - ref_r), each sorted over the batch; per rank
    -(1-e) logsigmoid(beta d) - e logsigmoid(-beta d). Pairs with `valid` False sort last (ranks >= the count of
    valid pairs), so they never enter the sort of the real pairs.

    References: Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport"
    (arXiv:2406.05882).
    """
    delta = (_sorted(policy_chosen_logps - policy_rejected_logps, valid)
             - _sorted(ref_chosen_logps - ref_rejected_logps, valid))
    return _smoothed_logsigmoid_loss(beta * delta, label_smoothing)


def aot_unpaired(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta,
                 label_smoothing=0.0, valid=None):
    """AOT (unpaired): d = sort(u_c) - sort(u_r), each log-ratio sorted over the batch; per rank
    -(1-e) logsigmoid(beta d) - e logsigmoid(-beta d). Invalid pairs sort last, as in `aot`.

    References: Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport"
    (arXiv:2406.05882), the unpaired setting.
    """
    delta = (_sorted(policy_chosen_logps - ref_chosen_logps, valid)
             - _sorted(policy_rejected_logps - ref_rejected_logps, valid))
    return _smoothed_logsigmoid_loss(beta * delta, label_smoothing)


# ---- batch-level losses of token statistics (scalars) ---------------------------------------------------------

def _weighted_sum(values, weights):
    return values.sum() if weights is None else (values * weights).sum()


def sft(chosen_logp_sums, chosen_tokens, *, weights=None):
    """SFT term: the token-mean negative log-likelihood of the chosen completions over the whole batch,
    -sum(chosen token log-probs) / (their count), whatever the reduction (TRL's `sft`).

    References: Pang et al. 2024, "Iterative Reasoning Preference Optimization" (arXiv:2404.19733), the NLL
    term of RPO; TRL DPOTrainer `loss_type="sft"`.
    """
    total = _weighted_sum(chosen_logp_sums, weights)
    count = _weighted_sum(chosen_tokens, weights)
    return -total / jnp.maximum(count, 1.0)


def _log1mexp(x):
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012)."""
    return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def orpo(chosen_logp_sums, rejected_logp_sums, chosen_tokens, rejected_tokens, *, beta, weights=None):
    """ORPO: NLL(chosen) + beta * mean over pairs of -logsigmoid(log odds(y_c) - log odds(y_r)), with
    log odds(y) = a - log(1 - exp(a)) and a the length-averaged log-prob of y (token sum / count, whatever the
    reduction). The NLL is `sft` (completion tokens only: the ORPO authors' `disable_prompt_loss=True`); beta is
    ORPO's lambda, as in TRL's ORPOTrainer (default 0.1). Reference-free.

    References: Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model"
    (arXiv:2403.07691), eq. 6-8.
    """
    def log_odds(sums, tokens):
        average = jnp.minimum(sums / jnp.maximum(tokens, 1.0), ORPO_MAX_MEAN_LOGP)
        return average - _log1mexp(average)

    odds_ratio = -log_sigmoid(log_odds(chosen_logp_sums, chosen_tokens) - log_odds(rejected_logp_sums,
                                                                                  rejected_tokens))
    if weights is not None:
        odds_ratio = jnp.where(weights > 0, odds_ratio, 0.0)
    return sft(chosen_logp_sums, chosen_tokens, weights=weights) + beta * _mean(odds_ratio, weights)


# ---- the table ----------------------------------------------------------------------------------------------

class LossSpec(NamedTuple):
    """One loss type: its function, what it reads (see the module docstring) and, when it uses label
    smoothing, the allowed interval (low, high, low_inclusive, high_inclusive)."""
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
    "sigmoid_norm": LossSpec(sigmoid_norm, "normalized_scores"),
    "aot": LossSpec(aot, "batch_sorted", (0.0, 0.5, True, False)),
    "aot_unpaired": LossSpec(aot_unpaired, "batch_sorted", (0.0, 0.5, True, False)),
    "sft": LossSpec(sft, "token_sums"),
    "orpo": LossSpec(orpo, "odds"),
}
LOSS_TYPES = tuple(LOSSES)
# Losses built on the divergence scores (D, or the length-normalised scores) accept every divergence; the others
# read u_chosen / u_rejected directly, sort them, or use no reference, where an f-divergence has no agreed meaning.
# An sft term reads no log-ratio at all: it neither uses nor refuses a divergence.
DIVERGENCE_LOSSES = tuple(name for name, spec in LOSSES.items() if spec.reads in ("margin", "normalized_scores"))
REFERENCE_FREE_LOSSES = tuple(name for name, spec in LOSSES.items()
                              if spec.reads in ("policy_logps", "token_sums", "odds"))
# Losses that read `SequenceStats` (token counts and sums) besides the reduced log-probs.
TOKEN_STATISTICS_LOSSES = tuple(name for name, spec in LOSSES.items()
                                if spec.reads in ("normalized_scores", "token_sums", "odds"))
# Losses that are not a mean of per-pair losses: the batch is sorted (one loss per rank) or reduced as a whole;
# WPO, which weights pairs, does not apply to them.
BATCH_LEVEL_LOSSES = tuple(name for name, spec in LOSSES.items()
                           if spec.reads in ("batch_sorted", "token_sums", "odds"))
# label_smoothing: allowed interval per loss, as (low, high, low_inclusive, high_inclusive).
LABEL_SMOOTHING_RANGES = {name: spec.label_smoothing for name, spec in LOSSES.items()
                          if spec.label_smoothing is not None}


def is_combination(loss_type) -> bool:
    """True when `loss_type` is a list/tuple of loss types (a weighted sum), False for one name."""
    return not isinstance(loss_type, str)


def loss_terms(loss_type, loss_weights=None):
    """(types, weights): the terms of `loss_type` (one name or a list of names) and their weights (all 1.0 by
    default), validated: known names, no repeats, one finite weight >= 0 per term, at least one > 0."""
    types = (loss_type,) if isinstance(loss_type, str) else loss_type
    if not isinstance(types, (list, tuple)) or not types:
        raise ValueError(f"loss_type must be a loss name or a non-empty list of them, got {loss_type!r}")
    for name in types:
        if name not in LOSSES:
            raise ValueError(f"unknown loss_type {name!r}; expected one of {', '.join(LOSS_TYPES)}")
    repeated = sorted({name for name in types if types.count(name) > 1})
    if repeated:
        raise ValueError(f"loss_type lists {', '.join(map(repr, repeated))} more than once; give each term once "
                         "with its weight in loss_weights")
    if loss_weights is None:
        return tuple(types), (1.0,) * len(types)
    if not isinstance(loss_weights, (list, tuple)) or len(loss_weights) != len(types):
        raise ValueError(f"loss_weights must give one weight per loss_type term ({len(types)}), got {loss_weights!r}")
    for weight in loss_weights:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise ValueError(f"loss_weights must be finite numbers >= 0, got {loss_weights!r}")
    if not any(weight > 0 for weight in loss_weights):
        raise ValueError(f"loss_weights must have at least one weight > 0, got {loss_weights!r}")
    return tuple(types), tuple(float(weight) for weight in loss_weights)


def needs_reference(loss_type) -> bool:
    """True when some term of `loss_type` reads the reference's log-probs."""
    return any(name not in REFERENCE_FREE_LOSSES for name in loss_terms(loss_type)[0])


def required_statistics(loss_type, *, use_weighting=False, logits_metrics=False):
    """The `SequenceStats` names (`dpo_jax.logprobs.STATISTICS`) the log-prob step must compute for these options:
    () on the default path, so nothing beyond the reduced log-probs is computed."""
    types = loss_terms(loss_type)[0]
    wanted = set()
    if any(name in TOKEN_STATISTICS_LOSSES for name in types):
        wanted.add("token_sums")
    if use_weighting:
        wanted.update(("token_sums", "sq_probs"))
    if logits_metrics:
        wanted.update(("token_sums", "mean_logits"))
    return check_statistics(wanted)


def _check_label_smoothing(types, label_smoothing):
    using = [name for name in types if LABEL_SMOOTHING_RANGES.get(name) is not None]
    if not using:
        if label_smoothing != 0:
            raise ValueError(f"label_smoothing is not used by loss_type {_names(types)}; got {label_smoothing!r}, "
                             "expected 0")
        return
    for name in using:
        low, high, low_inclusive, high_inclusive = LABEL_SMOOTHING_RANGES[name]
        above = label_smoothing >= low if low_inclusive else label_smoothing > low
        below = label_smoothing <= high if high_inclusive else label_smoothing < high
        if not (above and below):
            interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
            hint = " (EXO recommends 1e-3)" if name == "exo_pair" else ""
            raise ValueError(
                f"label_smoothing for loss_type {name!r} must lie in {interval}, got {label_smoothing!r}{hint}")


def _names(types):
    return repr(types[0]) if len(types) == 1 else "any of " + ", ".join(map(repr, types))


def validate_loss_options(*, beta, loss_type, label_smoothing, divergence, alpha, gamma, has_reference=True,
                          loss_weights=None, use_weighting=False, ld_alpha=None, reduction=None):
    """Raise ValueError naming the bad option; called once at construction / before tracing.

    `reduction` (when the caller knows it) also checks the options that need summed log-probs (sigmoid_norm,
    ld_alpha). `has_reference`: whether a reference (model or precomputed log-probs) comes with the batch.
    """
    types, _ = loss_terms(loss_type, loss_weights)
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; expected one of {', '.join(DIVERGENCES)}")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number, got {gamma!r}")
    if divergence != "reverse_kl":
        for name in types:
            if name not in DIVERGENCE_LOSSES and name != "sft":
                raise ValueError(
                    f"divergence {divergence!r} is not defined for loss_type {name!r}; "
                    f"f-divergences apply to {', '.join(DIVERGENCE_LOSSES)}"
                )
        if not any(name in DIVERGENCE_LOSSES for name in types):
            raise ValueError(f"divergence {divergence!r} has no effect on loss_type {_names(types)} (it reads no "
                             f"log-ratio); f-divergences apply to {', '.join(DIVERGENCE_LOSSES)}")
    if divergence == "alpha_divergence" and not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie in (0, 1) for alpha_divergence (f-DPO paper convention), got {alpha!r}")
    _check_label_smoothing(types, label_smoothing)
    if not has_reference:
        for name in types:
            if name not in REFERENCE_FREE_LOSSES:
                raise ValueError(
                    f"loss_type {name!r} needs a reference model or precomputed reference log-probs; "
                    f"reference-free losses: {', '.join(REFERENCE_FREE_LOSSES)}"
                )
    elif "orpo" in types:
        raise ValueError("loss_type 'orpo' is reference-free (ORPO trains without a reference model): pass no "
                         "reference, and combine it only with reference-free terms "
                         f"({', '.join(REFERENCE_FREE_LOSSES)})")
    if not isinstance(use_weighting, bool):
        raise ValueError(f"use_weighting must be True or False, got {use_weighting!r}")
    if use_weighting:
        for name in types:
            if name in BATCH_LEVEL_LOSSES:
                raise ValueError(f"use_weighting (WPO) weights pairs and does not apply to loss_type {name!r} "
                                 "(a batch-level loss); drop one of them")
    if ld_alpha is not None:
        if isinstance(ld_alpha, bool) or not isinstance(ld_alpha, (int, float)) or not 0.0 <= ld_alpha <= 1.0:
            raise ValueError(f"ld_alpha must be None or a number in [0, 1] (LD-DPO), got {ld_alpha!r}")
        if all(name in ("sft", "orpo") for name in types):
            raise ValueError(f"ld_alpha has no effect on loss_type {_names(types)}: they read the unscaled "
                             "log-probs")
        if reduction is not None and reduction != "sum":
            raise ValueError(f"ld_alpha (LD-DPO) rescales summed log-probs: it needs reduction='sum', got "
                             f"{reduction!r}")
    if reduction is not None and reduction != "sum" and "sigmoid_norm" in types:
        raise ValueError("loss_type 'sigmoid_norm' length-normalises summed log-probs: it needs reduction='sum' "
                         "(with reduction='mean' and reverse KL it is loss_type 'sigmoid')")


def divergence_score(log_ratio, divergence="reverse_kl", alpha=0.5):
    """f-DPO score s(u) of a log-ratio u = log(pi / pi_ref); constants that cancel in D are dropped.

    References: Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse
    Divergence Constraints" (arXiv:2309.16240); alpha-divergence in the paper's convention, 0 < alpha < 1.
    """
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


def _require_stats(name, *stats):
    if any(s is None for s in stats):
        raise ValueError(f"loss_type {name!r} reads token statistics: pass chosen_stats and rejected_stats "
                         "(SequenceStats with tokens and logp_sum; batch_loss and DPO compute them)")


def pair_losses(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, *,
                beta=0.1, loss_type="sigmoid", label_smoothing=0.0, divergence="reverse_kl", alpha=0.5, gamma=0.5,
                chosen_stats=None, rejected_stats=None, valid=None):
    """Per-pair loss [B] of one `loss_type` (the `LOSSES` table); per rank of the sorted batch for aot*.

    `valid` [B] bool (aot*) keeps empty packed slots out of the sort. sft and orpo are batch-level: their loss is
    one number, from `preference_loss`.
    """
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
    if spec.reads == "log_ratios":
        return spec.fn(policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps,
                       beta=beta)
    if spec.reads == "normalized_scores":
        _require_stats(loss_type, chosen_stats, rejected_stats)
        return spec.fn(divergence_score(policy_chosen_logps - ref_chosen_logps, divergence, alpha),
                       divergence_score(policy_rejected_logps - ref_rejected_logps, divergence, alpha),
                       chosen_stats.tokens, rejected_stats.tokens, beta=beta)
    if spec.reads == "batch_sorted":
        return spec.fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta,
                       label_smoothing=label_smoothing, valid=valid)
    raise ValueError(f"loss_type {loss_type!r} is a batch-level loss (one number per batch): use preference_loss")


def _mean(values, weights):
    """Plain mean, or the weighted mean sum(w x) / max(sum(w), 1) (weights 1 for real pairs, 0 for empty slots)."""
    if weights is None:
        return values.mean()
    return (values * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def wpo_weights(chosen_stats, rejected_stats):
    """WPO pair weights [B], detached: exp(mean_t(logp_t - log sum_v p_v^2)) of chosen times that of rejected,
    each mean over the sequence's scored tokens (never LD-scaled).

    References: Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization" (arXiv:2406.11827),
    eq. 2 with the sampling-distribution alignment of TRL's `use_weighting`.
    """
    def weight(stats):
        if stats is None or stats.wpo_sum is None:
            raise ValueError("use_weighting reads the per-token sq_probs statistic: pass chosen_stats and "
                             "rejected_stats with wpo_sum (batch_loss and DPO compute them)")
        return jnp.exp(stats.wpo_sum / jnp.maximum(stats.tokens, 1.0))

    return jax.lax.stop_gradient(weight(chosen_stats) * weight(rejected_stats))


def _term_loss(name, logps, *, beta, label_smoothing, divergence, alpha, gamma, weights, pair_weights,
               chosen_stats, rejected_stats):
    """The batch loss of one term: a (weighted) mean of per-pair losses, of per-rank losses, or a batch scalar."""
    spec = LOSSES[name]
    if spec.reads == "token_sums":
        _require_stats(name, chosen_stats)
        return sft(chosen_stats.logp_sum, chosen_stats.tokens, weights=weights)
    if spec.reads == "odds":
        _require_stats(name, chosen_stats, rejected_stats)
        return orpo(chosen_stats.logp_sum, rejected_stats.logp_sum, chosen_stats.tokens, rejected_stats.tokens,
                    beta=beta, weights=weights)
    valid = None if weights is None else weights > 0
    losses = pair_losses(*logps, beta=beta, loss_type=name, label_smoothing=label_smoothing, divergence=divergence,
                         alpha=alpha, gamma=gamma, chosen_stats=chosen_stats, rejected_stats=rejected_stats,
                         valid=valid)
    if spec.reads == "batch_sorted":  # rank r is real when r < the number of real pairs
        if valid is None:
            return losses.mean()
        rank_valid = jnp.arange(losses.shape[0]) < valid.sum()
        return _mean(jnp.where(rank_valid, losses, 0.0), rank_valid.astype(jnp.float32))
    if pair_weights is not None:
        losses = losses * pair_weights
    if weights is not None:
        losses = jnp.where(weights > 0, losses, 0.0)
    return _mean(losses, weights)


def preference_metrics(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta,
                       weights=None):
    """TRL's metric names; reward = beta * (policy - reference) logp, or beta * policy logp without reference."""
    stop = jax.lax.stop_gradient
    policy_chosen_logps, policy_rejected_logps = stop(policy_chosen_logps), stop(policy_rejected_logps)
    chosen_rewards = beta * policy_chosen_logps
    rejected_rewards = beta * policy_rejected_logps
    if ref_chosen_logps is not None:
        chosen_rewards = beta * (policy_chosen_logps - stop(ref_chosen_logps))
        rejected_rewards = beta * (policy_rejected_logps - stop(ref_rejected_logps))
    return {
        "rewards/chosen": _mean(chosen_rewards, weights),
        "rewards/rejected": _mean(rejected_rewards, weights),
        "rewards/accuracies": _mean((chosen_rewards > rejected_rewards).astype(jnp.float32), weights),
        "rewards/margins": _mean(chosen_rewards - rejected_rewards, weights),
        "logps/chosen": _mean(policy_chosen_logps, weights),
        "logps/rejected": _mean(policy_rejected_logps, weights),
    }


def _statistics_metrics(types, chosen_stats, rejected_stats, weights):
    """nll_loss (with an sft or orpo term) and logits/* (when the stats carry logit sums), token-weighted over
    the batch as TRL logs them."""
    stop = jax.lax.stop_gradient
    metrics = {}
    if chosen_stats is not None and any(name in ("sft", "orpo") for name in types):
        metrics["nll_loss"] = stop(sft(chosen_stats.logp_sum, chosen_stats.tokens, weights=weights))
    for side, stats in (("chosen", chosen_stats), ("rejected", rejected_stats)):
        if stats is not None and stats.logit_sum is not None:
            metrics[f"logits/{side}"] = stop(_weighted_sum(stats.logit_sum, weights)
                                             / jnp.maximum(_weighted_sum(stats.tokens, weights), 1.0))
    return metrics


def preference_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, *,
                    beta=0.1, loss_type="sigmoid", label_smoothing=0.0, divergence="reverse_kl", alpha=0.5,
                    gamma=0.5, weights=None, loss_weights=None, use_weighting=False, chosen_stats=None,
                    rejected_stats=None):
    """Batch loss and metrics from per-sequence log-probs [B]; the reference may be None for reference-free losses.

    `loss_type` is one name or a list (the weighted sum of the terms' batch losses, `loss_weights` default all
    1.0; a list also reports `loss/<type>` per term, unweighted). `chosen_stats` / `rejected_stats`
    (`SequenceStats`) feed the losses and metrics that read token statistics (`required_statistics`).
    `weights` [B] (optional) makes every mean a weighted one: packed batches give empty pair slots weight 0,
    so they count in neither the loss nor a metric (their per-pair loss is masked to 0 before weighting, so
    a NaN from an empty slot cannot leak in; aot sorts them after every real pair).
    """
    types, term_weights = loss_terms(loss_type, loss_weights)
    validate_loss_options(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, divergence=divergence,
                          alpha=alpha, gamma=gamma, has_reference=ref_chosen_logps is not None,
                          loss_weights=loss_weights, use_weighting=use_weighting)
    if not needs_reference(loss_type):
        ref_chosen_logps = ref_rejected_logps = None
    if weights is not None:
        weights = jnp.asarray(weights).astype(jnp.float32)
    pair_weights = wpo_weights(chosen_stats, rejected_stats) if use_weighting else None
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    metrics, loss = {}, None
    for name, term_weight in zip(types, term_weights):
        term = _term_loss(name, logps, beta=beta, label_smoothing=label_smoothing, divergence=divergence, alpha=alpha,
                          gamma=gamma, weights=weights, pair_weights=pair_weights, chosen_stats=chosen_stats,
                          rejected_stats=rejected_stats)
        if is_combination(loss_type):
            metrics[f"loss/{name}"] = jax.lax.stop_gradient(term)
        weighted = term if term_weight == 1.0 else term_weight * term
        loss = weighted if loss is None else loss + weighted
    metrics.update(preference_metrics(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                      ref_rejected_logps, beta=beta, weights=weights))
    metrics.update(_statistics_metrics(types, chosen_stats, rejected_stats, weights))
    metrics["loss"] = jax.lax.stop_gradient(loss)
    return loss, metrics
