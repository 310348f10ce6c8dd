"""`bridge demo` against the real sandbox: every scenario has its expected effect."""

from __future__ import annotations

import pytest

from bridge.demo import run_demo


async def test_demo_shows_acknowledgements_in_both_directions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The demo exits 0 and narrates an acknowledgement made in incident.io reaching the
    Rootly alert, and one made in Rootly answering the incident.io page (respond)."""
    assert await run_demo() == 0
    out = capsys.readouterr().out
    assert "Rootly alert" in out and "is now 'acknowledged'" in out
    assert "acknowledges the alert in Rootly" in out
    assert "/actions/respond (answered 200)" in out
    assert "is now 'acked': the page stops" in out
    assert out.rstrip().endswith("every scenario had its expected effect")
