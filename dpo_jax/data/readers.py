"""Input files -> numbered records: JSONL, JSON arrays, gzip, Parquet, and `datasets.Dataset.save_to_disk` folders.

The kind of a file is decided by what it holds, not only by its name: a folder is a saved dataset, a file that
starts with Parquet's magic bytes is Parquet, one that starts with gzip's is decompressed first; then a `.json`
name holding an array is a JSON array, anything else is JSON Lines (`Dataset.to_json` writes JSON Lines under
a `.json` name). Every record comes with its number, the JSONL line or the record's index from 1, so every error
further down can name it. Reading a line that is not UTF-8 or not JSON does not stop the file: the record carries
the error and the caller reports all of them at once. Parquet needs `pyarrow` and saved datasets need
`datasets`; both are optional and the ImportError names the extra to install.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

from dpo_jax.data.errors import DataError
from dpo_jax.data.examples import PreferenceExample

__all__ = ["INPUT_KINDS", "Record", "RecordFile", "open_records", "write_preference_jsonl"]

INPUT_KINDS = ("jsonl", "json", "jsonl.gz", "json.gz", "parquet", "datasets")
PARQUET_MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Record:
    """One record of a file: its number (JSONL line, or index from 1) and its value, or why it could not be read."""

    number: int
    value: Any = None
    error: str | None = None


@dataclass(frozen=True)
class RecordFile:
    """An opened input: its kind (`INPUT_KINDS`), how records are numbered ("line" or "record"), and the records."""

    path: str
    kind: str
    unit: str
    read: Callable[[], Iterator[Record]]

    def records(self) -> Iterator[Record]:
        return self.read()


def _missing_extra(what: str, package: str, extra: str) -> ImportError:
    return ImportError(f"reading {what} needs the `{package}` package: pip install 'dpo-jax[{extra}]' "
                       f"(or pip install {package})")


def _json_line_records(lines: Iterable[bytes]) -> Iterator[Record]:
    for line_no, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield Record(line_no, error=f"not valid UTF-8 ({err.reason} at byte {err.start})")
            continue
        if not text.strip():
            continue
        try:
            yield Record(line_no, json.loads(text))
        except json.JSONDecodeError as err:
            yield Record(line_no, error=f"invalid JSON ({err.msg} at column {err.colno})")


def _json_array_records(path: str, data: bytes) -> Iterator[Record]:
    """The records of a JSON array (the caller saw that the text starts with "[")."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})", path=path) from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno})", path=path,
                        line=err.lineno) from None
    for number, row in enumerate(rows, start=1):
        yield Record(number, row)


def _starts_with_array(head: bytes) -> bool:
    return head.lstrip()[:1] == b"["


def _plain_file(path: str, name: str) -> RecordFile:
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if name.endswith(".json") and _starts_with_array(head):
        def read_array():
            with open(path, "rb") as handle:
                yield from _json_array_records(path, handle.read())
        return RecordFile(path, "json", "record", read_array)

    def read_lines():
        with open(path, "rb") as handle:
            yield from _json_line_records(handle)
    return RecordFile(path, "jsonl", "line", read_lines)


def _gzip_file(path: str, name: str) -> RecordFile:
    inner = name[:-3] if name.endswith(".gz") else name
    try:
        with gzip.open(path, "rb") as handle:
            head = handle.read(4096)
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: gzip stream is corrupt or truncated ({err})", path=path) from None

    def guarded(lines_or_bytes):
        try:
            yield from lines_or_bytes()
        except (OSError, EOFError) as err:  # a truncated or corrupt stream shows up mid-file
            raise DataError(f"{path}: gzip stream is corrupt or truncated ({err})", path=path) from None

    if inner.endswith(".json") and _starts_with_array(head):
        def read_array():
            def records():
                with gzip.open(path, "rb") as handle:
                    data = handle.read()
                yield from _json_array_records(path, data)
            yield from guarded(records)
        return RecordFile(path, "json.gz", "record", read_array)

    def read_lines():
        def records():
            with gzip.open(path, "rb") as handle:
                yield from _json_line_records(handle)
        yield from guarded(records)
    return RecordFile(path, "jsonl.gz", "line", read_lines)


def _parquet_file(path: str) -> RecordFile:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise _missing_extra("Parquet", "pyarrow", "parquet") from None
    try:
        table = parquet.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError subclasses for unreadable files
        raise DataError(f"{path}: not a readable Parquet file ({err})", path=path) from None

    def read():
        number = 0
        for batch in table.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield Record(number, row)
    return RecordFile(path, "parquet", "record", read)


def _dataset_folder(path: str) -> RecordFile:
    if os.path.exists(os.path.join(path, "dataset_dict.json")):
        splits = sorted(entry for entry in os.listdir(path) if os.path.isdir(os.path.join(path, entry)))
        raise DataError(f"{path} is a saved DatasetDict (splits: {', '.join(splits) or 'none'}); pass one split's "
                        f"folder, e.g. {os.path.join(path, splits[0] if splits else 'train')}", path=path)
    if not os.path.exists(os.path.join(path, "state.json")):
        raise DataError(f"{path} is a folder but not a dataset written by datasets.Dataset.save_to_disk "
                        "(no state.json)", path=path)
    try:
        import datasets
    except ImportError:
        raise _missing_extra("a saved dataset folder", "datasets", "datasets") from None
    try:
        dataset = datasets.load_from_disk(path)
    except Exception as err:  # datasets raises FileNotFoundError / its own errors for broken folders
        raise DataError(f"{path}: cannot load the saved dataset ({type(err).__name__}: {err})", path=path) from None

    def read():
        for number, row in enumerate(dataset, start=1):
            yield Record(number, row)
    return RecordFile(path, "datasets", "record", read)


def open_records(path: str | os.PathLike) -> RecordFile:
    """The records of one input (file or saved-dataset folder); FileNotFoundError if it does not exist."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return _dataset_folder(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"preference data file not found: {path}")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    name = os.path.basename(path).lower()
    if magic == PARQUET_MAGIC:
        return _parquet_file(path)
    if magic[:2] == GZIP_MAGIC:
        return _gzip_file(path, name)
    return _plain_file(path, name)


def write_preference_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any] | PreferenceExample]) -> None:
    """Write rows (dicts in any supported format, or PreferenceExamples as token ids) one JSON object per line."""
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            if isinstance(row, PreferenceExample):
                row = {"prompt": row.prompt, "chosen": row.chosen, "rejected": row.rejected}
            handle.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
