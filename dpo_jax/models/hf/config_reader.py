"""Read a Hugging Face `config.json` strictly: every key is either understood, known to be harmless, or refused.

A port that silently ignores a key it does not implement (an MoE router, a new rope type, a quantisation
config) computes another model than the checkpoint's. So a family's config parser takes each key it
implements through `ConfigReader.take`, refuses unsupported values with `refuse`, and `finish()` returns the
remaining keys only if they are bookkeeping that cannot change the forward pass (`METADATA_KEYS`: token ids,
generation defaults, library versions, ...). Anything else raises `UnsupportedCheckpointError` naming the key.

The metadata keys travel with the config (`metadata`) and are written back by `save_pretrained`, so a saved
directory keeps the checkpoint's eos id, architectures and generation defaults.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["UnsupportedCheckpointError", "ConfigReader", "METADATA_KEYS", "DTYPE_KEYS", "metadata_dict"]


class UnsupportedCheckpointError(NotImplementedError, ValueError):
    """A checkpoint (config key or value, file layout) that the port does not implement; the message names it."""


# Keys that never change the forward pass of a decoder-only causal LM in eval mode.
METADATA_KEYS = frozenset({
    "_name_or_path", "architectures", "transformers_version", "model_type",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "initializer_range", "use_cache", "cache_implementation", "pretraining_tp", "chunk_size_feed_forward",
    "output_attentions", "output_hidden_states", "return_dict", "torchscript", "tokenizer_class", "prefix",
    "id2label", "label2id", "num_labels", "problem_type", "finetuning_task", "task_specific_params",
    "is_decoder", "tie_encoder_decoder", "cross_attention_hidden_size",
    "_attn_implementation", "_attn_implementation_autoset", "attn_implementation", "use_return_dict",
    # generation defaults that old configs carry (generation_config.json holds them today)
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "max_new_tokens",
})
DTYPE_KEYS = ("dtype", "torch_dtype")  # the stored weights' dtype: read by from_pretrained, rewritten on save

# Keys whose value must be "off" for a causal decoder; anything else is refused naming the key and value.
MUST_BE_OFF = {"is_encoder_decoder": False, "add_cross_attention": False, "pruned_heads": {},
               "quantization_config": None}

MISSING = object()


class ConfigReader:
    """One pass over a config.json dict for one family; see the module docstring."""

    def __init__(self, data: dict[str, Any], family: str):
        if not isinstance(data, dict):
            raise TypeError(f"a config must be a dict (config.json's contents), got {type(data).__name__}")
        self.data = dict(data)
        self.family = family
        self.model_type = data.get("model_type")
        self.used: set[str] = {"model_type"}

    def __contains__(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def take(self, key: str, default=MISSING, *, kind=None):
        """The value of `key`, marked as understood: `default` when absent (transformers' class default), None
        when null (as transformers passes it on); `kind` (int, float, bool) checks the type."""
        self.used.add(key)
        if key not in self.data:
            if default is MISSING:
                raise ValueError(f"config.json of a {self.family} checkpoint needs {key!r}")
            return default
        value = self.data[key]
        if value is None:
            if default is MISSING:
                raise ValueError(f"config.json of a {self.family} checkpoint needs {key!r}, got null")
            return None
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"config.json {key!r} must be an integer, got {value!r}")
        if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"config.json {key!r} must be a number, got {value!r}")
        if kind is bool and not isinstance(value, bool):
            raise ValueError(f"config.json {key!r} must be true or false, got {value!r}")
        return float(value) if kind is float else value

    def refuse(self, key: str, value, why: str = "") -> None:
        raise UnsupportedCheckpointError(
            f"config.json {key!r} = {json.dumps(value)} is not implemented by the dpo_jax {self.family} port "
            f"(model_type {self.model_type!r})" + (f": {why}" if why else ""))

    def finish(self) -> tuple[tuple[str, str], ...]:
        """Refuse what is left unless it is metadata; returns the metadata as sorted (key, JSON text) pairs."""
        for key, off in MUST_BE_OFF.items():
            self.used.add(key)
            value = self.data.get(key)
            if value is not None and value != off and not (off == {} and not value):
                self.refuse(key, value)
        left = [key for key in self.data if key not in self.used and key not in DTYPE_KEYS]
        unknown = sorted(key for key in left if key not in METADATA_KEYS)
        if unknown:
            raise UnsupportedCheckpointError(
                f"config.json key(s) {unknown} are not understood by the dpo_jax {self.family} port (model_type "
                f"{self.model_type!r}); they may change the computation, so the checkpoint is refused rather than "
                "loaded as another model")
        return tuple((key, json.dumps(self.data[key], sort_keys=True)) for key in sorted(left)
                     if key not in ("_name_or_path", "model_type"))


def metadata_dict(metadata: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """The metadata pairs back as config.json entries."""
    return {key: json.loads(text) for key, text in metadata}
