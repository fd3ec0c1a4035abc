"""Tracked URLs as the tracking server needs them, when no snapshot was published.

The tracking server normally reads a delivery's tracked URLs from its snapshot file
(``tracking.snapshot``); this is its database fallback, read off the event loop.
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.engine import Engine

from msgtrack.storage.schema import tracked_urls


class TrackedUrlRow(NamedTuple):
    id: int
    delivery_id: int
    type: str
    url: str
    label: str
    tracked: bool


def tracked_urls_of_delivery(engine: Engine, delivery_id: int) -> list[TrackedUrlRow]:
    """Every tracked URL of a delivery (links, open, opt-out, mirror)."""
    t = tracked_urls
    query = select(t.c.id, t.c.delivery_id, t.c.type, t.c.url, t.c.label, t.c.tracked).where(
        t.c.delivery_id == delivery_id
    )
    with engine.connect() as conn:
        return [
            TrackedUrlRow(r.id, r.delivery_id, r.type, r.url, r.label or "", bool(r.tracked))
            for r in conn.execute(query)
        ]
