"""Benchmarks of the bridge: `python -m bench` (= `make bench`) runs them all; see README.md."""
