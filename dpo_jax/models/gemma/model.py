"""GemmaForCausalLM: the Flax NNX decoder of Gemma 2 and Gemma 3 (text).

Blocks are sandwich-normed, `x + post_norm(attn(pre_norm(x)))` then the same around the MLP, with Gemma's
RMSNorm (`x * (1 + w)`, the RMS in float32 and the cast last); token embeddings are multiplied by
sqrt(hidden_size) in the compute dtype (a bfloat16 model multiplies by 55.5 for hidden 3072, as transformers
does); the final-logit softcap is part of the output head, so the chunked log-prob head applies it too.
Per-type switches (`GemmaConfig.attention_softcap`, `qk_norm`, `layer_windows`, `layer_ropes`) are read off
the config. Attribute names are transformers'. It fulfils `dpo_jax.models.base.HiddenStatesLM`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from dpo_jax.models.gemma.config import GemmaConfig
from dpo_jax.models.hf.inputs import decoder_inputs, layer_mask
from dpo_jax.models.hf.layers import Attention, Embedding, GatedMLP, Linear, OffsetRMSNorm
from dpo_jax.models.hf.rope import inv_freq, rotary_cos_sin
from dpo_jax.ops.logprob_head import OutputHead, head_logits
from dpo_jax.ops.remat import rematerialized

__all__ = ["GemmaForCausalLM", "GemmaDecoderLayer"]


class GemmaDecoderLayer(nnx.Module):
    def __init__(self, config: GemmaConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=config.dtype, param_dtype=config.param_dtype)
        d, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = OffsetRMSNorm(d, eps=eps, **kw)
        self.self_attn = Attention(hidden_size=d, num_heads=config.num_attention_heads,
                                   num_kv_heads=config.num_key_value_heads, head_dim=config.head_dim,
                                   qkv_bias=config.attention_bias, out_bias=config.attention_bias,
                                   scale=float(config.query_pre_attn_scalar) ** -0.5, softcap=config.attention_softcap,
                                   qk_norm=config.qk_norm, norm_eps=eps, rngs=rngs, **kw)
        self.post_attention_layernorm = OffsetRMSNorm(d, eps=eps, **kw)
        self.pre_feedforward_layernorm = OffsetRMSNorm(d, eps=eps, **kw)
        self.mlp = GatedMLP(d, config.intermediate_size, activation=config.hidden_activation, use_bias=False,
                            rngs=rngs, **kw)
        self.post_feedforward_layernorm = OffsetRMSNorm(d, eps=eps, **kw)

    def __call__(self, x, cos, sin, mask, *, backend: str = "xla"):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask,
                                                             backend=backend))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class GemmaForCausalLM(nnx.Module):
    """tokens [B, N] -> logits [B, N, V]; see the module docstring."""

    def __init__(self, config: GemmaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, rngs=rngs, param_dtype=config.param_dtype)
        self.layers = nnx.List([GemmaDecoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.norm = OffsetRMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=config.dtype,
                                  param_dtype=config.param_dtype)
        self.lm_head = (None if config.tie_word_embeddings else
                        Linear(config.hidden_size, config.vocab_size, use_bias=False, rngs=rngs, dtype=config.dtype,
                               param_dtype=config.param_dtype))

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.config.max_position_embeddings

    def __call__(self, tokens, *, attention_mask=None, positions=None, attention=None, attention_backend="auto"):
        """Logits [B, N, V], softcapped when the config says so. Arguments as in `hidden_states`."""
        return head_logits(self.hidden_states(tokens, attention_mask=attention_mask, positions=positions,
                                              attention=attention, attention_backend=attention_backend),
                           self.output_head())

    def hidden_states(self, tokens, *, attention_mask=None, positions=None, attention=None, remat=None,
                      attention_backend="auto"):
        """Final-norm hidden states [B, N, hidden_size]; arguments as `LlamaForCausalLM.hidden_states`."""
        config = self.config
        tokens, positions, attention = decoder_inputs(tokens, vocab_size=config.vocab_size,
                                                      max_seq_len=config.max_position_embeddings,
                                                      attention_mask=attention_mask, positions=positions,
                                                      attention=attention)
        # transformers: embed_scale = torch.tensor(hidden ** 0.5) (float32), cast to the weights' dtype
        scale = jnp.asarray(np.float32(config.hidden_size ** 0.5)).astype(config.dtype)
        x = self.embed_tokens(tokens, config.dtype) * scale
        rotaries = {rope: rotary_cos_sin(positions, inv_freq(rope, config.head_dim), config.dtype)
                    for rope in set(config.layer_ropes)}
        for layer, window, rope in zip(self.layers, config.layer_windows, config.layer_ropes):
            cos, sin = rotaries[rope]
            x = rematerialized(layer, remat, backend=attention_backend)(x, cos, sin, layer_mask(attention, window))
        return self.norm(x)

    def output_head(self) -> OutputHead:
        """logits = softcap(hidden @ W) with the final-logit softcap; W is the embedding transposed when tied."""
        weight = self.embed_tokens.weight[...].T if self.lm_head is None else self.lm_head.kernel[...]
        return OutputHead(weight, 1.0, self.config.final_logit_softcapping)
