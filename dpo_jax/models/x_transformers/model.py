"""Transformer: a Flax NNX port of x-transformers' `TransformerWrapper(attn_layers=Decoder(...))`.

Layer `i` here is `attn_layers.layers[i]` in torch; each Block keeps x-transformers' three norm slots
(pre-branch, post-branch for sandwich_norm, post-main for post-norm) and optional residual scale.
It fulfils the model contract `dpo_jax.models.base.HiddenStatesLM` (hidden states, output head, limits).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import repeat
from flax import nnx

from dpo_jax.models.validation import is_concrete, validate_mask, validate_positions, validate_tokens
from dpo_jax.models.x_transformers.attention import Attention
from dpo_jax.models.x_transformers.config import TransformerConfig
from dpo_jax.models.x_transformers.layers import (AbsolutePositionalEmbedding, Embedding, FeedForward, LayerNorm,
                                                  Linear, l2norm, make_norm)
from dpo_jax.models.x_transformers.positional import RelativePositionBias, alibi_bias, rotary_angles
from dpo_jax.ops.attention import AttentionMask
from dpo_jax.ops.logprob_head import OutputHead, head_logits
from dpo_jax.ops.remat import rematerialized

MACARON_FF_SCALE = 0.5


class Block(nnx.Module):
    """One residual branch: x + f(norm(x)) (pre-norm) or norm(x + f(x)) (post-norm)."""

    def __init__(self, kind: str, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.kind = kind
        self.pre_branch_norm = make_norm(config, config.dim) if config.pre_norm else None
        self.post_branch_norm = make_norm(config, config.dim) if config.sandwich_norm else None
        self.post_main_norm = make_norm(config, config.dim) if not config.pre_norm else None
        self.fn = Attention(config, rngs=rngs) if kind == "a" else FeedForward(config, rngs=rngs)
        self.output_scale = MACARON_FF_SCALE if (kind == "f" and config.macaron) else 1.0
        self.residual_scale = (nnx.Param(jnp.ones((config.dim,), config.param_dtype))
                               if config.scale_residual else None)

    def __call__(self, x, prev_attn=None, **attn_kwargs):
        residual = x
        if self.pre_branch_norm is not None:
            x = self.pre_branch_norm(x)
        scores = None
        if self.kind == "a":
            out, scores = self.fn(x, prev_attn=prev_attn, **attn_kwargs)
        else:
            out = self.fn(x)
        if self.output_scale != 1.0:
            out = out * self.output_scale
        if self.post_branch_norm is not None:
            out = self.post_branch_norm(out)
        if self.residual_scale is not None:
            residual = residual * self.residual_scale[...].astype(residual.dtype)
        x = out + residual
        if self.post_main_norm is not None:
            x = self.post_main_norm(x)
        return x, scores


class Transformer(nnx.Module):
    """Decoder-only language model: tokens [B, N] -> logits [B, N, V]."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = config
        emb_dim, dim, pdt = config.embedding_dim, config.dim, config.param_dtype
        self.token_emb = Embedding(config.num_tokens, emb_dim, rngs=rngs, param_dtype=pdt,
                                   std=1e-5 if config.l2norm_embed else 1.0)
        self.pos_emb = (AbsolutePositionalEmbedding(emb_dim, config.max_seq_len, l2norm_embed=config.l2norm_embed,
                                                    rngs=rngs, param_dtype=pdt)
                        if config.has_abs_pos_emb else None)
        self.post_emb_norm = (LayerNorm(emb_dim, unit_offset=False, dtype=config.dtype, param_dtype=pdt)
                              if config.post_emb_norm else None)
        self.project_emb = (Linear(emb_dim, dim, use_bias=True, rngs=rngs, dtype=config.dtype, param_dtype=pdt)
                            if emb_dim != dim else None)
        self.memory_tokens = (nnx.Param(jax.random.normal(rngs.params(), (config.num_memory_tokens, dim), pdt))
                              if config.num_memory_tokens > 0 else None)
        self.rel_pos = (RelativePositionBias(config.heads, config.dim_head, rngs=rngs, param_dtype=pdt)
                        if config.rel_pos_bias else None)
        self.layers = nnx.List([Block(kind, config, rngs=rngs) for kind in config.layer_types])
        self.final_norm = make_norm(config, dim) if config.pre_norm else None
        self.to_logits = (None if config.tie_embedding
                          else Linear(dim, config.num_tokens, use_bias=False, rngs=rngs, dtype=config.dtype,
                                      param_dtype=pdt))

    # ---- the model contract ----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.config.num_tokens

    @property
    def max_seq_len(self) -> int | None:
        """x-transformers' max_seq_len; 0 means no limit (no learned positions)."""
        return self.config.max_seq_len or None

    def __call__(self, tokens, mask=None, positions=None, attn_mask=None, *, attention=None,
                 attention_backend="auto"):
        """Logits [B, N, V] (float32 when dtype is float32). Arguments as in `hidden_states`."""
        return self.unembed(self.hidden_states(tokens, mask=mask, positions=positions, attn_mask=attn_mask,
                                               attention=attention, attention_backend=attention_backend))

    def hidden_states(self, tokens, mask=None, positions=None, attn_mask=None, remat=None, *, attention=None,
                      attention_backend="auto"):
        """Final-norm hidden states [B, N, dim] (memory tokens stripped).

        mask [B, N] bool: x-transformers' `mask` (key padding, zeroed attention output at pad queries).
        positions [B, N] int: x-transformers' `pos=`; drives the learned table, rotary, alibi and the
        T5 bias (x-transformers itself refuses custom pos with the T5 bias; see RelativePositionBias).
        attn_mask [B, N, N] bool: True where query i may attend key j, AND-ed with the causal mask.
        attention: an `ops.attention.AttentionMask` (segment / branch ids of shared and packed rows),
        AND-ed with `mask` and `attn_mask`.
        remat: None/"none", "full" or "dots_saveable": per-block rematerialisation (`ops.remat`).
        attention_backend: the `ops.attention.attend` backend.
        """
        config = self.config
        self._validate(tokens, mask, positions, attn_mask)
        tokens = jnp.asarray(tokens)
        batch, n = tokens.shape
        mask = None if mask is None else jnp.asarray(mask)
        attn_mask = None if attn_mask is None else jnp.asarray(attn_mask)

        x = self.token_emb(tokens).astype(config.dtype)
        if config.l2norm_embed:
            x = l2norm(x)
        if self.pos_emb is not None:
            table_positions = jnp.arange(n)[None] if positions is None else jnp.asarray(positions)
            x = x + self.pos_emb(table_positions, config.dtype)
        if self.post_emb_norm is not None:
            x = self.post_emb_norm(x)
        if self.project_emb is not None:
            x = self.project_emb(x)

        num_mem = config.num_memory_tokens
        attention = _with_x_transformers_masks(attention, mask, attn_mask)
        if num_mem > 0:
            memory = repeat(self.memory_tokens[...].astype(x.dtype), "m d -> b m d", b=batch)
            x = jnp.concatenate((memory, x), axis=1)
            if mask is not None:
                mask = jnp.pad(mask, ((0, 0), (num_mem, 0)), constant_values=True)
            attention = _with_memory_tokens(attention, batch, n, num_mem)

        total = x.shape[1]
        # x-transformers turns the causal mask off for a single query (kv-cache decoding)
        attention = attention.replace(causal=total > 1)
        layer_positions = (jnp.broadcast_to(jnp.arange(total)[None], (batch, total)) if positions is None
                           else jnp.asarray(positions))
        attn_kwargs = dict(attention=attention, zero_queries=mask, attn_bias=self._attn_bias(layer_positions),
                           rotary_angles=(rotary_angles(layer_positions, config.rotary_dim)
                                          if config.rotary_pos_emb else None))

        prev_attn = None
        for block in self.layers:
            x, scores = rematerialized(block, remat, backend=attention_backend)(x, prev_attn, **attn_kwargs)
            if scores is not None and config.residual_attn:
                prev_attn = scores

        if self.final_norm is not None:
            x = self.final_norm(x)
        return x[:, num_mem:]

    def output_head(self) -> OutputHead:
        """logits = (hidden @ W) * scale; tied embeddings are scaled by dim**-0.5 as in x-transformers 2.31."""
        if self.to_logits is None:
            return OutputHead(self.token_emb.weight[...].T, self.config.dim ** -0.5)
        return OutputHead(self.to_logits.kernel[...], 1.0)

    def check_layout(self, layout_name: str) -> None:
        """Prefix sharing and packing restart positions per branch: refused where positions are undefined."""
        config = self.config
        if layout_name != "padded" and config.num_memory_tokens > 0 and (
                config.rotary_pos_emb or config.alibi_pos_bias or config.rel_pos_bias):
            raise NotImplementedError("prefix sharing/packing with num_memory_tokens needs the learned absolute "
                                      "positions: custom positions are undefined with rotary/alibi/rel_pos_bias")

    def head_weight(self):
        """(W [dim, V], scale): the output head without its (absent) softcap."""
        head = self.output_head()
        return head.weight, head.scale

    def unembed(self, hidden):
        """Output projection of hidden states [..., dim] -> logits [..., V]."""
        return head_logits(hidden, self.output_head())

    # ---- helpers ------------------------------------------------------------------------------------

    def _attn_bias(self, positions):
        if self.config.alibi_pos_bias:
            return alibi_bias(positions, self.config.heads)
        if self.rel_pos is not None:
            return self.rel_pos(positions)
        return None

    def _validate(self, tokens, mask, positions, attn_mask):
        config = self.config
        if is_concrete(tokens):
            validate_tokens(tokens, vocab_size=config.num_tokens, max_seq_len=config.max_seq_len)
        shape = tuple(jnp.shape(tokens))
        if mask is not None and is_concrete(mask):
            validate_mask(mask, shape, "mask")
        if attn_mask is not None and is_concrete(attn_mask):
            validate_mask(attn_mask, (shape[0], shape[1], shape[1]), "attn_mask")
        if positions is not None:
            if config.num_memory_tokens > 0 and (config.rotary_pos_emb or config.alibi_pos_bias
                                                 or config.rel_pos_bias):
                raise NotImplementedError(
                    "custom positions with num_memory_tokens and rotary/alibi/rel_pos_bias: "
                    "x-transformers has no defined behaviour for it")
            if is_concrete(positions):
                limit = config.max_seq_len if config.has_abs_pos_emb else None
                validate_positions(positions, shape, limit)


def _with_x_transformers_masks(attention, mask, attn_mask):
    """x-transformers' `mask` (key padding) and `attn_mask` (dense) folded into one AttentionMask."""
    attention = AttentionMask() if attention is None else attention
    if mask is not None:
        key_padding = mask if attention.key_padding is None else attention.key_padding & mask
        attention = attention.replace(key_padding=key_padding)
    if attn_mask is not None:
        dense = attn_mask if attention.dense is None else attention.dense & attn_mask
        attention = attention.replace(dense=dense)
    return attention


def _with_memory_tokens(attention, batch, n, num_mem):
    """The AttentionMask over [memory tokens, tokens]: memory tokens see each other and are seen by everyone."""
    allowed = attention.allowed(n)
    if allowed is None:
        return attention
    allowed = jnp.broadcast_to(allowed, (batch, n, n))
    dense = jnp.pad(allowed, ((0, 0), (num_mem, 0), (num_mem, 0)), constant_values=True)
    return AttentionMask(dense=dense)
