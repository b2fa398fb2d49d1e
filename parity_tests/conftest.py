"""Parity tests run in float32 on CPU with deterministic seeds."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

jax.config.update("jax_enable_x64", False)
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Same torch RNG stream in every test, whatever ran before."""
    torch.manual_seed(0)
    yield


_WORST_DIFFS: dict[str, float] = {}


@pytest.fixture
def record_worst_diff():
    """Collect the worst relative max |diff| per option; printed at the end of the session."""
    def record(name: str, value: float) -> None:
        _WORST_DIFFS[name] = max(value, _WORST_DIFFS.get(name, 0.0))
    return record


def pytest_terminal_summary(terminalreporter):
    if _WORST_DIFFS:
        terminalreporter.write_sep("-", "worst relative max |logits diff| per option")
        for name, value in _WORST_DIFFS.items():
            terminalreporter.write_line(f"{name:55s} {value:.2e}")
