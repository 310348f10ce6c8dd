"""Rootly's rate limits as it counts them (DESIGN section 1, the API reference).

Rootly limits each API key's writes (POST, PUT, PATCH, DELETE) and, separately, its reads
(GET, HEAD, OPTIONS), over a sliding 60-second window, and names them in the
`X-RateLimit-*` headers of every answer. DESIGN gives about 3000 writes a minute; the
official spec's prose on the exact numbers is garbled (it reads 5 reads and 3 writes), and
Rootly raises them on request, so both are configurable: `rootly.rate_limit_per_minute` and
`burst` size writes, `rootly.endpoint_limits.reads` reads. A burst of 50 is one second of
the rate.
"""

from __future__ import annotations

from typing import Final

from bridge.platforms.ratelimit import Limit, PlatformLimits, QuotaSpec

WRITES: Final = "writes"
READS: Final = "reads"
_READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def classify(method: str, _path: str) -> tuple[str, ...]:
    """The quota a request counts against: reads or writes (whatever the path)."""
    return (READS,) if method in _READ_METHODS else (WRITES,)


LIMITS: Final = PlatformLimits(
    platform="rootly",
    quotas=(
        QuotaSpec(WRITES, Limit(3000.0, 50.0), "POST, PUT, PATCH and DELETE"),
        QuotaSpec(READS, Limit(3000.0, 50.0), "GET, HEAD and OPTIONS"),
    ),
    primary=WRITES,
    classify=classify,
)
