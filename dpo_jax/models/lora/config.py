"""`LoraConfig`: which linear layers get a low-rank adapter, its rank, scale, dropout and initialisation.

The names and their meaning are PEFT's (`peft.LoraConfig`), so one config string means the same thing in both
faces: `target_modules` is "all-linear" (every linear layer but the output head), a sequence of names (a layer is
targeted when its checkpoint module name equals one or ends with "." + one: "q_proj" targets
"model.layers.3.self_attn.q_proj"), or any other string, a regular expression the whole module name must match.
`exclude` takes the same two forms. Module names are the checkpoint's (transformers' for the Hugging Face
families, x-transformers' state_dict names for the port), which are also the names PEFT sees in torch.

The update is `scale * x @ A @ B` with `scale = alpha / r` (`alpha / sqrt(r)` with `use_rslora`). One factor
starts at zero, so the adapted model starts exactly as the base and DPO's step 0 gives loss ln 2:
`init="zero_b"` (PEFT's default: A uniform in +-1/sqrt(in), B = 0) or `init="zero_a"` (A = 0, B uniform in
+-1/sqrt(r)). Quantised bases (QLoRA) are not implemented.
"""

from __future__ import annotations

import dataclasses
import math
import re

__all__ = ["LoraConfig", "ALL_LINEAR", "INITS", "QLORA_REFUSAL", "scale_of"]

ALL_LINEAR = "all-linear"
INITS = ("zero_b", "zero_a")
QLORA_REFUSAL = ("quantised bases (QLoRA: 4-bit / 8-bit base weights) are not implemented; train LoRA adapters on "
                 "a bfloat16 or float32 base instead")


def _names_or_pattern(value, field: str):
    """A tuple of non-empty names, or a string (ALL_LINEAR or a compilable regular expression)."""
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{field} must not be empty")
        if value != ALL_LINEAR:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"{field} {value!r} is not a valid regular expression: {err}") from None
        return value
    try:
        names = tuple(value)
    except TypeError:
        raise TypeError(f"{field} must be a string or a sequence of module names, got {type(value).__name__}") from None
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{field} must hold non-empty module names, got {name!r}")
    return names


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters: rank `r`, scale `alpha / r`; see the module docstring for every field."""

    r: int
    alpha: float
    target_modules: str | tuple[str, ...] = ALL_LINEAR
    exclude: str | tuple[str, ...] = ("lm_head",)
    dropout: float = 0.0
    use_rslora: bool = False
    init: str = "zero_b"

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA rank r must be a positive int, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not (
                math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"LoRA alpha must be a positive finite number, got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "target_modules", _names_or_pattern(self.target_modules, "target_modules"))
        if self.exclude is None:
            object.__setattr__(self, "exclude", ())
        elif self.exclude == ALL_LINEAR:
            raise ValueError("exclude cannot be 'all-linear'")
        else:
            object.__setattr__(self, "exclude", () if self.exclude == () else _names_or_pattern(self.exclude, "exclude"))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        if not isinstance(self.use_rslora, bool):
            raise TypeError(f"use_rslora must be a bool, got {self.use_rslora!r}")
        if self.init not in INITS:
            raise ValueError(f"unknown LoRA init {self.init!r}; expected one of {', '.join(INITS)} (one factor must "
                             "start at zero so that the adapted model starts as the base)")

    @property
    def scale(self) -> float:
        """The factor on x @ A @ B: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return scale_of(self.alpha, self.r, self.use_rslora)

    def replace(self, **changes) -> "LoraConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for key in ("target_modules", "exclude"):
            if isinstance(data[key], tuple):
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "LoraConfig":
        return cls(**data)


def scale_of(alpha: float, rank: int, use_rslora: bool) -> float:
    """PEFT's scaling: lora_alpha / r, or lora_alpha / sqrt(r) when use_rslora."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank
