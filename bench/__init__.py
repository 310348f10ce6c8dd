"""Benchmarks of the bridge (run one with `python -m bench.<name>`)."""
