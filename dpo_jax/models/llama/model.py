"""LlamaForCausalLM: the Flax NNX decoder shared by Llama 2 / 3.x, Mistral, Qwen2 and Qwen3 (dense).

Pre-norm blocks `x + attn(rms(x))`, `x + mlp(rms(x))`, a final RMSNorm and the output head (the embedding
transposed when `tie_word_embeddings`). The per-model-type differences are switches on the config
(`LlamaConfig.qkv_bias`, `out_bias`, `qk_norm`, `layer_windows`, `rope`). Attribute names are transformers'
(`embed_tokens`, `layers[i].self_attn.q_proj`, ...), so `weights.parameter_table` is a mechanical mapping.
It fulfils the model contract `dpo_jax.models.base.HiddenStatesLM`.
"""

from __future__ import annotations

from flax import nnx

from dpo_jax.models.hf.inputs import decoder_inputs, layer_mask
from dpo_jax.models.hf.layers import Attention, Embedding, GatedMLP, Linear, RMSNorm
from dpo_jax.models.hf.rope import inv_freq, rotary_cos_sin
from dpo_jax.models.llama.config import LlamaConfig
from dpo_jax.ops.logprob_head import OutputHead, head_logits
from dpo_jax.ops.remat import rematerialized

__all__ = ["LlamaForCausalLM", "DecoderLayer"]


class DecoderLayer(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=config.dtype, param_dtype=config.param_dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, **kw)
        self.self_attn = Attention(hidden_size=config.hidden_size, num_heads=config.num_attention_heads,
                                   num_kv_heads=config.num_key_value_heads, head_dim=config.head_dim,
                                   qkv_bias=config.qkv_bias, out_bias=config.out_bias, scale=config.head_dim ** -0.5,
                                   qk_norm=config.qk_norm, norm_eps=config.rms_norm_eps, rngs=rngs, **kw)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, **kw)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, activation=config.hidden_act,
                            use_bias=config.mlp_bias, rngs=rngs, **kw)

    def __call__(self, x, cos, sin, mask, *, backend: str = "xla"):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, backend=backend)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nnx.Module):
    """tokens [B, N] -> logits [B, N, V]; see the module docstring."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, rngs=rngs, param_dtype=config.param_dtype)
        self.layers = nnx.List([DecoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=config.dtype,
                            param_dtype=config.param_dtype)
        self.lm_head = (None if config.tie_word_embeddings else
                        Linear(config.hidden_size, config.vocab_size, use_bias=False, rngs=rngs, dtype=config.dtype,
                               param_dtype=config.param_dtype))

    # ---- the model contract --------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.config.max_position_embeddings

    def __call__(self, tokens, *, attention_mask=None, positions=None, attention=None, attention_backend="auto"):
        """Logits [B, N, V] (in the compute dtype). Arguments as in `hidden_states`."""
        return head_logits(self.hidden_states(tokens, attention_mask=attention_mask, positions=positions,
                                              attention=attention, attention_backend=attention_backend),
                           self.output_head())

    def hidden_states(self, tokens, *, attention_mask=None, positions=None, attention=None, remat=None,
                      attention_backend="auto"):
        """Final-norm hidden states [B, N, hidden_size].

        attention_mask [B, N] bool: transformers' padding mask (True on real tokens). positions [B, N]: the
        rotary positions (default 0..N-1). attention: an `ops.attention.AttentionMask` from a batch layout.
        remat: per-layer rematerialisation (`ops.remat`). attention_backend: the `ops.attention.attend` backend.
        """
        config = self.config
        tokens, positions, attention = decoder_inputs(tokens, vocab_size=config.vocab_size,
                                                      max_seq_len=config.max_position_embeddings,
                                                      attention_mask=attention_mask, positions=positions,
                                                      attention=attention)
        x = self.embed_tokens(tokens, config.dtype)
        cos, sin = rotary_cos_sin(positions, inv_freq(config.rope, config.head_dim), config.dtype)
        for layer, window in zip(self.layers, config.layer_windows):
            x = rematerialized(layer, remat, backend=attention_backend)(x, cos, sin, layer_mask(attention, window))
        return self.norm(x)

    def output_head(self) -> OutputHead:
        """logits = hidden @ W; W is the embedding transposed when the checkpoint ties them."""
        if self.lm_head is None:
            return OutputHead(self.embed_tokens.weight[...].T)
        return OutputHead(self.lm_head.kernel[...])
