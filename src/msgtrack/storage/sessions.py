"""The ``web_sessions`` store: who is signed in to the web UI.

The browser holds a random token; the table holds its SHA-256, so a copy of the
database signs nobody in. A session ends when it expires, when its user signs out,
or when the user is removed or given a new password.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from msgtrack.storage.schema import users, web_sessions
from msgtrack.storage.types import utcnow


@dataclass(frozen=True)
class SessionRow:
    user_id: int
    user_name: str
    csrf: str
    expires_at: datetime


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def create_session(conn: Connection, user_id: int, lifetime: timedelta) -> tuple[str, SessionRow]:
    """A new session of the user: (the cookie's token, the session). Expired sessions
    are swept on the way, so the table holds only live ones."""
    now = utcnow()
    conn.execute(delete(web_sessions).where(web_sessions.c.expires_at < now))
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    conn.execute(
        insert(web_sessions).values(
            token_hash=_hash(token),
            user_id=user_id,
            csrf=csrf,
            created_at=now,
            expires_at=now + lifetime,
        )
    )
    name = conn.execute(select(users.c.name).where(users.c.id == user_id)).scalar_one()
    return token, SessionRow(user_id, name, csrf, now + lifetime)


def session_of(conn: Connection, token: str) -> SessionRow | None:
    """The live session a token opens, or None."""
    s, u = web_sessions, users
    row = conn.execute(
        select(s.c.user_id, u.c.name, s.c.csrf, s.c.expires_at)
        .select_from(s.join(u, u.c.id == s.c.user_id))
        .where(s.c.token_hash == _hash(token), s.c.expires_at > utcnow())
    ).first()
    return None if row is None else SessionRow(int(row[0]), row[1], row[2], row[3])


def end_session(conn: Connection, token: str) -> None:
    conn.execute(delete(web_sessions).where(web_sessions.c.token_hash == _hash(token)))


def end_user_sessions(conn: Connection, user_id: int) -> int:
    """Sign the user out everywhere; how many sessions ended."""
    return int(conn.execute(delete(web_sessions).where(web_sessions.c.user_id == user_id)).rowcount)
