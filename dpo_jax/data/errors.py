"""`DataError`: what the data pipeline raises for bad input, always naming where the problem is."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Malformed preference data; the message names the file, the 1-based line (JSONL) or record number, and
    the problem. `line` holds that number for every input kind (a record's number counts from 1, as lines do)."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        super().__init__(message)
        self.path = path
        self.line = line
