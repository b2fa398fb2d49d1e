"""A family's key table and the two directions through it, so that reading and writing cannot drift apart.

A key table is a list of `KeyRow(key, param, transpose)`: the checkpoint key (transformers' state_dict name),
the model's `nnx.Param`, and whether the torch layout is the transpose of ours (linear weights: torch keeps
`(out, in)`, we keep `kernel [in, out]`). The on-disk reader (`hf.checkpoint`), the in-memory conversions
below and `save_pretrained` all go through one table per model.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["KeyRow", "hf_shape", "as_numpy", "state_dict_from_table", "load_state_dict", "check_keys",
           "host_value", "linear_rows", "norm_row", "attention_rows", "mlp_rows", "ignored_checkpoint_keys"]


class KeyRow(NamedTuple):
    key: str
    param: nnx.Param
    transpose: bool


def hf_shape(row: KeyRow) -> tuple[int, ...]:
    """The shape the checkpoint stores for this row."""
    shape = tuple(row.param.get_value().shape)
    return shape[::-1] if row.transpose else shape


def as_numpy(value) -> np.ndarray:
    """numpy, jax or torch (any dtype, bfloat16 included: via ml_dtypes) as a numpy array, without importing torch."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16: widen exactly, narrow back exactly
            import ml_dtypes

            return value.float().numpy().astype(ml_dtypes.bfloat16)
        return value.numpy()
    return np.asarray(value)


def host_value(row: KeyRow) -> np.ndarray:
    """The row's parameter on the host in the checkpoint layout (gathered first when it spans several hosts)."""
    value = row.param.get_value()
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        from jax.experimental import multihost_utils

        value = multihost_utils.process_allgather(value, tiled=True)
    value = np.asarray(jax.device_get(value))
    return np.ascontiguousarray(value.T) if row.transpose else value


def state_dict_from_table(table: list[KeyRow]) -> dict[str, np.ndarray]:
    """transformers' state_dict (torch layouts, checkpoint dtypes) as numpy arrays."""
    return {row.key: host_value(row) for row in table}


def check_keys(table: list[KeyRow], keys, *, ignored=(), source: str = "the checkpoint") -> None:
    """ValueError naming the missing and unexpected keys (`ignored` keys may be present and are skipped)."""
    expected = {row.key for row in table}
    keys = set(keys) - set(ignored)
    missing, unexpected = sorted(expected - keys), sorted(keys - expected)
    if missing or unexpected:
        raise ValueError(f"{source} does not match the config: missing keys {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''} ({len(missing)}), unexpected keys {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)})")


def load_state_dict(table: list[KeyRow], state_dict, *, dtype, ignored=()) -> None:
    """Set every row's parameter from a transformers state_dict (numpy or torch values), cast to `dtype`."""
    check_keys(table, state_dict.keys(), ignored=ignored, source="state_dict")
    for row in table:
        value = as_numpy(state_dict[row.key])
        if tuple(value.shape) != hf_shape(row):
            raise ValueError(f"{row.key}: shape {tuple(value.shape)}, expected {hf_shape(row)}")
        value = value.T if row.transpose else value
        row.param.set_value(jnp.asarray(value, dtype=dtype))


# ---- rows of the shared building blocks (hf.layers), by transformers' names ------------------------------------

def linear_rows(prefix: str, linear) -> list[KeyRow]:
    rows = [KeyRow(f"{prefix}.weight", linear.kernel, True)]
    if linear.bias is not None:
        rows.append(KeyRow(f"{prefix}.bias", linear.bias, False))
    return rows


def norm_row(prefix: str, norm) -> KeyRow:
    return KeyRow(f"{prefix}.weight", norm.weight, False)


def attention_rows(prefix: str, attention) -> list[KeyRow]:
    """`{prefix}.{q,k,v,o}_proj` and, with per-head norms, `{prefix}.{q,k}_norm`."""
    rows = []
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        rows += linear_rows(f"{prefix}.{name}", getattr(attention, name))
    if attention.q_norm is not None:
        rows += [norm_row(f"{prefix}.q_norm", attention.q_norm), norm_row(f"{prefix}.k_norm", attention.k_norm)]
    return rows


def mlp_rows(prefix: str, mlp) -> list[KeyRow]:
    rows = []
    for name in ("gate_proj", "up_proj", "down_proj"):
        rows += linear_rows(f"{prefix}.{name}", getattr(mlp, name))
    return rows


def ignored_checkpoint_keys(keys, *, tied: bool) -> set[str]:
    """Keys transformers itself skips: rotary buffers of old checkpoints, and the lm_head copy of tied embeddings."""
    return {key for key in keys if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight")}
