"""Tiny transformers models of every ported Hugging Face family variant, built locally with random weights.

Each variant switches on what distinguishes it (Llama 3 rope scaling, Mistral's window shorter than the test
sequences, Qwen2's biases, Qwen3's q/k norms, Gemma 2's softcaps and windows, Gemma 3's q/k norms and local /
global rope) and `perturbed_hf_model` moves every parameter away from its initialisation (norm gains start at
1 or 0 and biases at 0, which would hide a missing gain or bias).
"""

from __future__ import annotations

import torch
import transformers

from parity_tests.model_helpers import perturb_

VOCAB, SEQ_LEN = 96, 16
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2)

VARIANTS = {
    # GQA, untied, default rope
    "llama": lambda: transformers.LlamaConfig(**COMMON, max_position_embeddings=64),
    # Llama 3.x rope scaling (all three frequency bands hit: wavelengths 6.3 < 16, 20 and 63 in [16, 64], 199 > 64),
    # multi-query attention, tied embeddings, attention and MLP biases
    "llama3": lambda: transformers.LlamaConfig(
        **{**COMMON, "num_attention_heads": 2, "num_key_value_heads": 1}, max_position_embeddings=128,
        tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64)),
    # a sliding window shorter than the sequences
    "mistral": lambda: transformers.MistralConfig(**COMMON, sliding_window=4, max_position_embeddings=64),
    # q/k/v biases, tied, the second layer sliding (use_sliding_window, max_window_layers=1)
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, max_position_embeddings=64, tie_word_embeddings=True,
                                              use_sliding_window=True, sliding_window=5, max_window_layers=1),
    # per-head q/k RMSNorm, head_dim 16 with 4 heads != hidden 32 / 4
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, head_dim=16, max_position_embeddings=64),
    # attention and final-logit softcaps that bite, query_pre_attn_scalar != head_dim, sliding / full layers
    "gemma2": lambda: transformers.Gemma2Config(**COMMON, head_dim=16, sliding_window=4, query_pre_attn_scalar=24,
                                                attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                                                max_position_embeddings=64),
    # q/k norms, local rope (theta 1e4) on the sliding layer, global rope (theta 1e6, linear x4) on the full one,
    # untied head
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **COMMON, head_dim=16, sliding_window=4, query_pre_attn_scalar=24, max_position_embeddings=64,
        tie_word_embeddings=False, layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
}
GEMMA_VARIANTS = ("gemma2", "gemma3")


def hf_config(name: str):
    config = VARIANTS[name]()
    config._attn_implementation = "eager"  # the reference implementation (sdpa cannot softcap)
    return config


def perturbed_hf_model(name: str, seed: int = 0, scale: float = 0.1):
    """A transformers causal LM of variant `name` in eval mode, every parameter perturbed."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(name), attn_implementation="eager")
    return perturb_(model.eval(), seed=seed + 1, scale=scale)
