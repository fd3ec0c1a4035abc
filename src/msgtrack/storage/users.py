"""Users of the web UI: a name and an argon2 hash of the password, nothing else.

Hashing lives here with the table so no other module ever sees a stored hash.
"""

from __future__ import annotations

from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from msgtrack.storage.schema import users
from msgtrack.storage.sessions import end_user_sessions
from msgtrack.storage.types import utcnow

_hasher = PasswordHasher()
# Verified when the name is unknown, so a wrong name costs as much time as a wrong password.
_DUMMY_HASH = _hasher.hash("msgtrack-no-such-user")


@dataclass(frozen=True)
class User:
    id: int
    name: str


def set_user(conn: Connection, name: str, password: str) -> None:
    """Create the user, or set a new password when it exists (which signs the user out
    everywhere: whoever knew the old one is out)."""
    password_hash = _hasher.hash(password)
    user_id = conn.execute(select(users.c.id).where(users.c.name == name)).scalar_one_or_none()
    if user_id is None:
        conn.execute(
            insert(users).values(name=name, password_hash=password_hash, created_at=utcnow())
        )
        return
    conn.execute(update(users).where(users.c.id == user_id).values(password_hash=password_hash))
    end_user_sessions(conn, int(user_id))


def remove_user(conn: Connection, name: str) -> bool:
    """Remove the user and end its sessions; False when there is no such user."""
    user_id = conn.execute(select(users.c.id).where(users.c.name == name)).scalar_one_or_none()
    if user_id is None:
        return False
    end_user_sessions(conn, int(user_id))
    conn.execute(delete(users).where(users.c.id == user_id))
    return True


def user_names(conn: Connection) -> list[tuple[str, str]]:
    """(name, creation time ISO) of every user, by name."""
    rows = conn.execute(select(users.c.name, users.c.created_at).order_by(users.c.name))
    return [(name, created.isoformat()) for name, created in rows]


def authenticate(conn: Connection, name: str, password: str) -> User | None:
    """The user when the password matches, else None."""
    row = conn.execute(
        select(users.c.id, users.c.name, users.c.password_hash).where(users.c.name == name)
    ).first()
    try:
        _hasher.verify(row.password_hash if row else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    if _hasher.check_needs_rehash(row.password_hash):
        conn.execute(
            update(users).where(users.c.id == row.id).values(password_hash=_hasher.hash(password))
        )
    return User(int(row.id), row.name)


def user_by_id(conn: Connection, user_id: int) -> User | None:
    row = conn.execute(select(users.c.id, users.c.name).where(users.c.id == user_id)).first()
    return None if row is None else User(int(row.id), row.name)
