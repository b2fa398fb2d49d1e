"""Read a TransformerConfig off a live x-transformers TransformerWrapper, refusing what we do not port.

Every option outside the supported set raises NotImplementedError naming it: a converted model that
silently computes something else is worse than no model. Checks compare module attributes against
x-transformers 2.31.10 defaults; where an option leaves no attribute, the module structure is compared.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from dpo_jax.models.x_transformers.config import TransformerConfig
from dpo_jax.models.x_transformers.positional import alibi_slopes, rotary_inv_freq


def _refuse(option: str, detail: str = "") -> None:
    raise NotImplementedError(f"x-transformers option `{option}` is not supported by dpo_jax"
                              + (f" ({detail})" if detail else ""))


def _require(condition: bool, option: str, detail: str = "") -> None:
    if not condition:
        _refuse(option, detail)


def _check_defaults(module, defaults: dict[str, object], prefix: str = "") -> None:
    """Each attribute must hold its default value (None/False/0 style), else refuse the named option."""
    for attribute, (default, option) in defaults.items():
        value = getattr(module, attribute, default)
        same = value is default if default is None or isinstance(default, bool) else value == default
        _require(same, prefix + option, f"{attribute}={value!r}")


def _norm_kind(norm) -> str:
    """Map a torch norm module to our option name; refuse exotic norms."""
    from x_transformers import x_transformers as xt

    kinds = {xt.LayerNorm: "layernorm", xt.RMSNorm: "use_rmsnorm", xt.ScaleNorm: "use_scalenorm",
             xt.SimpleRMSNorm: "use_simple_rmsnorm"}
    kind = kinds.get(type(norm))
    if kind is None:
        names = {"DynamicTanh": "use_dynamic_tanh", "Derf": "use_derf", "AdaptiveLayerNorm": "use_adaptive_layernorm",
                 "AdaptiveRMSNorm": "use_adaptive_rmsnorm"}
        _refuse(names.get(type(norm).__name__, type(norm).__name__))
    if kind != "use_simple_rmsnorm":
        _require(getattr(norm, "unit_offset", True), "norm_add_unit_offset", "norms without unit offset")
    return kind


WRAPPER_OPTION_NAMES = {"ShiftTokens": "shift_tokens", "LayerScale": "use_layerscale",
                        "AdaptiveLayerScale": "use_adaptive_layerscale", "Scale": "scale_residual (constant)"}


def _require_type(module, expected) -> None:
    """Branch modules wrapped by an option (ShiftTokens, LayerScale, Scale) are refused by option name."""
    name = type(module).__name__
    _require(type(module) is expected, WRAPPER_OPTION_NAMES.get(name, name))


def _check_attend(attend, qk_norm: bool) -> None:
    import torch.nn.functional as F

    _check_defaults(attend, {
        "pre_softmax_talking_heads": (None, "attn_pre_talking_heads"),
        "post_softmax_talking_heads": (None, "attn_post_talking_heads"),
        "pre_scale_post_talking_heads": (None, "attn_pre_scale_post_talking_heads"),
        "add_zero_kv": (False, "attn_add_zero_kv"),
        "head_learned_sink": (False, "attn_head_learned_sink"),
        "softclamp_logits": (False, "attn_softclamp_logits"),
        "cope": (None, "attn_use_cope"),
        "selective": (False, "attn_selective"),
        "cog_signed": (False, "attn_cog_signed"),
        "l2_distance": (False, "attn_l2_distance"),
        "inverted_attention": (False, "inverted_attention"),
        "causal": (True, "causal (encoder / non-causal attention)"),
    })
    _require(attend.attn_dropout.p == 0, "attn_dropout", f"p={attend.attn_dropout.p}")
    fn = attend.attn_fn
    is_softmax = isinstance(fn, partial) and fn.func is F.softmax and fn.keywords.get("dim") == -1
    _require(is_softmax, "attn_sigmoid / attn_hard / attn_sparse_topk / attn_gumbel_softmax / attn_custom_attn_fn",
             f"attention function {fn!r}")
    if not qk_norm:
        _require(fn.keywords.get("dtype") is not None, "attn_qk_norm", "softmax without float32 cast")


def _read_attention(attn, heads: int, dim: int, dim_head: int) -> dict:
    from torch import nn

    from x_transformers import x_transformers as xt

    _require_type(attn, xt.Attention)
    _check_defaults(attn, {
        "causal": (True, "causal (encoder / non-causal attention)"),
        "max_attend_past": (None, "attn_max_attend_past"),
        "to_latent_q": (None, "attn_use_latent_q"), "to_latent_kv": (None, "attn_use_latent_kv"),
        "to_rotateable_k": (None, "attn_latent_rope_subheads"),
        "qkv_receive_diff_residuals": (False, "qkv_receive_diff_residuals"),
        "laser": (False, "attn_laser"),
        "to_v_gate": (None, "attn_gate_values"), "to_output_gate": (None, "attn_output_gate"),
        "to_v_head_gate": (None, "attn_gate_value_heads"),
        "qk_norm_groups": (1, "attn_qk_norm_groups"),
        "q_rmsnorm": (None, "attn_qk_rmsnorm"), "k_rmsnorm": (None, "attn_k_rmsnorm"),
        "value_rmsnorm": (None, "attn_value_rmsnorm"),
        "data_dependent_alibi": (None, "attn_data_dependent_alibi"),
        "rel_proj_pos_bias": (None, "attn_use_rel_proj_pos_bias"),
        "head_scale": (False, "attn_head_scale"), "sparse_topk": (None, "attn_sparse_topk"),
        "hybrid_module": (None, "attn_hybrid_module"),
        "orthog_projected_values": (False, "attn_orthog_projected_values"),
        "orthog_projected_values_per_head": (False, "attn_orthog_projected_values_per_head"),
        "attn_on_attn": (False, "attn_on_attn"),
        "sublayer_dropout": (None, "attn_sublayer_dropout"),
        "rotate_num_heads": (heads, "rotate_num_heads"),
    })
    _require(isinstance(attn.to_value_residual_mix, xt.always), "add_value_residual")
    _require(attn.heads == heads, "heads", "per-layer heads differ")
    kv_heads = attn.kv_heads
    _require(attn.to_q.weight.shape == (heads * dim_head, dim), "attn_dim_head", "to_q shape")
    _require(attn.to_k.weight.shape == (kv_heads * dim_head, dim), "attn_kv_heads", "to_k shape")
    _require(attn.to_v.weight.shape == (kv_heads * dim_head, dim), "attn_value_dim_head", "to_v shape")
    if heads > 1:
        _require(isinstance(attn.to_out, nn.Linear) and attn.to_out.bias is None, "attn_project_out / attn_on_attn")
        _require(attn.to_out.weight.shape == (dim, heads * dim_head), "attn_dim_out")
    else:
        _require(isinstance(attn.to_out, nn.Identity), "attn_project_out", "heads=1 with an output projection")
    qk_norm = bool(attn.qk_norm)
    dim_scale = bool(attn.qk_norm_dim_scale) and qk_norm
    if qk_norm and not dim_scale:
        _require(attn.qk_norm_scale == 10, "attn_qk_norm_scale", f"{attn.qk_norm_scale}")
    expected_scale = 10 if (qk_norm and not dim_scale) else dim_head ** -0.5
    _require(math.isclose(attn.attend.scale, expected_scale), "attn scale", f"{attn.attend.scale}")
    _check_attend(attn.attend, qk_norm)
    return dict(kv_heads=kv_heads, attn_qk_norm=qk_norm, attn_qk_norm_dim_scale=dim_scale,
                attn_num_mem_kv=int(attn.num_mem_kv), attn_flash=bool(attn.attend.flash))


def _read_feedforward(ff_module, dim: int) -> dict:
    from torch import nn

    from x_transformers import x_transformers as xt

    _require_type(ff_module, xt.FeedForward)
    ff = ff_module.ff
    _require(len(ff) == 3, "ff_post_act_ln / ff_sublayer_dropout", f"{len(ff)} modules in ff")
    proj_in, dropout, proj_out = ff[0], ff[1], ff[2]
    _require(isinstance(dropout, nn.Dropout) and dropout.p == 0, "ff_dropout")
    _require(type(proj_out) is nn.Linear and proj_out.out_features == dim, "ff_dim_out")

    def activation_kind(act) -> bool:
        if type(act) is nn.GELU and act.approximate == "none":
            return False
        if type(act) is nn.SiLU:
            return True
        _refuse("ff_relu_squared / ff_solu / ff_custom_activation / ff_softclamp", type(act).__name__)

    glu = isinstance(proj_in, xt.GLU)
    if glu:
        _require(not isinstance(proj_in.mult_bias, nn.Parameter) and proj_in.mult_bias == 1.0, "ff_glu_mult_bias")
        _require(proj_in.up_softclamp_value is None, "ff_glu_softclamp")
        swish = activation_kind(proj_in.act)
        inner = proj_in.proj.out_features // 2
        no_bias = proj_out.bias is None
    else:
        _require(len(proj_in) == 2 and type(proj_in[0]) is nn.Linear, "ff_softclamp_value", "proj_in structure")
        swish = activation_kind(proj_in[1])
        inner = proj_in[0].out_features
        no_bias = proj_out.bias is None
        _require((proj_in[0].bias is None) == no_bias, "ff_no_bias", "mixed biases")
    _require(inner % dim == 0 and proj_out.in_features == inner, "ff_mult", f"inner {inner} for dim {dim}")
    return dict(ff_glu=glu, ff_swish=swish, ff_no_bias=no_bias, ff_mult=inner // dim)


def _check_wrapper(wrapper) -> None:
    from x_transformers import x_transformers as xt

    _require(isinstance(wrapper, xt.TransformerWrapper), type(wrapper).__name__, "expected TransformerWrapper")
    _check_defaults(wrapper, {
        "embeds": (None, "embed_num_tokens"), "ff_deep_embed": (None, "ff_deep_embed"),
        "emb_frac_gradient": (1.0, "emb_frac_gradient"),
        "recycling": (False, "recycling"), "looped": (False, "looped"),
        "cls_token": (None, "use_cls_token"), "attn_pool": (None, "attn_pool"),
        "average_pool_embed": (False, "average_pool_embed"),
        "to_mixture": (None, "mixture_of_softmax"), "sigsoftmax_logits": (False, "sigsoftmax_logits"),
        "has_multiple_heads": (False, "num_output_heads"),
        "add_continuous_pred_head": (False, "add_continuous_pred_head"),
        "memory_tokens_interspersed_every": (None, "memory_tokens_interspersed_every"),
        "squeeze_out_last_dim": (False, "squeeze_out_last_dim"),
    })
    _require(wrapper.emb_dropout.p == 0, "emb_dropout", f"p={wrapper.emb_dropout.p}")
    _require(type(wrapper.token_emb) is xt.TokenEmbedding, "token_emb", type(wrapper.token_emb).__name__)
    _require(not isinstance(wrapper.pos_emb, xt.ScaledSinusoidalEmbedding), "scaled_sinu_pos_emb")
    _require(wrapper.to_logits is not None, "return_only_embed")


def _check_attention_layers(layers) -> None:
    from x_transformers import x_transformers as xt

    _require(type(layers) in (xt.Decoder, xt.AttentionLayers), type(layers).__name__,
             "only Decoder: encoder / prefix (non-causal) attention is not ported")
    _check_defaults(layers, {
        "causal": (True, "causal (Encoder / PrefixDecoder)"), "cross_attend": (False, "cross_attend"),
        "num_residual_streams": (1, "num_residual_streams"), "reinject_input": (False, "reinject_input"),
        "learned_reinject_input_gate": (None, "learned_reinject_input_gate"),
        "add_value_residual": (False, "add_value_residual"), "softclamp_output": (False, "softclamp_output"),
        "need_condition": (False, "use_adaptive_layernorm / use_adaptive_rmsnorm / use_adaptive_layerscale"),
        "pre_and_post_norm": (False, "pre_and_post_norm"), "polar_pos_emb": (None, "polar_pos_emb"),
        "residual_scale": (None, "scale_residual (constant) / depth_scale_residual"),
        "unet_skips": (False, "unet_skips"),
    })
    _require(all(m is None for m in layers.layer_integrators), "integrate_layers / attn_aggregated_residuals")
    _require(all(m is None for m in layers.skip_combines), "unet_skips")
    _require(all(p == 0 for p in layers.layer_dropouts), "layer_dropout", f"{layers.layer_dropouts}")
    _require(tuple(layers.layers_execute_order) == tuple(range(len(layers.layers))),
             "layers_execute_order / weight_tie_layers")


def config_from_torch(wrapper) -> TransformerConfig:
    """Read the configuration of a live `TransformerWrapper(attn_layers=Decoder(...))`."""
    from torch import nn

    from x_transformers import x_transformers as xt

    _check_wrapper(wrapper)
    layers = wrapper.attn_layers
    _check_attention_layers(layers)
    dim, heads, dim_head = layers.dim, layers.attn_heads, layers.attn_dim_head
    macaron = tuple(layers.layer_types[:3]) == ("f", "a", "f")
    block = ("f", "a", "f") if macaron else ("a", "f")
    depth = len(layers.layer_types) // len(block)
    _require(tuple(layers.layer_types) == block * depth and depth > 0,
             "custom_layers / par_ratio / sandwich_coef / only_attn", f"{layers.layer_types}")

    options: dict = dict(macaron=macaron, pre_norm=bool(layers.pre_norm), sandwich_norm=bool(layers.sandwich_norm),
                         residual_attn=bool(layers.residual_attn))
    norm_kinds, per_layer, scale_flags = set(), [], set()
    for layer_type, (norms, fn, residual) in zip(layers.layer_types, layers.layers):
        pre, post_branch, post_main = norms
        _require((pre is not None) == options["pre_norm"], "pre_norm", "inconsistent norms")
        _require((post_branch is not None) == options["sandwich_norm"], "sandwich_norm", "inconsistent norms")
        _require((post_main is not None) == (not options["pre_norm"]), "pre_norm", "inconsistent norms")
        norm_kinds.update(_norm_kind(n) for n in norms if n is not None)
        _require(type(residual) is xt.Residual, "gate_residual / orthog_residual / mv_split_residual / "
                 "hyper connections", type(residual).__name__)
        _require(residual.scale_residual_constant == 1, "scale_residual_constant")
        scale_flags.add(residual.residual_scale is not None)
        if layer_type == "a":
            per_layer.append(_read_attention(fn, heads, dim, dim_head))
        else:
            if macaron:
                _require_type(fn, xt.Scale)
                _require(fn.scale == 0.5, "macaron", f"scale {fn.scale}")
                fn = fn.fn
            per_layer.append(_read_feedforward(fn, dim))
    attn_opts = [p for p in per_layer if "kv_heads" in p]
    ff_opts = [p for p in per_layer if "ff_glu" in p]
    for group in (attn_opts, ff_opts):
        _require(all(p == group[0] for p in group), "per-layer option tuples", "layers differ")
    attn, ff = attn_opts[0], ff_opts[0]
    _require(len(scale_flags) == 1, "scale_residual", "only on some layers")
    options["scale_residual"] = scale_flags.pop()
    final = layers.final_norm
    if options["pre_norm"]:
        _require(not isinstance(final, (nn.Identity, xt.Identity)), "pre_norm_has_final_norm")
        norm_kinds.add(_norm_kind(final))
    _require(len(norm_kinds) <= 1, "mixed norms", f"{norm_kinds}")
    kind = norm_kinds.pop() if norm_kinds else "layernorm"
    if kind != "layernorm":
        options[kind] = True

    kv_heads = attn.pop("kv_heads")
    if kv_heads != heads:
        options["attn_kv_heads"] = kv_heads
    options.update(attn)
    options.update(ff)

    # positions
    rotary = layers.rotary_pos_emb
    if rotary is not None:
        _require(rotary.scale is None, "rotary_xpos")
        _require(rotary.interpolation_factor == 1.0, "rotary_interpolation_factor")
        inv_freq = rotary.inv_freq.detach().cpu().numpy()
        expected = rotary_inv_freq(dim_head // 2)
        _require(inv_freq.shape == expected.shape and np.allclose(inv_freq, expected, rtol=1e-6, atol=0),
                 "rotary_emb_dim / rotary_base_rescale_factor", "inv_freq differs from dim_head//2, base 10000")
        options["rotary_pos_emb"] = True
    rel_pos = layers.rel_pos
    if isinstance(rel_pos, xt.AlibiPositionalBias):
        _require(rel_pos.heads == rel_pos.total_heads == heads, "alibi_num_heads")
        _require(np.allclose(rel_pos.slopes.flatten().cpu().numpy(), alibi_slopes(heads), rtol=0, atol=0),
                 "alibi slopes")
        options["alibi_pos_bias"] = True
    elif isinstance(rel_pos, xt.RelativePositionBias):
        _require(rel_pos.num_buckets == 32 and rel_pos.max_distance == 128, "rel_pos_num_buckets / max_distance")
        _require(rel_pos.causal and math.isclose(rel_pos.scale, dim_head ** 0.5), "rel_pos_kwargs")
        options["rel_pos_bias"] = True
    elif rel_pos is not None:
        _refuse("dynamic_pos_bias", type(rel_pos).__name__)

    # wrapper
    has_abs = isinstance(wrapper.pos_emb, xt.AbsolutePositionalEmbedding)
    options["l2norm_embed"] = bool(wrapper.l2norm_embed)
    if isinstance(wrapper.post_emb_norm, xt.LayerNorm):
        _require(not wrapper.post_emb_norm.unit_offset, "post_emb_norm", "unit offset")
        options["post_emb_norm"] = True
    if wrapper.emb_dim != dim:
        options["emb_dim"] = wrapper.emb_dim
    if wrapper.num_memory_tokens:
        options["num_memory_tokens"] = int(wrapper.num_memory_tokens)
    tied = not isinstance(wrapper.to_logits, nn.Module)
    if tied:
        _require(math.isclose(wrapper.tie_embedding_scale, dim ** -0.5, rel_tol=0, abs_tol=0),
                 "tie_embedding_scale", f"{wrapper.tie_embedding_scale}")
        options["tie_embedding"] = True
    else:
        _require(type(wrapper.to_logits) is nn.Linear and wrapper.to_logits.bias is None
                 and wrapper.to_logits.out_features == wrapper.num_tokens, "logits_dim / to_logits")
    if not has_abs and not (options.get("rotary_pos_emb") or options.get("rel_pos_bias")):
        options["use_abs_pos_emb"] = False
    config = TransformerConfig(num_tokens=wrapper.num_tokens, max_seq_len=wrapper.max_seq_len, dim=dim,
                               depth=depth, heads=heads, attn_dim_head=dim_head, **options)
    _require(config.has_abs_pos_emb == has_abs, "disable_abs_pos_emb", "explicit override of the default")
    return config
