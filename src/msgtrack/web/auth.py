"""Sign-in sessions, sign-in throttling, CSRF tokens, and who may call the API.

The session cookie holds a random token; the session (user, CSRF token, expiry) lives in
the database (``storage.sessions``), so signing out ends it for good and removing a user
or changing a password signs that user out everywhere. Every form carries the session's
CSRF token; the sign-in form, which comes before any session, uses a double-submit
cookie instead. Repeated failed sign-ins for one name or from one address are refused for
a while, so passwords cannot be guessed at the speed of the server.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from fastapi import HTTPException, Request
from sqlalchemy.engine import Engine

from msgtrack.storage import sessions as store
from msgtrack.storage.auth import api_token_exists

SESSION_COOKIE = "msgtrack_session"
LOGIN_CSRF_COOKIE = "msgtrack_signin_csrf"
SESSION_SECONDS = 12 * 3600
MAX_COOKIE = 200  # a token is 43 characters: anything much longer is not ours


@dataclass(frozen=True)
class Session:
    user_id: int
    user_name: str
    csrf: str


class Sessions:
    """Sessions of the web UI, read on every private request (one indexed lookup)."""

    def __init__(self, engine: Engine, reader: Engine) -> None:
        self._engine = engine
        self._reader = reader

    def issue(self, user_id: int) -> tuple[str, Session]:
        """A new session: (the cookie's value, the session)."""
        with self._engine.begin() as conn:
            token, row = store.create_session(conn, user_id, timedelta(seconds=SESSION_SECONDS))
        return token, Session(row.user_id, row.user_name, row.csrf)

    def read(self, cookie: str | None) -> Session | None:
        """The live session of a cookie, or None."""
        if not cookie or len(cookie) > MAX_COOKIE:
            return None
        with self._reader.connect() as conn:
            row = store.session_of(conn, cookie)
        return None if row is None else Session(row.user_id, row.user_name, row.csrf)

    def end(self, cookie: str) -> None:
        with self._engine.begin() as conn:
            store.end_session(conn, cookie)


class SignInThrottle:
    """Failed sign-ins remembered for ``window`` seconds: past ``per_name`` failures for
    one user name, or ``per_address`` from one client address, sign-in is refused until
    the oldest failure ages out. In memory, per process (``msgtrack serve`` is one)."""

    def __init__(self, per_name: int = 5, per_address: int = 30, window: float = 900.0) -> None:
        self.limits = {"name": per_name, "address": per_address}
        self.window = window
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            self._failures.pop(key, None)
        return times

    def wait_seconds(self, name: str, address: str) -> int:
        """0 when a sign-in may be tried now, else how long to wait."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for kind, value in (("name", name.lower()), ("address", address)):
                times = self._recent((kind, value), now)
                if len(times) >= self.limits[kind]:
                    wait = max(wait, times[0] + self.window - now)
        return int(wait) + 1 if wait else 0

    def failed(self, name: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > 100_000:  # a flood of names: forget the oldest half
                for key in list(self._failures)[:50_000]:
                    del self._failures[key]
            for key in (("name", name.lower()), ("address", address)):
                self._recent(key, now)
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(("name", name.lower()), None)


def same_token(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def api_access(sessions: Sessions, reader: Engine) -> Callable[[Request], Awaitable[None]]:
    """The dependency of every API route: an API token, or a signed-in session (with the
    session's X-CSRF-Token header on anything but a GET)."""

    def token_exists(token: str) -> bool:
        with reader.connect() as conn:
            return api_token_exists(conn, token)

    async def require_access(request: Request) -> None:
        token = bearer_token(request)
        if token is not None:
            if await asyncio.to_thread(token_exists, token):
                return
            raise HTTPException(401, "invalid API token", headers={"WWW-Authenticate": "Bearer"})
        session = sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise HTTPException(401, "missing API token", headers={"WWW-Authenticate": "Bearer"})
        if request.method not in ("GET", "HEAD") and not same_token(
            session.csrf, request.headers.get("x-csrf-token")
        ):
            raise HTTPException(403, "missing or wrong X-CSRF-Token header")

    return require_access
