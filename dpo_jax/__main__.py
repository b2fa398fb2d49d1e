"""`python -m dpo_jax train ...`."""

import sys

from dpo_jax.cli import main

sys.exit(main())
