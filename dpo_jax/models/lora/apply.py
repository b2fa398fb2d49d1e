"""Adapters on a model: which linear layers a `LoraConfig` targets, `apply_lora`, `merge_lora`, the adapter-off view.

A layer is named by its checkpoint module name (the key table's weight key without ".weight": transformers' names
for the Hugging Face families, x-transformers' state_dict names for the port), the names PEFT matches in torch,
so `target_modules=("q_proj", "v_proj")` or a regular expression selects the same layers in both faces. The output
head (`lm_head`, `to_logits`) never takes an adapter: the log-prob head reads its weight directly, so an adapter
there would be skipped by the chunked head; targeting it is refused.

Every function here returns a new model object (`nnx.clone`: new modules, the same arrays) and leaves its input as
it was, so a base model and its adapted policy share one copy of the base weights.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import nnx

from dpo_jax.models.lora.adapter import AdapterSpec, LoraAdapter, LoraDropoutKey
from dpo_jax.models.lora.config import ALL_LINEAR, LoraConfig

__all__ = ["OUTPUT_HEADS", "linear_layers", "checkpoint_module_names", "select_targets", "apply_lora", "merge_lora",
           "without_adapters", "has_adapters", "adapters", "adapter_pairs", "check_adapters_start_at_zero",
           "adapter_layout", "attach_adapters", "set_dropout_keys", "lora_settings", "module_at", "attach_adapter"]

OUTPUT_HEADS = ("lm_head", "to_logits")  # the output projection's attribute: Hugging Face families / the port


def _adaptable(module) -> bool:
    """A linear layer of this project: a 2-D `kernel` Param and a `lora` slot."""
    kernel = getattr(module, "kernel", None)
    return (isinstance(module, nnx.Module) and hasattr(module, "lora") and isinstance(kernel, nnx.Param)
            and len(kernel.get_value().shape) == 2)


def linear_layers(model) -> list[tuple[tuple, nnx.Module]]:
    """(path, layer) of every linear layer that can hold an adapter, in graph order."""
    return [(path, module) for path, module in nnx.iter_modules(model) if _adaptable(module)]


def module_at(model, path):
    """The submodule at `path` (attribute names and list indices, as `nnx.iter_modules` gives them)."""
    for part in path:
        model = model[part] if isinstance(part, int) else getattr(model, part)
    return model


def _key_rows(model):
    """(checkpoint key, Param) of the model's key table, or [] for a model without one."""
    from dpo_jax.models.x_transformers.model import Transformer

    if isinstance(model, Transformer):
        from dpo_jax.models.x_transformers.weights import parameter_table

        return [(key, param) for key, param, _ in parameter_table(model)]
    from dpo_jax.models.pretrained import family_of, parameter_table

    try:
        family_of(model)
    except TypeError:
        return []
    return [(row.key, row.param) for row in parameter_table(model)]


def checkpoint_module_names(model) -> dict[tuple, str]:
    """{path: checkpoint module name} of every linear layer (the JAX path joined by "." without a key table)."""
    by_param = {id(param): key for key, param in _key_rows(model)}
    names = {}
    for path, layer in linear_layers(model):
        key = by_param.get(id(layer.kernel))
        names[path] = key.removesuffix(".weight") if key else ".".join(str(part) for part in path)
    return names


def _output_head_paths(model) -> set[tuple]:
    return {(name,) for name in OUTPUT_HEADS if _adaptable(getattr(model, name, None))}


def _matches(name: str, spec) -> bool:
    """PEFT's rule: a string is a regular expression the whole name matches; names match equal or as a suffix."""
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == target or name.endswith("." + target) for target in spec)


def _available(names) -> str:
    short = sorted({name.rsplit(".", 1)[-1] for name in names})
    return ", ".join(short[:24]) + (" ..." if len(short) > 24 else "")


def select_targets(model, config: LoraConfig) -> list[tuple[tuple, str]]:
    """(path, checkpoint module name) of the layers `config` adapts; ValueError naming what matches nothing."""
    names = checkpoint_module_names(model)
    heads = _output_head_paths(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear layer that can hold a LoRA adapter (the Hugging Face "
                         "families and the x-transformers port have them)")
    targets = config.target_modules
    if targets == ALL_LINEAR:
        chosen = [path for path in names if path not in heads]
    else:
        chosen = [path for path in names if _matches(names[path], targets)]
        if isinstance(targets, tuple):
            for target in targets:
                if not any(_matches(names[path], (target,)) for path in names):
                    raise ValueError(f"target_modules entry {target!r} matches no linear layer of "
                                     f"{type(model).__name__}; its linear layers are named: {_available(names.values())}")
        elif not chosen:
            raise ValueError(f"target_modules pattern {targets!r} matches no linear layer's full name (e.g. "
                             f"{next(iter(names.values()))!r}); its linear layers are named: {_available(names.values())}")
    if config.exclude:
        chosen = [path for path in chosen if not _matches(names[path], config.exclude)]
    for path in chosen:
        if path in heads:
            raise ValueError(f"{names[path]} is the output head: it cannot take a LoRA adapter (the log-prob head "
                             "reads its weight directly); leave it out of target_modules or add it to exclude")
    if not chosen:
        raise ValueError(f"LoRA targets {targets!r} minus exclude {config.exclude!r} leave no layer to adapt")
    return [(path, names[path]) for path in chosen]


def has_adapters(model) -> bool:
    return any(layer.lora is not None for _, layer in linear_layers(model))


def adapters(model) -> list[tuple[str, LoraAdapter]]:
    """(checkpoint module name, adapter) of every adapted layer, in graph order."""
    names = checkpoint_module_names(model)
    return [(names[path], layer.lora) for path, layer in linear_layers(model) if layer.lora is not None]


def adapter_pairs(model) -> list[tuple[str, jax.Array, jax.Array]]:
    """(module name, A [in, r], B [r, out]) of every adapter (`dpo_torch.lora.adapter_pairs` gives torch's layout)."""
    return [(name, adapter.a.get_value(), adapter.b.get_value()) for name, adapter in adapters(model)]


def check_adapters_start_at_zero(model) -> None:
    """ValueError unless every adapter has exactly one zero factor: the adapted model then equals its base (so the
    adapter-off base is the initial policy, and DPO's step 0 gives loss ln 2), and the other factor gets a gradient."""
    pairs = adapter_pairs(model)
    if not pairs:
        raise ValueError("the model has no LoRA adapters")
    nonzero = jax.device_get([(jnp.any(a != 0), jnp.any(b != 0)) for _, a, b in pairs])
    for (name, _, _), (a_nonzero, b_nonzero) in zip(pairs, nonzero):
        if not a_nonzero and not b_nonzero:
            raise ValueError(f"LoRA adapter {name}: both factors are zero, so neither ever gets a gradient; "
                             "initialise one of them (init='zero_b' or 'zero_a')")
        if a_nonzero and b_nonzero:
            raise ValueError(
                f"LoRA adapter {name}: neither factor is zero (B @ A != 0), so the adapter-off base is not the initial "
                "policy and step 0 would not give loss ln 2. To continue training an existing adapter, make it the "
                "reference: pass the policy itself as the reference model (dpo-jax train --init-adapter DIR)")


def attach_adapter(layer, adapter: LoraAdapter) -> None:
    """Put `adapter` in the `lora` slot of `layer` (in place), after checking its shape against the kernel."""
    in_features, out_features = layer.kernel.get_value().shape
    shape = (adapter.a.get_value().shape[0], adapter.b.get_value().shape[1])
    if shape != (in_features, out_features):
        raise ValueError(f"adapter maps {shape[0]} -> {shape[1]} features, the layer {in_features} -> {out_features}")
    layer.lora = adapter


def apply_lora(model, config: LoraConfig, *, seed: int = 0):
    """A copy of `model` (same base arrays) with a fresh adapter on every layer `config` targets.

    The non-zero factor of adapter i is drawn from `jax.random.fold_in(jax.random.key(seed), i)`. Refused on a
    model that already has adapters (merge them first with `merge_lora`, or apply to the base).
    """
    if not isinstance(config, LoraConfig):
        raise TypeError(f"config must be a dpo_jax.LoraConfig, got {type(config).__name__}")
    if not isinstance(model, nnx.Module):
        raise TypeError(f"apply_lora needs an nnx.Module of this project, got {type(model).__name__}")
    if has_adapters(model):
        raise ValueError("the model already has LoRA adapters; merge them first (dpo_jax.merge_lora) or apply the "
                         "config to the base model")
    targets = select_targets(model, config)
    adapted = nnx.clone(model)
    root = jax.random.key(seed)
    for index, (path, _) in enumerate(targets):
        layer = module_at(adapted, path)
        in_features, out_features = layer.kernel.get_value().shape
        attach_adapter(layer, LoraAdapter(in_features, out_features, rank=config.r, alpha=config.alpha,
                                          use_rslora=config.use_rslora, dropout=config.dropout, init=config.init,
                                          key=jax.random.fold_in(root, index)))
    return adapted


def without_adapters(model):
    """The adapter-off view: the same model object graph and base arrays with every adapter slot empty."""
    view = nnx.clone(model)
    for _, layer in linear_layers(view):
        layer.lora = None
    return view


def merge_lora(model):
    """The base with every adapter folded in, W + scale * A @ B (added in float32, cast once to W's dtype), and
    no adapters: what `save_pretrained` writes for tools that do not read adapters."""
    if not has_adapters(model):
        raise ValueError("the model has no LoRA adapters to merge")
    merged = nnx.clone(model)
    for _, layer in linear_layers(merged):
        adapter = layer.lora
        if adapter is None:
            continue
        kernel = layer.kernel.get_value()
        delta = jnp.matmul(adapter.a.get_value().astype(jnp.float32), adapter.b.get_value().astype(jnp.float32),
                           precision=jax.lax.Precision.HIGHEST) * adapter.scale
        layer.kernel.set_value((kernel.astype(jnp.float32) + delta).astype(kernel.dtype))
        layer.lora = None
    return merged


def adapter_layout(model) -> tuple[tuple[tuple, AdapterSpec], ...]:
    """(path, spec) of every adapter: hashable, so a graph rebuilt elsewhere (`models.precision`) gets them back."""
    return tuple((path, layer.lora.spec()) for path, layer in linear_layers(model) if layer.lora is not None)


def attach_adapters(model, layout) -> None:
    """Give `model` (in place; typically an abstract rebuild) adapters with the structure `layout` describes."""
    for path, spec in layout:
        attach_adapter(module_at(model, path), LoraAdapter.from_spec(spec))


def set_dropout_keys(model, key) -> None:
    """In place: adapter i with dropout draws its mask from fold_in(key, i) in this forward (train steps only)."""
    for index, (_, adapter) in enumerate(adapters(model)):
        if adapter.dropout > 0:
            adapter.dropout_key = LoraDropoutKey(jax.random.key_data(jax.random.fold_in(key, index)))


def lora_settings(model) -> dict:
    """{"r", "alpha", "use_rslora", "dropout"} shared by every adapter (ValueError when they differ)."""
    found = {(adapter.rank, adapter.alpha, adapter.use_rslora, adapter.dropout) for _, adapter in adapters(model)}
    if not found:
        raise ValueError("the model has no LoRA adapters")
    if len(found) > 1:
        raise ValueError(f"the adapters differ in (r, alpha, use_rslora, dropout): {sorted(found)}")
    r, alpha, use_rslora, dropout = found.pop()
    return {"r": r, "alpha": alpha, "use_rslora": use_rslora, "dropout": dropout}
