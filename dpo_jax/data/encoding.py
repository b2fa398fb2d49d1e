"""A `RawPair` -> token ids (prompt, chosen, rejected): the one place that decides what reaches the model.

- Standard text is tokenized field by field (`tokenizer.encode`, no template special tokens); token-id lists are
  taken as they are, after checking every id is in [0, vocab_size). With `append_eos` (the default) the
  tokenizer's eos id ends both completions, so the model learns to stop.
- Conversational pairs go through the chat template (`chat.ChatTemplate.encode`, with its boundary check). No eos
  is appended: the template's end-of-turn tokens are the end of a completion, as the model will see at inference.
"""

from __future__ import annotations

from typing import Any

from dpo_jax.data.chat import ChatTemplate
from dpo_jax.data.formats import RawPair

__all__ = ["encode_pair", "field_ids"]


def field_ids(value: Any, key: str, tokenizer) -> list[int]:
    """A standard field's token ids; ValueError (without location) saying what is wrong."""
    if isinstance(value, str):
        return list(tokenizer.encode(value))
    if not isinstance(value, list):
        raise ValueError(f"field {key!r} must be a string or a list of token ids, got {type(value).__name__}")
    vocab = tokenizer.vocab_size
    for pos, tok in enumerate(value):
        if isinstance(tok, bool) or not isinstance(tok, int):
            raise ValueError(f"field {key!r}[{pos}] = {tok!r} is not an integer token id")
        if not 0 <= tok < vocab:
            raise ValueError(f"field {key!r}[{pos}] = {tok} is out of range [0, {vocab})")
    return list(value)


def _check_completions(chosen: list[int], rejected: list[int]) -> None:
    for key, ids in (("chosen", chosen), ("rejected", rejected)):
        if not ids:
            raise ValueError(f"field {key!r} is empty; a completion needs at least one token")


def encode_pair(pair: RawPair, tokenizer, *, chat_template: ChatTemplate | None = None,
                append_eos: bool = True) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) token ids of a pair; ValueError naming the field or the template's refusal."""
    if pair.conversational:
        if chat_template is None:
            raise ValueError("conversational records need a chat template")
        prompt, chosen = chat_template.encode(pair.prompt, pair.chosen, tokenizer, key="chosen")
        prompt_again, rejected = chat_template.encode(pair.prompt, pair.rejected, tokenizer, key="rejected")
        if prompt_again != prompt:  # the same messages rendered twice: only a non-deterministic template differs
            raise ValueError(f"chat template {chat_template.origin} renders the same prompt to different tokens")
        _check_completions(chosen, rejected)
        return prompt, chosen, rejected
    prompt, chosen, rejected = (field_ids(value, key, tokenizer) for key, value in
                                (("prompt", pair.prompt), ("chosen", pair.chosen), ("rejected", pair.rejected)))
    _check_completions(chosen, rejected)
    if append_eos:
        chosen, rejected = chosen + [tokenizer.eos_id], rejected + [tokenizer.eos_id]
    return prompt, chosen, rejected
