"""TRL's four preference formats: which one a record is in, and its (prompt, chosen, rejected) in that format.

| format (TRL's name)                          | record                                                          |
|----------------------------------------------|-----------------------------------------------------------------|
| `standard_preference`                        | `{"prompt": str, "chosen": str, "rejected": str}`               |
| `standard_implicit_prompt_preference`        | `{"chosen": str, "rejected": str}`: the prompt is their prefix  |
| `conversational_preference`                  | `prompt` a list of `{"role", "content"}` messages, `chosen` and |
|                                              | `rejected` lists of assistant messages                          |
| `conversational_implicit_prompt_preference`  | `chosen` and `rejected` whole conversations sharing the prompt  |

In the standard formats any field may also be a list of token ids. The implicit prompt is TRL's
`extract_prompt`: the longest common prefix of chosen and rejected (characters of text, token ids, or whole
messages), stopped one element short of the shorter one so that both completions keep at least one element; a
space just before the point where text differs goes to the completions. Keys other than the three are ignored
(and reported by the loader). Nothing here tokenizes: `encoding.py` turns a `RawPair` into token ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["FORMATS", "PREFERENCE_KEYS", "RawPair", "is_conversational", "is_message_list", "extract_prompt",
           "parse_record"]

PREFERENCE_KEYS = ("prompt", "chosen", "rejected")
FORMATS = {
    "standard_preference": "standard, explicit prompt",
    "standard_implicit_prompt_preference": "standard, implicit prompt",
    "conversational_preference": "conversational, explicit prompt",
    "conversational_implicit_prompt_preference": "conversational, implicit prompt",
}


@dataclass(frozen=True)
class RawPair:
    """A record's pair before tokenization: text or token ids (standard), or message lists (conversational)."""

    format: str
    prompt: Any
    chosen: Any
    rejected: Any
    ignored_keys: tuple[str, ...] = ()

    @property
    def conversational(self) -> bool:
        return self.format.startswith("conversational")


def is_message_list(value: Any) -> bool:
    """A non-empty list whose first element is a mapping: how TRL tells conversational data (`is_conversational`)."""
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], Mapping)


def is_conversational(row: Mapping) -> bool:
    return any(is_message_list(row.get(key)) for key in PREFERENCE_KEYS)


def extract_prompt(chosen: Sequence, rejected: Sequence) -> tuple[Sequence, Sequence, Sequence]:
    """(prompt, chosen, rejected) split at the longest common prefix, TRL's rule (module docstring)."""
    shortest = min(len(chosen), len(rejected))
    cut = max(shortest - 1, 0)  # no difference within the shorter one: keep its last element as a completion
    for index in range(shortest):
        if chosen[index] != rejected[index]:
            cut = index - 1 if index > 0 and chosen[index - 1] == " " else index
            break
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _clean_messages(value: Any, key: str) -> list[dict]:
    """Messages as plain dicts without None values (a Parquet struct column fills absent fields with None)."""
    if not isinstance(value, list):
        raise ValueError(f"conversational records need {key!r} as a list of messages, got {type(value).__name__}")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise ValueError(f"{key!r}[{index}] must be a message {{'role', 'content'}}, got {type(message).__name__}")
        message = {k: v for k, v in message.items() if v is not None}
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise ValueError(f"{key!r}[{index}] has no 'role' (a non-empty string)")
        if not isinstance(message.get("content"), (str, list)):
            raise ValueError(f"{key!r}[{index}] (role {message['role']!r}) has no 'content' (a string or a list of "
                             "content parts)")
        messages.append(message)
    return messages


def _check_roles(prompt: list[dict], chosen: list[dict], rejected: list[dict]) -> None:
    if prompt and prompt[-1]["role"] == "assistant":
        raise ValueError("the prompt ends with an assistant message; continuing a started answer (TRL's "
                         "continue_final_message) is not supported: end the prompt with the user's turn")
    for key, completion in (("chosen", chosen), ("rejected", rejected)):
        if not completion:
            raise ValueError(f"{key!r} has no message after the prompt; a completion needs at least one")
        others = sorted({m["role"] for m in completion} - {"assistant"})
        if others:
            raise ValueError(f"{key!r} after the prompt holds {others} message(s); a completion is assistant messages "
                             "only (with an implicit prompt, chosen and rejected must share every turn before it)")


def parse_record(row: Any) -> RawPair:
    """The record's format and pair; ValueError (without location) naming what is wrong."""
    if not isinstance(row, Mapping):
        raise ValueError(f"expected a JSON object with keys {list(PREFERENCE_KEYS)} (or just 'chosen' and "
                         f"'rejected'), got {type(row).__name__}")
    missing = [key for key in ("chosen", "rejected") if key not in row]
    if missing:
        raise ValueError(f"missing key(s) {missing}; each record needs 'chosen' and 'rejected', and 'prompt' unless "
                         "the prompt is implicit (their shared beginning)")
    ignored = tuple(sorted(str(key) for key in row if key not in PREFERENCE_KEYS))
    explicit = "prompt" in row
    if is_conversational(row):
        fields = {key: _clean_messages(row[key], key) for key in PREFERENCE_KEYS if key in row}
        if explicit:
            prompt, chosen, rejected = fields["prompt"], fields["chosen"], fields["rejected"]
        else:
            prompt, chosen, rejected = (list(part) for part in extract_prompt(fields["chosen"], fields["rejected"]))
        _check_roles(prompt, chosen, rejected)
        kind = "conversational_preference" if explicit else "conversational_implicit_prompt_preference"
        return RawPair(kind, prompt, chosen, rejected, ignored)
    if explicit:
        return RawPair("standard_preference", row["prompt"], row["chosen"], row["rejected"], ignored)
    chosen, rejected = row["chosen"], row["rejected"]
    both_text = isinstance(chosen, str) and isinstance(rejected, str)
    both_ids = isinstance(chosen, list) and isinstance(rejected, list)
    if not (both_text or both_ids):
        raise ValueError(f"an implicit prompt needs 'chosen' and 'rejected' of one kind (both text or both token "
                         f"id lists), got {type(chosen).__name__} and {type(rejected).__name__}")
    prompt, chosen, rejected = extract_prompt(chosen, rejected)
    return RawPair("standard_implicit_prompt_preference", prompt, chosen, rejected, ignored)
