"""Test-session settings shared by tests/ and parity_tests/: CPU JAX, one torch thread.

The test models are tiny: torch's intra-op thread pool only adds synchronisation overhead there (and spins
badly when the two cores are shared with XLA's threads), so one thread is both faster and deterministic.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import torch  # noqa: E402

torch.set_num_threads(1)
