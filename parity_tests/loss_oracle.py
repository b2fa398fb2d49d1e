"""Float64 NumPy oracle of the loss family, written from DESIGN.md section 5 (the papers' formulas).

Deliberately independent of dpo_torch / dpo_jax: no shared code, plain NumPy, float64, the textbook forms
(log(1 + exp(-x)) via logaddexp, the mixture in DiscoPOP written literally where it is finite).
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
                       alpha=0.5, gamma=0.5):
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
