"""`TrainConfig`: every hyper-parameter of a DPO run's optimisation (the model's shape lives with the model).

Grouped as the run uses them: the loss (same names and defaults as `dpo_torch.DPO`), the optimizer and its
schedule, the reference, and `forward` (`ForwardOptions`: how the log-probs are computed, compute dtype
included: the one precision switch). Frozen and validated on construction, with messages naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dpo_jax.dpo import validate_options
from dpo_jax.forward import ForwardOptions
from dpo_jax.losses import needs_reference
from dpo_jax.train.optim import OPTIMIZERS, SCHEDULES

__all__ = ["TrainConfig"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation of a run. `bf16=True` is shorthand for `forward.compute_dtype="bfloat16"`."""

    # loss (same names and defaults as dpo_torch.DPO); loss_type may be a tuple of terms with loss_weights
    beta: float = 0.1
    loss_type: str | tuple[str, ...] = "sigmoid"
    reduction: str = "mean"
    mask_alignment: str = "next_token"
    label_smoothing: float = 0.0
    divergence: str = "reverse_kl"
    alpha: float = 0.5
    gamma: float = 0.5
    pad_id: int | None = None
    loss_weights: tuple[float, ...] | None = None
    ld_alpha: float | None = None       # LD-DPO (reduction "sum")
    use_weighting: bool = False         # WPO
    logits_metrics: bool = False        # also log logits/chosen, logits/rejected
    # optimizer and schedule; None picks the optimizer's default (adamw 1e-4 / 0, rmsprop 1e-6 / 150)
    optimizer: str = "adamw"
    learning_rate: float | None = None
    warmup_steps: int | None = None
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    total_steps: int = 1000
    weight_decay: float = 0.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    eps: float = 1e-8
    rmsprop_decay: float = 0.99
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    # reference model
    precompute_ref: bool = False
    ref_sync_every: int = 0
    ref_sync_alpha: float = 0.6
    # how the log-probs are computed (head, scored window, remat, compute dtype, attention backend)
    forward: ForwardOptions = dataclasses.field(default_factory=ForwardOptions)
    bf16: dataclasses.InitVar[bool] = False

    def __post_init__(self, bf16=False):
        for name in ("loss_type", "loss_weights"):  # a list (e.g. from run_config.json) -> a hashable tuple
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        forward = ForwardOptions.of(self.forward)
        if bf16:
            forward = forward.replace(compute_dtype="bfloat16")
        object.__setattr__(self, "forward", forward)
        self.validate()

    @property
    def reference_free(self) -> bool:
        return not needs_reference(self.loss_type)

    @property
    def compute_dtype(self) -> str | None:
        return self.forward.compute_dtype

    def validate(self) -> None:
        validate_options(beta=self.beta, loss_type=self.loss_type, reduction=self.reduction,
                         mask_alignment=self.mask_alignment, label_smoothing=self.label_smoothing,
                         divergence=self.divergence, alpha=self.alpha, gamma=self.gamma,
                         has_reference=not self.reference_free, loss_weights=self.loss_weights,
                         ld_alpha=self.ld_alpha, use_weighting=self.use_weighting,
                         logits_metrics=self.logits_metrics)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {', '.join(SCHEDULES)}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not isinstance(self.grad_accum, int) or self.grad_accum < 1:
            raise ValueError(f"grad_accum must be a positive int, got {self.grad_accum!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 or None disables it), got {self.grad_clip}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.ref_sync_every < 0:
            raise ValueError(f"ref_sync_every must be >= 0, got {self.ref_sync_every}")
        if not 0.0 <= self.ref_sync_alpha <= 1.0:
            raise ValueError(f"ref_sync_alpha must be in [0, 1], got {self.ref_sync_alpha}")
        if self.ref_sync_every and (self.precompute_ref or self.reference_free):
            raise ValueError("ref_sync_every needs a live reference: not with precompute_ref or a reference-free loss")

    def loss_options(self) -> dict[str, Any]:
        """The keyword arguments of `dpo.batch_loss` / `dpo_loss` this config sets."""
        return dict(beta=self.beta, pad_id=self.pad_id, loss_type=self.loss_type, reduction=self.reduction,
                    mask_alignment=self.mask_alignment, label_smoothing=self.label_smoothing,
                    divergence=self.divergence, alpha=self.alpha, gamma=self.gamma, loss_weights=self.loss_weights,
                    ld_alpha=self.ld_alpha, use_weighting=self.use_weighting, logits_metrics=self.logits_metrics)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        if isinstance(data.get("forward"), dict):
            data["forward"] = ForwardOptions.from_dict(data["forward"])
        return cls(**data)  # a run_config.json from before `forward` has "bf16": accepted as the shorthand

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
