"""Smoke test of the benchmark suite: every benchmark runs to completion at a tiny size.

Benchmarks are not tests: nothing here looks at how fast anything was, only that each
benchmark runs on this machine and reports its figures (so `make bench` does not rot).
"""

from __future__ import annotations

import pytest

from bench.__main__ import BENCHMARKS
from bench.common import TINY


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
async def test_benchmark_runs_at_tiny_size(name: str) -> None:
    """Benchmark `name` completes at the TINY scale and returns figures with values."""
    lines: list[str] = []
    figures = await BENCHMARKS[name](TINY, lines.append)
    assert figures, f"{name} reported no figures"
    for figure in figures:
        assert figure.value is not None, f"{figure.name} {figure.metric} was skipped: {figure.note}"
        assert figure.line().startswith(figure.name)
