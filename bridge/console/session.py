"""Console sessions: the admin token exchanged for a signed, expiring cookie.

A session is ``<expires>.<nonce>.<mac>``: when it ends (unix seconds), 16 random bytes,
and an HMAC-SHA256 of both under a key derived from the admin token. Nothing is stored
server-side, so every replica that shares the token accepts the cookie, and changing the
token ends every session. Its CSRF token is another HMAC of the nonce under the same key:
a page carries it in every form, and a POST without the right one is refused. Logging out
forgets the cookie in the browser and revokes the nonce on this replica until it expires.

The sign-in form itself is protected the same way before there is a session: its page sets
a short-lived random cookie and puts the same value in the form (a double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from bridge.clock import Clock

SESSION_COOKIE: Final = "bridge_console"
LOGIN_COOKIE: Final = "bridge_console_login"
LOGIN_SECONDS: Final = 600
"""How long a sign-in form stays usable."""
COOKIE_PATH: Final = "/console/"


@dataclass(frozen=True, slots=True)
class Session:
    nonce: str
    expires: datetime
    csrf: str


class Sessions:
    def __init__(self, admin_token: str, lifetime: timedelta, clock: Clock) -> None:
        self._key = hmac.new(
            admin_token.encode(), b"bridge console session v1", hashlib.sha256
        ).digest()
        self.lifetime = lifetime
        self._clock = clock
        self._revoked: dict[str, datetime] = {}

    def _mac(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, offered: str, admin_token: str) -> bool:
        """Constant-time comparison of a sign-in attempt with the admin token."""
        try:
            return hmac.compare_digest(offered.encode(), admin_token.encode())
        except UnicodeEncodeError:
            return False

    def issue(self) -> tuple[str, Session]:
        """A new session: the cookie value and what it stands for."""
        expires = int((self._clock() + self.lifetime).timestamp())
        nonce = secrets.token_hex(16)
        payload = f"{expires}.{nonce}"
        session = self._session(nonce, expires)
        return f"{payload}.{self._mac(payload)}", session

    def _session(self, nonce: str, expires: int) -> Session:
        return Session(
            nonce,
            datetime.fromtimestamp(expires, self._clock().tzinfo),
            self._mac(f"csrf.{nonce}"),
        )

    def check(self, cookie: str | None) -> Session | None:
        """The session `cookie` stands for, if it is genuine, unexpired and not revoked."""
        if not cookie or len(cookie) > 200:
            return None
        parts = cookie.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 11:
            return None
        expires_text, nonce, mac = parts
        try:
            genuine = hmac.compare_digest(
                mac.encode(), self._mac(f"{expires_text}.{nonce}").encode()
            )
        except UnicodeEncodeError:
            return None
        if not genuine:
            return None
        session = self._session(nonce, int(expires_text))
        now = self._clock()
        if session.expires <= now or nonce in self._revoked:
            return None
        return session

    def csrf_ok(self, session: Session, offered: str | None) -> bool:
        if offered is None:
            return False
        try:
            return hmac.compare_digest(offered.encode(), session.csrf.encode())
        except UnicodeEncodeError:
            return False

    def revoke(self, session: Session) -> None:
        now = self._clock()
        for nonce in [n for n, until in self._revoked.items() if until <= now]:
            del self._revoked[nonce]
        self._revoked[session.nonce] = session.expires

    @staticmethod
    def login_nonce() -> str:
        return secrets.token_urlsafe(24)

    @staticmethod
    def login_nonce_ok(cookie: str | None, offered: str | None) -> bool:
        if not cookie or not offered:
            return False
        try:
            return hmac.compare_digest(cookie.encode(), offered.encode())
        except UnicodeEncodeError:
            return False
