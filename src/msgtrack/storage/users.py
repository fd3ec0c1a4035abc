"""Users of the web UI: a name and an argon2 hash of the password, nothing else.

Hashing lives here with the table so no other module ever sees a stored hash.
"""

from __future__ import annotations

from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from msgtrack.storage.schema import users
from msgtrack.storage.types import utcnow

_hasher = PasswordHasher()
# Verified when the name is unknown, so a wrong name costs as much time as a wrong password.
_DUMMY_HASH = _hasher.hash("msgtrack-no-such-user")


@dataclass(frozen=True)
class User:
    id: int
    name: str


def set_user(conn: Connection, name: str, password: str) -> None:
    """Create the user, or set a new password when it exists."""
    password_hash = _hasher.hash(password)
    changed = conn.execute(
        update(users).where(users.c.name == name).values(password_hash=password_hash)
    ).rowcount
    if not changed:
        conn.execute(
            insert(users).values(name=name, password_hash=password_hash, created_at=utcnow())
        )


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
