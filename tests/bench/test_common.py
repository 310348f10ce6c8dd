"""The benchmark suite's own arithmetic (the figures it prints are only as good as this)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bench.common import paired_ratios


@dataclass(frozen=True)
class Run:
    rps: float


def test_paired_ratios_pair_rounds_in_order_and_give_their_median() -> None:
    """Round i of the bridge is divided by round i of the baseline (not by the best
    baseline), and the median is of those ratios."""
    bridge = [Run(400.0), Run(600.0), Run(500.0)]
    bare = [Run(1000.0), Run(1000.0), Run(800.0)]
    assert paired_ratios(bridge, bare) == "0.40 / 0.60 / 0.62 (median 0.60)"


def test_paired_ratios_show_a_zero_baseline_as_unknown() -> None:
    """A baseline run that measured nothing shows n/a and is left out of the median."""
    assert paired_ratios([Run(5.0), Run(3.0)], [Run(0.0), Run(10.0)]) == (
        "n/a / 0.30 (median 0.30)"
    )
    assert paired_ratios([Run(5.0)], [Run(0.0)]) == "n/a"


def test_paired_ratios_refuse_unpaired_rounds() -> None:
    """Runs and baselines of different lengths are a bug in the caller, not a figure."""
    with pytest.raises(ValueError, match=r"shorter|longer"):
        paired_ratios([Run(1.0)], [Run(1.0), Run(2.0)])
