"""`bridge adopt`'s progress line: drawn on a terminal only, never into a pipe or file."""

from __future__ import annotations

import io
import os

from bridge.adopt import Progress


def test_progress_is_silent_when_not_a_terminal() -> None:
    """Into a pipe or file (what scripts and CI capture) nothing is written."""
    stream = io.StringIO()
    progress = Progress(stream)
    progress.show("alerts read: 3")
    progress.show("pairing", 1, 4)
    progress.close()
    assert stream.getvalue() == ""


def test_progress_redraws_one_line_on_a_terminal_and_clears_it() -> None:
    """On a real pseudo-terminal: one line redrawn in place with a bar, cleared at the end."""
    primary, secondary = os.openpty()
    try:
        with open(secondary, "w", closefd=False) as terminal:
            progress = Progress(terminal)
            progress.show("pairing with Rootly incidents", 5, 10)
            progress.close()
        written = os.read(primary, 4096).decode()
    finally:
        os.close(primary)
        os.close(secondary)
    assert written.startswith("\radopt: pairing with Rootly incidents [##########..........] 5/10")
    assert written.endswith("\r")
    assert "\n" not in written
