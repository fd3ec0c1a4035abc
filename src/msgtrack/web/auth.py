"""Sign-in sessions in a signed cookie, CSRF tokens, and who may call the API.

The session cookie holds ``user id, expiry, CSRF token`` signed with HMAC-SHA256 under a
random key kept in the home (``session.key``), so a session survives restarts and needs
no table. Every form carries the session's CSRF token; the sign-in form, which comes
before any session, uses a double-submit cookie instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

SESSION_COOKIE = "msgtrack_session"
LOGIN_CSRF_COOKIE = "msgtrack_signin_csrf"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    user_id: int
    user_name: str
    csrf: str
    expires: int


def load_session_key(path: Path) -> bytes:
    """The signing key, created (mode 0600) on first use."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return bytes.fromhex(key)
    except FileExistsError:  # pragma: no cover - another process created it meanwhile
        return bytes.fromhex(path.read_text().strip())


class SessionSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, payload: bytes) -> str:
        digest = hmac.new(self._key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, user_id: int, user_name: str) -> tuple[str, Session]:
        session = Session(
            user_id, user_name, secrets.token_urlsafe(24), int(time.time()) + SESSION_SECONDS
        )
        body = json.dumps(
            [session.user_id, session.user_name, session.csrf, session.expires],
            separators=(",", ":"),
        ).encode()
        payload = base64.urlsafe_b64encode(body).decode().rstrip("=")
        return f"{payload}.{self._mac(payload.encode())}", session

    def read(self, cookie: str | None) -> Session | None:
        """The session of a cookie with a valid signature that has not expired."""
        if not cookie or "." not in cookie:
            return None
        payload, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac, self._mac(payload.encode())):
            return None
        try:
            user_id, name, csrf, expires = json.loads(
                base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            )
        except ValueError:
            return None
        if int(expires) < time.time():
            return None
        return Session(int(user_id), str(name), str(csrf), int(expires))


def same_token(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
