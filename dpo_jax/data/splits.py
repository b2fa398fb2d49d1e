"""A seeded held-out split: the same seed and examples give the same (train, eval) pairs on every run and resume."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dpo_jax.data.examples import PreferenceExample

__all__ = ["split_examples"]


def split_examples(examples: Sequence[PreferenceExample], fraction: float, *, seed: int
                   ) -> tuple[list[PreferenceExample], list[PreferenceExample]]:
    """(train, eval): ceil(fraction * n) examples drawn with `default_rng(seed)` are held out (at least one, and at
    least one left to train on); both keep the input order."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ValueError(f"eval split must be a fraction in (0, 1), got {fraction!r}")
    n = len(examples)
    if n < 2:
        raise ValueError(f"an eval split needs at least 2 examples, got {n}")
    held_out = min(max(math.ceil(round(fraction * n, 9)), 1), n - 1)  # round: 0.07 * 100 is 7.000000000000001
    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.default_rng(seed).permutation(n)[:held_out]] = True
    train = [example for example, is_eval in zip(examples, chosen) if not is_eval]
    evaluation = [example for example, is_eval in zip(examples, chosen) if is_eval]
    return train, evaluation
