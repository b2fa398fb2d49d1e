"""Hugging Face rotary position embeddings: the half-split ("rotate_half") form over the whole head dim.

`RopeSpec` is one rope configuration (`rope_type` "default", "linear" or "llama3"; any other type is refused
when a config is read). Its inverse frequencies are computed, not stored, exactly as transformers computes
them: float32, `1 / theta ** (arange(0, d, 2) / d)`, then divided by `factor` (linear) or rewritten per
wavelength band (Llama 3.x). `rotary_cos_sin(positions, inv_freq, dtype)` gives cos/sin [B, N, d] for the
positions each token is computed at (so a prefix-shared branch restarts its positions), and `apply_rotary`
rotates q or k [B, H, N, d] with them: x cos + rotate_half(x) sin.

Config dialects: transformers 5 writes `rope_parameters` ({"rope_type", "rope_theta", ...}); older configs
write `rope_theta` and `rope_scaling`. `rope_from_config` reads either (`rope_scaling` first, as transformers
does); the families write the older form (`RopeSpec.scaling_dict`), which transformers 4 and 5 both read.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax.numpy as jnp
import numpy as np

from dpo_jax.models.hf.config_reader import ConfigReader

__all__ = ["RopeSpec", "ROPE_TYPES", "rope_from_params", "rope_from_config", "inv_freq", "rotary_cos_sin",
           "apply_rotary"]

ROPE_TYPES = ("default", "linear", "llama3")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """One rotary configuration: base `theta` and the frequency rewrite `rope_type` with its parameters."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0                                   # linear and llama3
    low_freq_factor: float | None = None                  # llama3
    high_freq_factor: float | None = None                 # llama3
    original_max_position_embeddings: int | None = None   # llama3

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type {self.rope_type!r} is not implemented; expected one of {ROPE_TYPES}")
        if not self.theta > 0 or not self.factor > 0:
            raise ValueError(f"rope theta and factor must be > 0, got {self.theta} and {self.factor}")
        if self.rope_type == "llama3":
            if None in (self.low_freq_factor, self.high_freq_factor, self.original_max_position_embeddings):
                raise ValueError(f"rope_type 'llama3' needs {', '.join(LLAMA3_KEYS)}")
            if not self.high_freq_factor > self.low_freq_factor > 0:
                raise ValueError("llama3 rope needs high_freq_factor > low_freq_factor > 0")

    def scaling_dict(self) -> dict | None:
        """The `rope_scaling` entry of a config.json (None for the default rope)."""
        if self.rope_type == "default":
            return None
        if self.rope_type == "linear":
            return {"rope_type": "linear", "factor": self.factor}
        return {"rope_type": "llama3", "factor": self.factor, "low_freq_factor": self.low_freq_factor,
                "high_freq_factor": self.high_freq_factor,
                "original_max_position_embeddings": self.original_max_position_embeddings}


def rope_from_params(params: dict, *, theta: float, max_position_embeddings: int, reader: ConfigReader,
                     key: str) -> RopeSpec:
    """A RopeSpec from one rope dict (`rope_scaling` or a `rope_parameters` entry); unknown types are refused."""
    params = dict(params)
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    theta = float(params.pop("rope_theta", theta))
    if rope_type not in ROPE_TYPES:
        reader.refuse(key, {"rope_type": rope_type}, f"implemented rope types are {', '.join(ROPE_TYPES)}")
    partial = params.pop("partial_rotary_factor", 1.0)
    if partial not in (None, 1, 1.0):
        reader.refuse(key, {"partial_rotary_factor": partial}, "rotary is applied to the whole head dim only")
    allowed = {"default": (), "linear": ("factor",), "llama3": LLAMA3_KEYS}[rope_type]
    extra = sorted(set(params) - set(allowed))
    if extra:
        reader.refuse(key, {k: params[k] for k in extra}, f"rope_type {rope_type!r} takes only {list(allowed)}")
    if rope_type == "default":
        return RopeSpec(theta=theta)
    if "factor" not in params:
        reader.refuse(key, params, f"rope_type {rope_type!r} needs 'factor'")
    if rope_type == "linear":
        return RopeSpec(theta=theta, rope_type="linear", factor=float(params["factor"]))
    missing = [k for k in LLAMA3_KEYS[1:3] if k not in params]
    if missing:
        reader.refuse(key, params, f"rope_type 'llama3' needs {missing}")
    return RopeSpec(theta=theta, rope_type="llama3", factor=float(params["factor"]),
                    low_freq_factor=float(params["low_freq_factor"]),
                    high_freq_factor=float(params["high_freq_factor"]),
                    original_max_position_embeddings=int(params.get("original_max_position_embeddings",
                                                                    max_position_embeddings)))


def rope_from_config(reader: ConfigReader, *, max_position_embeddings: int, default_theta: float = 10000.0
                     ) -> RopeSpec:
    """The one rope of a config: `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`."""
    theta = reader.take("rope_theta", default_theta, kind=float)
    theta = default_theta if theta is None else theta
    scaling = reader.take("rope_scaling", None)
    parameters = reader.take("rope_parameters", None)
    for key, value in (("rope_scaling", scaling), ("rope_parameters", parameters)):
        if value is not None and not isinstance(value, dict):
            reader.refuse(key, value, "expected a dict")
    source, key = (scaling, "rope_scaling") if scaling else (parameters, "rope_parameters")
    return rope_from_params(source or {}, theta=theta, max_position_embeddings=max_position_embeddings,
                            reader=reader, key=key)


@functools.lru_cache(maxsize=None)
def _inv_freq_cached(spec: RopeSpec, head_dim: int) -> tuple[float, ...]:
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    base = np.float32(1.0) / (np.float32(spec.theta) ** exponents)
    if spec.rope_type == "linear":
        base = base / np.float32(spec.factor)
    elif spec.rope_type == "llama3":
        base = _llama3_inv_freq(base, spec)
    return tuple(float(x) for x in base.astype(np.float32))


def _llama3_inv_freq(inv: np.ndarray, spec: RopeSpec) -> np.ndarray:
    """transformers' `_compute_llama3_parameters`, in float32 as torch computes it."""
    factor = np.float32(spec.factor)
    low, high = spec.low_freq_factor, spec.high_freq_factor
    old_context = spec.original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = np.float32(2 * math.pi) / inv
    scaled = np.where(wavelen > low_freq_wavelen, inv / factor, inv).astype(np.float32)
    smooth = ((np.float32(old_context) / wavelen - np.float32(low)) / np.float32(high - low)).astype(np.float32)
    smoothed = (np.float32(1) - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def inv_freq(spec: RopeSpec, head_dim: int) -> np.ndarray:
    """float32 [head_dim // 2] inverse frequencies (a constant of the config, never a parameter)."""
    if head_dim % 2:
        raise ValueError(f"rotary needs an even head_dim, got {head_dim}")
    return np.asarray(_inv_freq_cached(spec, head_dim), np.float32)


def rotary_cos_sin(positions, frequencies: np.ndarray, dtype):
    """cos, sin [B, N, d] (d = 2 x len(frequencies)) at integer `positions` [B, N], cast to `dtype`."""
    angles = jnp.asarray(positions)[..., None].astype(jnp.float32) * jnp.asarray(frequencies, jnp.float32)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x, cos, sin):
    """x [B, H, N, d] rotated by cos, sin [B, N, d]: x cos + rotate_half(x) sin (transformers' apply_rotary_pos_emb)."""
    cos, sin = cos[:, None], sin[:, None]
    return x * cos + rotate_half(x) * sin
