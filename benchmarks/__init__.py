"""Benchmarks: `python -m benchmarks` (see __main__.py); contenders are registered in contenders.py."""
