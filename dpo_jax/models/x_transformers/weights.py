"""torch <-> Flax conversion for x-transformers decoder-only models, with exact key names.

The table in `parameter_table` is the single place that knows how an x-transformers state_dict key
maps onto the JAX model; everything else (state_dict_from_model, model_from_state_dict, from_torch,
to_torch, safetensors) goes through it, so the directions cannot drift apart.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dpo_jax.models.x_transformers.config import TransformerConfig
from dpo_jax.models.x_transformers.layers import Linear
from dpo_jax.models.x_transformers.positional import rotary_inv_freq
from dpo_jax.models.x_transformers.model import Transformer
from dpo_jax.models.x_transformers.introspect import config_from_torch

__all__ = ["config_from_torch", "from_torch", "to_torch", "build_torch_model", "state_dict_from_model",
           "model_from_state_dict", "parameter_table"]

ROTARY_BUFFER_KEY = "attn_layers.rotary_pos_emb.inv_freq"
VERIFY_TOLERANCE = 1e-4


def _linear(prefix: str, linear: Linear | None):
    """torch Linear keeps weight (out, in); ours is kernel (in, out)."""
    if linear is None:
        return []
    rows = [(f"{prefix}.weight", linear.kernel, True)]
    if linear.bias is not None:
        rows.append((f"{prefix}.bias", linear.bias, False))
    return rows


def _norm(prefix: str, norm):
    if norm is None:
        return []
    for name in ("gamma", "g"):
        if hasattr(norm, name):
            return [(f"{prefix}.{name}", getattr(norm, name), False)]
    return []  # SimpleRMSNorm has no parameters


def parameter_table(model: Transformer) -> list[tuple[str, nnx.Param, bool]]:
    """(torch key, our Param, transpose?) for every parameter, in x-transformers' order."""
    config = model.config
    rows = [("token_emb.emb.weight", model.token_emb.weight, False)]
    if model.pos_emb is not None:
        rows.append(("pos_emb.emb.weight", model.pos_emb.emb.weight, False))
    rows += _norm("post_emb_norm", model.post_emb_norm)
    rows += _linear("project_emb", model.project_emb)
    if model.memory_tokens is not None:
        rows.append(("memory_tokens", model.memory_tokens, False))
    for index, block in enumerate(model.layers):
        prefix = f"attn_layers.layers.{index}"
        for slot, norm in enumerate((block.pre_branch_norm, block.post_branch_norm, block.post_main_norm)):
            rows += _norm(f"{prefix}.0.{slot}", norm)
        fn = block.fn
        if block.kind == "a":
            for name in ("q", "k", "v", "out"):
                rows += _linear(f"{prefix}.1.to_{name}", getattr(fn, f"to_{name}"))
            for name in ("mem_k", "mem_v", "qk_norm_q_scale", "qk_norm_k_scale"):
                if getattr(fn, name) is not None:
                    rows.append((f"{prefix}.1.{name}", getattr(fn, name), False))
        else:
            ff = f"{prefix}.1.fn.ff" if config.macaron else f"{prefix}.1.ff"
            rows += _linear(f"{ff}.0.proj" if config.ff_glu else f"{ff}.0.0", fn.proj_in)
            rows += _linear(f"{ff}.2", fn.proj_out)
        if block.residual_scale is not None:
            rows.append((f"{prefix}.2.residual_scale", block.residual_scale, False))
    if model.rel_pos is not None:
        rows.append(("attn_layers.rel_pos.relative_attention_bias.weight", model.rel_pos.weight, False))
    rows += _norm("attn_layers.final_norm", model.final_norm)
    rows += _linear("to_logits", model.to_logits)
    return rows


def state_dict_from_model(model: Transformer) -> dict[str, np.ndarray]:
    """x-transformers state_dict (torch layouts) as numpy arrays, including the rotary buffer."""
    state = {key: np.asarray(jax.device_get(param[...])) for key, param, _ in parameter_table(model)}
    state = {key: (np.ascontiguousarray(value.T) if transpose else value)
             for (key, _, transpose), value in zip(parameter_table(model), state.values())}
    if model.config.rotary_pos_emb:
        state[ROTARY_BUFFER_KEY] = rotary_inv_freq(model.config.rotary_dim)
    return state


def _as_numpy(value) -> np.ndarray:
    """numpy view of a numpy or torch value; torch's bfloat16 (which numpy cannot hold) goes through float32,
    exactly: every bfloat16 is a float32."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def model_from_state_dict(config: TransformerConfig, state_dict, *, rngs: nnx.Rngs | None = None) -> Transformer:
    """Build a Transformer and load an x-transformers state_dict (numpy or torch values) into it."""
    # abstract init (shapes only): random init of weights that are overwritten anyway is slow
    model = nnx.eval_shape(lambda: Transformer(config, rngs=rngs or nnx.Rngs(0)))
    table = parameter_table(model)
    expected = {key for key, _, _ in table} | ({ROTARY_BUFFER_KEY} if config.rotary_pos_emb else set())
    missing, unexpected = expected - set(state_dict), set(state_dict) - expected
    if missing or unexpected:
        raise ValueError(f"state_dict does not match the config: missing {sorted(missing)}, "
                         f"unexpected {sorted(unexpected)}")
    if config.rotary_pos_emb:
        stored = _as_numpy(state_dict[ROTARY_BUFFER_KEY])
        computed = rotary_inv_freq(config.rotary_dim)
        if stored.shape != computed.shape or not np.allclose(stored, computed, rtol=1e-6, atol=0):
            raise ValueError("rotary inv_freq in the checkpoint differs from base-10000, dim_head//2 rotary")
    for key, param, transpose in table:
        value = _as_numpy(state_dict[key])
        value = value.T if transpose else value
        if value.shape != param.get_value().shape:
            raise ValueError(f"{key}: shape {value.shape} (after layout change), expected {param.get_value().shape}")
        param.set_value(jnp.asarray(value, dtype=config.param_dtype))
    return model


def build_torch_model(config: TransformerConfig):
    """A freshly initialised torch TransformerWrapper with the same architecture as `config`."""
    from x_transformers import Decoder, TransformerWrapper

    wrapper_kwargs, decoder_kwargs = config.to_torch_kwargs()
    return TransformerWrapper(**wrapper_kwargs, attn_layers=Decoder(**decoder_kwargs))


def from_torch(wrapper, *, verify: bool = False, dtype=jnp.float32) -> Transformer:
    """Convert a live torch TransformerWrapper (config read from the module itself) to a Transformer."""
    config = config_from_torch(wrapper).replace(dtype=dtype)
    model = model_from_state_dict(config, wrapper.state_dict())
    if verify:
        verify_against_torch(model, wrapper)
    return model


def to_torch(model: Transformer, wrapper):
    """Write the JAX weights into an existing torch wrapper in place (architectures must agree)."""
    import torch

    torch_config = config_from_torch(wrapper)
    if not torch_config.same_architecture(model.config):
        raise ValueError(f"architecture mismatch:\n  jax:   {model.config}\n  torch: {torch_config}")
    state = state_dict_from_model(model)
    own = wrapper.state_dict()
    if ROTARY_BUFFER_KEY in state:  # keep torch's own buffer; it is a constant, checked when reading
        state[ROTARY_BUFFER_KEY] = own[ROTARY_BUFFER_KEY]
    tensors = {key: torch.as_tensor(np.array(value)) if not isinstance(value, torch.Tensor) else value
               for key, value in state.items()}
    wrapper.load_state_dict(tensors, strict=True)
    return wrapper


def verify_against_torch(model: Transformer, wrapper, *, batch: int = 2, seq_len: int | None = None,
                         seed: int = 0, tolerance: float = VERIFY_TOLERANCE) -> float:
    """Run both on random tokens (with and without a right-padding mask); ValueError if they differ."""
    import torch

    config = model.config
    seq_len = min(seq_len or 16, config.max_seq_len)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.num_tokens, size=(batch, seq_len), dtype=np.int64)
    lengths = rng.integers(1, seq_len + 1, size=(batch,))
    mask = np.arange(seq_len)[None] < lengths[:, None]
    was_training = wrapper.training
    wrapper.eval()
    worst = 0.0
    try:
        for m in (None, mask):
            with torch.no_grad():
                expected = wrapper(torch.from_numpy(tokens), mask=None if m is None else torch.from_numpy(m))
            expected = expected.float().numpy()
            actual = np.asarray(model(tokens, mask=m), dtype=np.float32)
            # pad positions included: both sides run the same arithmetic there too
            diff = np.abs(actual - expected).max() / max(1.0, float(np.abs(expected).max()))
            worst = max(worst, float(diff))
    finally:
        wrapper.train(was_training)
    if not np.isfinite(worst) or worst > tolerance:
        raise ValueError(f"converted model disagrees with torch: relative max |diff| {worst:.3e} > {tolerance:.0e}")
    return worst
