"""Per-row checks that run inside jit, where the values of a batch cannot be inspected on the host.

A row whose token ids leave the vocabulary (JAX would clamp them silently), that has no scored token (its mean
would be a silent 0), or that is left-padded (the model would attend to the pads) gets a NaN log-prob: the loss
of its batch is NaN, the train step refuses the update, and the run stops with its message. Never a finite wrong
number. With `checks="raise"` the same conditions are also `checkify.check`s that name the first offending row;
wrap the jitted function in `jax.experimental.checkify.checkify` to get them (`error.throw()`), or call it eagerly.

Cost on the default path: one comparison and one reduction over the [2B, T] token ids, next to a forward pass.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.experimental import checkify

__all__ = ["CHECK_MODES", "check_mode", "RowProblem", "token_range_problem", "no_scored_token_problem",
           "left_padding_problem", "bad_pair_rows"]

CHECK_MODES = ("nan", "raise")


def check_mode(checks: str) -> str:
    if checks not in CHECK_MODES:
        raise ValueError(f"unknown checks {checks!r}; expected one of {', '.join(CHECK_MODES)}")
    return checks


class RowProblem:
    """Rows [R] that are bad, a message template with `{name}`, `{row}` and `{value}`, and a value per row."""

    def __init__(self, bad, message: str, value=None):
        self.bad, self.message = bad, message
        self.value = jnp.zeros(bad.shape, jnp.int32) if value is None else value


def token_range_problem(seqs, vocab_size: int) -> RowProblem:
    """Rows holding an id outside [0, vocab_size); the value is the first such id."""
    outside = (seqs < 0) | (seqs >= vocab_size)
    first = jnp.argmax(outside, axis=-1)
    value = jnp.take_along_axis(seqs, first[:, None], axis=-1)[:, 0]
    return RowProblem(outside.any(axis=-1), "{name} row {row} has token id {value} outside the vocabulary "
                      f"[0, {vocab_size})", value)


def no_scored_token_problem(scored) -> RowProblem:
    return RowProblem(~scored.any(axis=-1), "{name} row {row} has no scored token (the prompt or padding covers "
                      "every target position)")


def left_padding_problem(seq_mask) -> RowProblem:
    """Rows of `seq_mask = seq != pad_id` that start with pad tokens and have their own later; the value is the
    number of leading pads."""
    return RowProblem(~seq_mask[:, 0] & seq_mask.any(axis=-1), "{name} row {row} starts with {value} pad "
                      "token(s) before its own tokens: left padding is not supported, the model would attend to the "
                      "pads; pad on the right", jnp.argmax(seq_mask, axis=-1))


def bad_pair_rows(problems, *, checks: str = "nan", names=("preferred_seq", "unpreferred_seq")):
    """[2B] bool (chosen rows, then rejected rows): the rows any problem flags, whose log-prob and statistics the
    caller makes NaN; under `checks="raise"` also one checkify check per problem and half, naming the first bad
    row of that half."""
    problems = [problem for problem in problems if problem is not None]
    batch = problems[0].bad.shape[0] // 2
    if check_mode(checks) == "raise":
        for problem in problems:
            for name, half in zip(names, (slice(0, batch), slice(batch, None))):
                bad, value = problem.bad[half], problem.value[half]
                row = jnp.argmax(bad)
                checkify.check(~bad.any(), problem.message.replace("{name}", name), row=row, value=value[row])
    bad = problems[0].bad
    for problem in problems[1:]:
        bad = bad | problem.bad
    return bad
