"""Token ids shown as a person reads them: special tokens included, since they are what a template adds."""

from __future__ import annotations

import inspect
from typing import Sequence

__all__ = ["visible_text", "show_tokens"]


def _keeps_special_tokens(tokenizer) -> bool:
    try:
        return "skip_special_tokens" in inspect.signature(tokenizer.decode).parameters
    except (TypeError, ValueError):  # a builtin or C-implemented decode without a signature
        return False


def visible_text(tokenizer, ids: Sequence[int]) -> str:
    """`ids` decoded with their special tokens written out (where the tokenizer can), e.g. `<|im_start|>`."""
    ids = [int(i) for i in ids]
    if _keeps_special_tokens(tokenizer):
        return tokenizer.decode(ids, skip_special_tokens=False)
    return tokenizer.decode(ids)


def show_tokens(tokenizer, ids: Sequence[int], start: int = 0) -> str:
    """`[start] id 'piece', ...`: ids with their positions and what each one reads as."""
    return ", ".join(f"[{start + offset}] {int(token)} {visible_text(tokenizer, [token])!r}"
                     for offset, token in enumerate(ids))
