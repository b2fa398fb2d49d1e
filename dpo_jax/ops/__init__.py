"""Computations a kernel may replace: attention, the log-prob head, rematerialisation.

The lowest layer of `dpo_jax`: models call these, never the reverse, and nothing here knows a model family.
"""

from dpo_jax.ops.attention import ATTENTION_BACKENDS, AttentionMask, attend
from dpo_jax.ops.logprob_head import (DEFAULT_CHUNK_SIZE, HEAD_STATISTICS, LOGPROB_HEADS, OutputHead,
                                      chunked_token_logprobs, head_logits, head_token_logprobs,
                                      head_token_statistics, logit_statistics, token_logprobs)
from dpo_jax.ops.remat import REMAT_POLICIES, rematerialized, validate_remat

__all__ = ["ATTENTION_BACKENDS", "AttentionMask", "attend", "DEFAULT_CHUNK_SIZE", "HEAD_STATISTICS", "LOGPROB_HEADS",
           "OutputHead", "chunked_token_logprobs", "head_logits", "head_token_logprobs", "head_token_statistics",
           "logit_statistics", "token_logprobs", "REMAT_POLICIES",
           "rematerialized", "validate_remat"]
