"""API tokens: only their SHA-256 is stored, the token itself is shown once at creation."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from msgtrack.storage.schema import api_tokens
from msgtrack.storage.types import utcnow


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_api_token(conn: Connection, name: str = "default") -> str:
    token = "mt_" + secrets.token_urlsafe(32)
    conn.execute(insert(api_tokens).values(token_hash=_hash(token), name=name, created_at=utcnow()))
    return token


def api_token_exists(conn: Connection, token: str) -> bool:
    row = conn.execute(
        select(api_tokens.c.id).where(api_tokens.c.token_hash == _hash(token))
    ).first()
    return row is not None
