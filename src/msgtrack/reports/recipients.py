"""The recipient tracking tab: every click of one recipient, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine

from msgtrack.reports.indicators import connection
from msgtrack.storage import tracking as store


def recipient_clicks(
    conn_or_engine: Connection | Engine,
    email: str,
    *,
    before: tuple[datetime, int] | None = None,
    limit: int | None = None,
) -> list[store.ClickRow] | None:
    """All the recipient's clicks, or the ``limit`` older than ``before`` (at, id);
    None when no recipient has that email (compared case-insensitively)."""
    with connection(conn_or_engine) as conn:
        recipient_id = store.recipient_id_by_email(conn, email)
        if recipient_id is None:
            return None
        return store.clicks_of_recipient(conn, recipient_id, before=before, limit=limit)


def click_json(c: store.ClickRow) -> dict[str, Any]:
    return {
        "url": c.url,
        "label": c.label,
        "clicked_at": c.clicked_at.isoformat(),
        "delivery_id": c.delivery_id,
        "delivery_name": c.delivery_name,
    }


def recipient_tracking(
    conn_or_engine: Connection | Engine, email: str
) -> list[dict[str, Any]] | None:
    """One object per click across the deliveries still present (opens, opt-out and
    mirror visits are not clicks); ``url`` is exactly where the click redirected.
    None when no recipient has that email (compared case-insensitively)."""
    clicks = recipient_clicks(conn_or_engine, email)
    return None if clicks is None else [click_json(c) for c in clicks]
