"""What reaches the model, made visible (`dpo-jax inspect-data`): counts, formats, lengths, truncation, one example.

Lengths are token counts after tokenization and eos (what the batches hold before truncation); a pair's length is
prompt + the longer completion, the row length truncation is measured against.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dpo_jax.data.display import show_tokens, visible_text
from dpo_jax.data.examples import PreferenceExample, truncated_lengths
from dpo_jax.data.loading import PreferenceData

__all__ = ["BOUNDARY_MARK", "PERCENTILES", "length_table", "truncation_count", "render_example", "inspect_report"]

BOUNDARY_MARK = "⟦|⟧"
PERCENTILES = (50, 90, 99, 100)
SHOWN_BOUNDARY_TOKENS = 3


def length_table(examples: Sequence[PreferenceExample]) -> dict[str, dict[str, int]]:
    """{prompt, chosen, rejected, pair: {min, p50, p90, p99, max}} token counts (percentiles are observed values)."""
    columns = {
        "prompt": [len(ex.prompt) for ex in examples],
        "chosen": [len(ex.chosen) for ex in examples],
        "rejected": [len(ex.rejected) for ex in examples],
        "pair": [len(ex.prompt) + max(len(ex.chosen), len(ex.rejected)) for ex in examples],
    }
    table = {}
    for name, values in columns.items():
        values = np.asarray(values)
        row = {"min": int(values.min())}
        for q in PERCENTILES:
            row["max" if q == 100 else f"p{q}"] = int(np.percentile(values, q, method="higher"))
        table[name] = row
    return table


def truncation_count(examples: Sequence[PreferenceExample], max_len: int, *, min_completion_tokens: int = 1) -> int:
    """How many pairs the "keep_start" truncation to `max_len` tokens cuts."""
    return sum(truncated_lengths(ex, max_len, "keep_start", min_completion_tokens)
               != (len(ex.prompt), len(ex.chosen), len(ex.rejected)) for ex in examples)


def render_example(example: PreferenceExample, tokenizer, *, max_len: int | None = None) -> str:
    """The pair as text, with `BOUNDARY_MARK` where the completion (the scored tokens) starts, and the token ids on
    both sides of the boundary; after truncation to `max_len` when given."""
    prompt, chosen, rejected = example.prompt, example.chosen, example.rejected
    lines = [f"example {example.where()}: prompt {len(prompt)} tokens, chosen {len(chosen)}, rejected {len(rejected)}"]
    if max_len is not None:
        p, c, r = truncated_lengths(example, max_len, "keep_start", 1)
        if (p, c, r) != (len(prompt), len(chosen), len(rejected)):
            lines.append(f"  truncated to max_len={max_len}: prompt {p} tokens (its start cut), chosen {c}, rejected {r}")
            prompt, chosen, rejected = prompt[len(prompt) - p:], chosen[:c], rejected[:r]
    lines.append(f"  {BOUNDARY_MARK} marks where the completion starts; the model is scored on what follows it")
    prompt_text = visible_text(tokenizer, prompt)
    for key, completion in (("chosen", chosen), ("rejected", rejected)):
        lines.append(f"  --- {key} ---")
        lines.append(prompt_text + BOUNDARY_MARK + visible_text(tokenizer, completion))
        shown = prompt[-SHOWN_BOUNDARY_TOKENS:]
        lines.append(f"  tokens: prompt ends {show_tokens(tokenizer, shown, len(prompt) - len(shown)) or '(empty)'} "
                     f"| {key} starts {show_tokens(tokenizer, completion[:SHOWN_BOUNDARY_TOKENS], len(prompt))}")
    return "\n".join(lines)


def inspect_report(data: PreferenceData, tokenizer, *, max_len: int, example_index: int = 0) -> str:
    """The whole `inspect-data` text: per-file counts and formats, length percentiles, truncation, one example."""
    examples = data.examples
    lines = [f"{len(examples)} pairs in {len(data.files)} file(s); tokenizer {tokenizer!r}"]
    lines += [f"  {line}" for line in data.describe()]
    lines.append("token lengths (pair = prompt + the longer completion):")
    lines.append(f"  {'':9}" + "".join(f"{name:>8}" for name in ("min", "p50", "p90", "p99", "max")))
    for name, row in length_table(examples).items():
        lines.append(f"  {name:9}" + "".join(f"{value:>8}" for value in row.values()))
    cut = truncation_count(examples, max_len)
    lines.append(f"truncation at max_len={max_len}: {cut} of {len(examples)} pairs ({100 * cut / len(examples):.1f}%) "
                 "lose tokens (the completion's end first, then the prompt's start)")
    if not 0 <= example_index < len(examples):
        raise ValueError(f"example index {example_index} is outside [0, {len(examples)})")
    lines.append(render_example(examples[example_index], tokenizer, max_len=max_len))
    return "\n".join(lines)
