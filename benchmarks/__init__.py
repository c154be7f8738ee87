"""Benchmarks: `python -m benchmarks` runs them all and prints the figures side by side."""
