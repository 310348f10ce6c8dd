"""The small error taxonomy every platform client maps HTTP answers into.

The executor decides from the class alone: retry later, wait for the rate limit, record as
skipped, or dead-letter. Messages carry the platform's own words and request ID, never a
credential.
"""

from __future__ import annotations

from bridge.events import Platform


class UpstreamError(Exception):
    """A platform API call did not succeed."""

    def __init__(
        self,
        platform: Platform,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.platform = platform
        self.message = message
        self.status = status
        self.request_id = request_id

    def __str__(self) -> str:
        parts = [f"{self.platform}"]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        parts.append(self.message)
        if self.request_id:
            parts.append(f"(request_id {self.request_id})")
        return (
            ": ".join(parts[:2]) + " " + " ".join(parts[2:]) if len(parts) > 2 else ": ".join(parts)
        )


class Retryable(UpstreamError):
    """5xx, timeout or connection failure: try again with backoff."""

    in_doubt = False


class InDoubt(Retryable):
    """The request went out and no answer came back (a timeout, a connection dropped
    mid-request): the platform may still apply it later. A 5xx is an answer."""

    in_doubt = True


class RateLimited(UpstreamError):
    """429: try again at `retry_at` (unix seconds), not counted as a failed attempt."""

    def __init__(
        self,
        platform: Platform,
        message: str,
        *,
        retry_at: float,
        status: int | None = 429,
        request_id: str | None = None,
    ) -> None:
        super().__init__(platform, message, status=status, request_id=request_id)
        self.retry_at = retry_at


class TargetMissing(UpstreamError):
    """404: the object is gone; the action is recorded as skipped."""


class StateConflict(UpstreamError):
    """The object is not in a state that allows the change (already resolved, open alert)."""


class Permanent(UpstreamError):
    """Any other 4xx: retrying cannot help; dead-letter with the platform's message."""
