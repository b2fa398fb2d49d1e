"""Preference files -> validated `PreferenceExample`s, and a report of what was found in each file.

Every record of a file is read, its format detected (`formats.py`) and tokenized (`encoding.py`) before anything
is returned, so training never starts on half-read data. The DataError names the first bad record (file and line,
or record number) and counts the others. One file holds one format: the first record sets it and a record in
another format is an error at that record. Keys outside prompt/chosen/rejected are ignored and listed once in
the file's report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from dpo_jax.data.chat import ChatTemplate
from dpo_jax.data.encoding import encode_pair
from dpo_jax.data.errors import DataError
from dpo_jax.data.examples import PreferenceExample, location
from dpo_jax.data.formats import FORMATS, parse_record
from dpo_jax.data.readers import open_records

__all__ = ["FileReport", "PreferenceData", "read_preference_file", "read_preference_data", "read_preference_jsonl"]

MAX_LISTED_ERRORS = 10


@dataclass(frozen=True)
class FileReport:
    """What one input held: its kind (`readers.INPUT_KINDS`), its format (`formats.FORMATS`), its pair count,
    the keys that were ignored, and the chat template used (None for standard data)."""

    path: str
    kind: str
    format: str
    pairs: int
    ignored_keys: tuple[str, ...] = ()
    chat_template: str | None = None

    def describe(self) -> str:
        text = f"{self.path}: {self.pairs} pairs, {self.kind}, format {self.format} ({FORMATS[self.format]})"
        if self.chat_template:
            text += f", chat template {self.chat_template}"
        if self.ignored_keys:
            text += f"; ignored key(s): {', '.join(self.ignored_keys)}"
        return text

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "format": self.format, "pairs": self.pairs,
                "ignored_keys": list(self.ignored_keys), "chat_template": self.chat_template}


@dataclass(frozen=True)
class PreferenceData:
    """The examples of several files, in file order, and one report per file."""

    examples: list[PreferenceExample]
    files: tuple[FileReport, ...]

    def describe(self) -> list[str]:
        return [report.describe() for report in self.files]


def _no_template_error(path: str, where: str, kind: str) -> DataError:
    return DataError(f"{where}: conversational records ({kind}) need a chat template and none was given or found: "
                     "pass chat_template= (CLI: --chat-template FILE), or a tokenizer folder whose "
                     "tokenizer_config.json has a chat_template (CLI: --tokenizer DIR)", path=path)


TemplateSource = Union[ChatTemplate, Callable[[], Optional[ChatTemplate]], None]


def read_preference_file(path: str | os.PathLike, tokenizer, *, chat_template: TemplateSource = None,
                         append_eos: bool = True) -> tuple[list[PreferenceExample], FileReport]:
    """All pairs of one input (any kind `readers.open_records` reads) and its report; DataError if any is bad.

    `chat_template` is a ChatTemplate, or a function returning one (or None), called only when the file turns
    out to be conversational, so standard data never needs a template or jinja2.
    """
    source = open_records(path)
    path = source.path
    noun = "line" if source.unit == "line" else "record"
    examples: list[PreferenceExample] = []
    errors: list[tuple[int, str]] = []
    file_format, format_set_by, ignored = None, None, set()
    for record in source.records():
        if record.error is not None:
            errors.append((record.number, record.error))
            continue
        try:
            pair = parse_record(record.value)
        except ValueError as err:
            errors.append((record.number, str(err)))
            continue
        if file_format is None:
            file_format, format_set_by = pair.format, record.number
            if pair.conversational and callable(chat_template):
                chat_template = chat_template()
            if pair.conversational and chat_template is None:
                raise _no_template_error(path, location(path, record.number, source.unit), pair.format)
        elif pair.format != file_format:
            errors.append((record.number, f"format {pair.format} ({FORMATS[pair.format]}) differs from this file's "
                                          f"{file_format} (set by {noun} {format_set_by}); one file holds one format"))
            continue
        ignored.update(pair.ignored_keys)
        try:
            prompt, chosen, rejected = encode_pair(pair, tokenizer, chat_template=chat_template,
                                                   append_eos=append_eos)
        except ValueError as err:
            errors.append((record.number, str(err)))
            continue
        examples.append(PreferenceExample(prompt, chosen, rejected, source=path, line=record.number,
                                          unit=source.unit))
    if errors:
        first_number, first_message = errors[0]
        message = f"{location(path, first_number, source.unit)}: {first_message}"
        if len(errors) > 1:
            listed = errors[1:MAX_LISTED_ERRORS + 1]
            others = ", ".join(str(n) for n, _ in listed) + (", ..." if len(errors) > len(listed) + 1 else "")
            message += f" (and {len(errors) - 1} more malformed {noun}(s): {others}); file rejected"
        raise DataError(message, path=path, line=first_number)
    if not examples:
        raise DataError(f"{path}: no preference examples (file is empty or blank)", path=path)
    template = chat_template.origin if file_format.startswith("conversational") else None
    report = FileReport(path, source.kind, file_format, len(examples), tuple(sorted(ignored)), template)
    return examples, report


def read_preference_data(paths: str | os.PathLike | Sequence[str | os.PathLike], tokenizer, *,
                         chat_template: TemplateSource = None, append_eos: bool = True) -> PreferenceData:
    """Every pair of every input in `paths` (one path or several), validated; each file has its own format."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("read_preference_data needs at least one path")
    examples, reports = [], []
    for path in paths:
        file_examples, report = read_preference_file(path, tokenizer, chat_template=chat_template,
                                                     append_eos=append_eos)
        examples.extend(file_examples)
        reports.append(report)
    return PreferenceData(examples, tuple(reports))


def read_preference_jsonl(path: str | os.PathLike, tokenizer, *, append_eos: bool = True,
                          chat_template: TemplateSource = None) -> list[PreferenceExample]:
    """Read and validate a whole preference file (JSONL, or any input `read_preference_data` reads).

    Each standard field is text (tokenized) or a list of int ids in [0, vocab_size); conversational records
    need `chat_template`. Every record is checked before anything is returned; the DataError names the first
    bad line and counts the others.
    """
    return read_preference_file(path, tokenizer, chat_template=chat_template, append_eos=append_eos)[0]
