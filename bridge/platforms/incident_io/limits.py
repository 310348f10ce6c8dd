"""incident.io's rate limits as it counts them (DESIGN section 7, the API reference).

Every request counts against its API key's bucket: 1200 requests, refilled at 20/s. Some
endpoints have a lower limit of their own on top of it; `POST /v2/escalations` (a new page)
is 60/min. Answers carry `X-RateLimit-Limit` (the binding quota first, then every one that
applied: ``60, 1200;window=60, 60;window=60``), `-Remaining`, `-Used` and `-Reset`.

Our defaults stay below the server's buckets, so other users of the key still find room:
the key bursts 20 (one second of its rate, of the server's 1200), escalation creates burst
10 (of 60), which pages a burst of 10 new incidents at once and the rest at one a second.
Both are configurable (`incident_io.rate_limit_per_minute` and `burst`,
`incident_io.endpoint_limits.escalation_create`).
"""

from __future__ import annotations

from typing import Final

from bridge.platforms.ratelimit import Limit, PlatformLimits, QuotaSpec

KEY: Final = "key"
ESCALATION_CREATE: Final = "escalation_create"


def classify(method: str, path: str) -> tuple[str, ...]:
    """The quotas a request counts against, narrowest first."""
    if method == "POST" and path.rstrip("/") == "/v2/escalations":
        return (ESCALATION_CREATE, KEY)
    return (KEY,)


LIMITS: Final = PlatformLimits(
    platform="incident_io",
    quotas=(
        QuotaSpec(KEY, Limit(1200.0, 20.0), "every request with the key"),
        QuotaSpec(ESCALATION_CREATE, Limit(60.0, 10.0), "POST /v2/escalations"),
    ),
    primary=KEY,
    classify=classify,
)
