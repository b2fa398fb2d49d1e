"""Optimizers and learning-rate schedules for DPO training (optax).

`adamw` is the default; `rmsprop` with a linear warmup reproduces the DPO paper's recipe (lr 1e-6, 150 warmup
steps). Both are configured so that they match their torch counterparts: optax `adamw(eps=1e-8, eps_root=0)`
is `torch.optim.AdamW` (decoupled weight decay scaled by the learning rate), and `rmsprop(eps_in_sqrt=False)`
is `torch.optim.RMSprop` (eps added after the square root).
"""

from __future__ import annotations

import optax

OPTIMIZERS = ("adamw", "rmsprop")
SCHEDULES = ("cosine", "linear", "constant")

# Per-optimizer defaults used when TrainConfig leaves learning_rate / warmup_steps as None.
DEFAULT_LEARNING_RATE = {"adamw": 1e-4, "rmsprop": 1e-6}
DEFAULT_WARMUP_STEPS = {"adamw": 0, "rmsprop": 150}


def resolved_learning_rate(config) -> float:
    if config.learning_rate is not None:
        return float(config.learning_rate)
    return DEFAULT_LEARNING_RATE[config.optimizer]


def resolved_warmup_steps(config) -> int:
    if config.warmup_steps is not None:
        return int(config.warmup_steps)
    return DEFAULT_WARMUP_STEPS[config.optimizer]


def make_schedule(config):
    """Linear warmup from 0 to the peak, then cosine / linear decay to `peak * min_lr_ratio`, or constant.

    The decay spans the steps after warmup up to `config.total_steps`; past the end the schedule stays at
    its final value.
    """
    peak = resolved_learning_rate(config)
    warmup = resolved_warmup_steps(config)
    end = peak * config.min_lr_ratio
    decay_steps = max(int(config.total_steps) - warmup, 1)
    if config.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.min_lr_ratio)
    elif config.schedule == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    elif config.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise ValueError(f"unknown schedule {config.schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if warmup <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(config) -> optax.GradientTransformation:
    """Global-norm clipping (when `grad_clip` is set) followed by adamw or rmsprop on the schedule."""
    schedule = make_schedule(config)
    if config.optimizer == "adamw":
        base = optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.eps, eps_root=0.0,
                           weight_decay=config.weight_decay)
    elif config.optimizer == "rmsprop":
        base = optax.rmsprop(schedule, decay=config.rmsprop_decay, eps=config.eps, eps_in_sqrt=False)
        if config.weight_decay:
            base = optax.chain(optax.add_decayed_weights(config.weight_decay), base)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    if config.grad_clip is not None and config.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip), base)
    return base
