"""A run's preference data: its training files, its held-out pairs (an eval file or a seeded split), the report.

The chat template is looked up only when a file turns out to be conversational (`--chat-template`, else the
tokenizer's folder), so standard data needs neither jinja2 nor a template.
"""

from __future__ import annotations

import dataclasses
import os

from dpo_jax.data import find_chat_template, read_preference_data, split_examples, truncated_lengths

__all__ = ["RunData", "as_paths", "load_run_data", "check_eval_options", "drop_pairs_without_preference"]


def as_paths(value) -> list[str]:
    """A run config's data field (one path, several, or None) as a list of paths."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    return [os.fspath(path) for path in value]


@dataclasses.dataclass
class RunData:
    """The pairs a run trains and evaluates on, and what it says about them."""

    train: list
    eval: list
    lines: list[str]      # what the run says about its data (stderr)
    files: list[dict]     # per-file reports (summary.json)
    chat_template: object = None   # the template conversational files were rendered with (None: none needed)
    skipped: dict = dataclasses.field(default_factory=dict)   # pairs dropped for having no preference, by role

    def summary(self) -> dict:
        summary = {"train_pairs": len(self.train), "eval_pairs": len(self.eval), "files": self.files}
        if self.skipped:
            summary["skipped_identical_pairs"] = dict(self.skipped)
        return summary

    def drop_pairs_without_preference(self, max_len: int) -> "RunData":
        """This data without the pairs whose chosen equals rejected once truncated to `max_len` (a line says how
        many); a ValueError when no training pair is left."""
        train, dropped_train = drop_pairs_without_preference(self.train, max_len)
        held_out, dropped_eval = drop_pairs_without_preference(self.eval, max_len)
        if not train:
            raise ValueError(f"every one of the {dropped_train} training pairs has chosen equal to rejected (after "
                             f"truncation to {max_len} tokens): there is no preference to learn; fix the data, or "
                             "raise --max-seq-len if truncation made them equal")
        lines, skipped = list(self.lines), {}
        for role, dropped, total in (("train", dropped_train, len(self.train)), ("eval", dropped_eval,
                                                                                 len(self.eval))):
            if dropped:
                skipped[role] = dropped
                lines.append(f"data: skipped {dropped} of {total} {role} pairs whose chosen equals rejected (after "
                             f"truncation to {max_len} tokens): no preference, their loss would be ln 2 and their "
                             "gradient 0")
        return dataclasses.replace(self, train=train, eval=held_out, lines=lines, skipped=skipped)


def load_run_data(data, tokenizer, *, tokenizer_spec=None, chat_template=None, eval_data=None,
                  eval_split: float | None = None, seed: int = 0) -> RunData:
    """Read and validate every file (train and eval) before anything trains."""
    check_eval_options(eval_data, eval_split, None, None)
    found = {}

    def template():
        if "template" not in found:
            found["template"] = find_chat_template(chat_template, tokenizer_spec)
        return found["template"]

    train = read_preference_data(as_paths(data), tokenizer, chat_template=template)
    files = [dict(report.to_dict(), role="train") for report in train.files]
    lines = [f"data: {line}" for line in train.describe()]
    examples, held_out = train.examples, []
    if eval_data is not None:
        evaluation = read_preference_data(as_paths(eval_data), tokenizer, chat_template=template)
        held_out = evaluation.examples
        files += [dict(report.to_dict(), role="eval") for report in evaluation.files]
        lines += [f"eval data: {line}" for line in evaluation.describe()]
    elif eval_split is not None:
        examples, held_out = split_examples(examples, eval_split, seed=seed)
        lines.append(f"eval split: {len(held_out)} of {len(train.examples)} pairs held out "
                     f"(fraction {eval_split}, seed {seed}), {len(examples)} train")
    return RunData(examples, held_out, lines, files, chat_template=found.get("template"))


def check_eval_options(eval_data, eval_split: float | None, eval_every: int | None,
                       eval_batch_size: int | None) -> None:
    """ValueError for eval options that contradict each other (checked before anything is built)."""
    if eval_data is not None and eval_split is not None:
        raise ValueError("give eval data or an eval split, not both")
    if eval_split is not None and not 0.0 < eval_split < 1.0:
        raise ValueError(f"eval split must be a fraction in (0, 1), got {eval_split}")
    for name, value in (("eval_every", eval_every), ("eval_batch_size", eval_batch_size)):
        if value is None:
            continue
        if eval_data is None and eval_split is None:
            raise ValueError(f"{name} needs eval data or an eval split")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def drop_pairs_without_preference(examples, max_len: int, truncation: str = "keep_start",
                                  min_completion_tokens: int = 1) -> tuple[list, int]:
    """(the pairs whose chosen and rejected still differ after the batches' truncation, how many were dropped)."""
    kept = []
    for example in examples:
        _, chosen, rejected = truncated_lengths(example, max_len, truncation, min_completion_tokens)
        if example.chosen[:chosen] != example.rejected[:rejected]:
            kept.append(example)
    return kept, len(examples) - len(kept)
