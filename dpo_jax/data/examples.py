"""`PreferenceExample` (one tokenized pair) and the truncation rule every batch layout applies to it."""

from __future__ import annotations

from dataclasses import dataclass

from dpo_jax.data.errors import DataError

__all__ = ["PreferenceExample", "TRUNCATION_POLICIES", "truncated_lengths", "location"]

TRUNCATION_POLICIES = ("keep_start", "error")


def location(source: str, number: int, unit: str = "line") -> str:
    """`file:12` for a JSONL line, `file: record 12` for a record of a JSON array, Parquet file or dataset."""
    return f"{source}:{number}" if unit == "line" else f"{source}: record {number}"


@dataclass(frozen=True)
class PreferenceExample:
    """One tokenized preference pair; `chosen`/`rejected` are completions that follow `prompt`.

    `source` and `line` say where it was read (`line` is the JSONL line, or the record's number from 1 when
    `unit` is "record"), so that every later error can name it.
    """

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    source: str = "<memory>"
    line: int = 0
    unit: str = "line"

    def where(self) -> str:
        return location(self.source, self.line, self.unit)


def truncated_lengths(example: PreferenceExample, max_len: int, truncation: str,
                      min_completion_tokens: int) -> tuple[int, int, int]:
    """(prompt, chosen, rejected) lengths kept; the prompt length is shared by both rows.

    "keep_start": the completion's end is cut first, keeping at least `min_completion_tokens`; if the prompt is
    still too long, its start is cut (its end, nearest the answer, is kept). "error": a DataError instead.
    """
    p, c, r = len(example.prompt), len(example.chosen), len(example.rejected)
    if c == 0 or r == 0:
        raise DataError(f"{example.where()}: empty chosen/rejected completion", path=example.source, line=example.line)
    if p + max(c, r) <= max_len:
        return p, c, r
    if truncation == "error":
        raise DataError(
            f"{example.where()}: prompt+completion has {p + max(c, r)} tokens > max_len={max_len} "
            "(truncation='error')", path=example.source, line=example.line)
    keep_c = min(c, max(min_completion_tokens, max_len - p))
    keep_r = min(r, max(min_completion_tokens, max_len - p))
    keep_p = min(p, max_len - keep_c, max_len - keep_r)
    return keep_p, min(c, max_len - keep_p), min(r, max_len - keep_p)
