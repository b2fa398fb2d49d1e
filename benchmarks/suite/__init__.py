"""`python -m benchmarks --suite gpu`: everything the project measures on a GPU, in one command.

`plan.py` (the parts, their order and shapes), `runner.py` (the time budget, subprocesses, checkpoints),
`environment.py` (part a: device, driver, versions), `parity.py` (part b: parity with torch, the attention
backends, bfloat16 drift, the cuDNN smoke test), `summary.py` (the one-page markdown and the figures). The
presets and the sweep (parts c and d) are the harness's own contenders. docs/gpu.md says how to run it.
"""
