"""Each face keeps its own copy of the loss option tables (so neither imports the other's framework); this
proves the two copies are the same specification: same names, same tables, same validation outcomes."""

import itertools

import pytest

from dpo_jax import logprobs as jlp
from dpo_jax import losses as jl
from dpo_torch import logprobs as tlp
from dpo_torch import losses as tl

TABLES = ("LOSS_TYPES", "DIVERGENCES", "DIVERGENCE_LOSSES", "REFERENCE_FREE_LOSSES", "LABEL_SMOOTHING_RANGES",
          "METRIC_NAMES", "DISCOPOP_TAU", "EXP_CLAMP", "TOKEN_STATISTICS_LOSSES", "BATCH_LEVEL_LOSSES",
          "EXTRA_METRIC_NAMES", "ORPO_MAX_MEAN_LOGP")


@pytest.mark.parametrize("name", TABLES)
def test_option_tables_equal(name):
    assert getattr(jl, name) == getattr(tl, name)


def test_same_public_names_and_one_function_per_loss():
    assert jl.__all__ == tl.__all__
    assert set(jl.LOSSES) == set(tl.LOSSES)
    for name in jl.LOSS_TYPES:
        jax_spec, torch_spec = jl.LOSSES[name], tl.LOSSES[name]
        assert (jax_spec.reads, jax_spec.label_smoothing) == (torch_spec.reads, torch_spec.label_smoothing), name
        assert jax_spec.fn.__name__ == torch_spec.fn.__name__ == name
        assert getattr(jl, name) is jax_spec.fn and getattr(tl, name) is torch_spec.fn
        assert "References:" in jax_spec.fn.__doc__ and jax_spec.fn.__doc__ == torch_spec.fn.__doc__


def _outcome(validate, **options):
    try:
        validate(**options)
    except ValueError as err:
        return str(err)
    return "ok"


GRID = list(itertools.product(
    list(jl.LOSS_TYPES) + ["nope"], list(jl.DIVERGENCES) + ["kl"], [0.0, 1e-3, 0.3, 0.5, 1.0, -0.1],
    [0.1, 0.0, float("nan")], [0.5, 0.0, 1.0], [True, False]))


@pytest.mark.parametrize("chunk", range(8))
def test_validation_outcomes_equal(chunk):
    """Every combination of the grid is accepted by both faces or refused by both with the same message."""
    for loss_type, divergence, smoothing, beta, alpha, has_reference in GRID[chunk::8]:
        options = dict(beta=beta, loss_type=loss_type, label_smoothing=smoothing, divergence=divergence,
                       alpha=alpha, gamma=0.5, has_reference=has_reference)
        assert _outcome(jl.validate_loss_options, **options) == _outcome(tl.validate_loss_options, **options)


def test_statistics_tables_equal():
    assert jlp.STATISTICS == tlp.STATISTICS
    assert jlp.SequenceStats._fields == tlp.SequenceStats._fields
    assert jlp.SequenceStats.__doc__ == tlp.SequenceStats.__doc__
    for name in ("ld_sequence_logprobs", "sequence_statistics", "check_statistics", "check_ld_reduction"):
        assert getattr(jlp, name).__doc__ == getattr(tlp, name).__doc__, name


EXTENSION_GRID = list(itertools.product(
    ["sigmoid", "sft", "orpo", "sigmoid_norm", "aot", ("sigmoid", "sft"), ("orpo", "simpo"), ("sigmoid", "aot"),
     ("sft", "sft"), ()],
    [None, (1.0, 0.2), (0.5,)], [False, True], [None, 0.0, 0.5, 2.0], ["mean", "sum", None], [True, False]))


@pytest.mark.parametrize("chunk", range(4))
def test_extension_validation_outcomes_equal(chunk):
    """Combinations, loss_weights, use_weighting, ld_alpha and the reduction rules: the same outcome in both."""
    for loss_type, loss_weights, use_weighting, ld_alpha, reduction, has_reference in EXTENSION_GRID[chunk::4]:
        options = dict(beta=0.1, loss_type=list(loss_type) if isinstance(loss_type, tuple) else loss_type,
                       label_smoothing=0.0, divergence="reverse_kl", alpha=0.5, gamma=0.5,
                       has_reference=has_reference, loss_weights=loss_weights, use_weighting=use_weighting,
                       ld_alpha=ld_alpha, reduction=reduction)
        assert _outcome(jl.validate_loss_options, **options) == _outcome(tl.validate_loss_options, **options)
