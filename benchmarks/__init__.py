"""Benchmarks: scripts that print tables. Run them from the repository root as `python -m benchmarks.NAME`."""
