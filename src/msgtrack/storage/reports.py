"""Read-only queries behind the web screens: lists that page with keysets, counts that
group in the database. Every list is bounded by its ``limit``; nothing here scans a
table without an index on its filter."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, RowMapping

from msgtrack.storage.keyset import beyond
from msgtrack.storage.schema import (
    deliveries,
    delivery_indicators,
    domain_stats,
    messages,
    recipients,
    tracked_urls,
    tracking_logs,
)

DELIVERY_SORTS = {
    "id": deliveries.c.id,
    "name": deliveries.c.name,
    "created": deliveries.c.created_at,
    "state": deliveries.c.state,
}


def deliveries_page(
    conn: Connection,
    *,
    search: str,
    sort: str,
    descending: bool,
    after: tuple[Any, int] | None,
    limit: int,
) -> list[RowMapping]:
    """One page of deliveries with their main counters; ``search`` matches the name.
    A keyset on (sort key, id): ``after`` is the last row's (key, id) of the page before,
    so a page deep in the list costs what the first does (no OFFSET)."""
    d, i = deliveries, delivery_indicators
    key = DELIVERY_SORTS[sort]
    stmt = select(
        d.c.id,
        d.c.name,
        d.c.state,
        d.c.created_at,
        d.c.sent_at,
        d.c.to_deliver,
        func.coalesce(i.c.success, 0).label("success"),
        func.coalesce(i.c.errors, 0).label("errors"),
        func.coalesce(i.c.recipient_opens, 0).label("recipient_opens"),
        func.coalesce(i.c.total_clicks, 0).label("total_clicks"),
    ).select_from(d.outerjoin(i, i.c.delivery_id == d.c.id))
    if search:
        escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(func.lower(d.c.name).like(f"%{escaped}%", escape="\\"))
    if after is not None:
        value, last_id = after
        stmt = stmt.where(beyond(key, d.c.id, value, last_id, descending=descending))
    order = [key.desc(), d.c.id.desc()] if descending else [key.asc(), d.c.id.asc()]
    return list(conn.execute(stmt.order_by(*order).limit(limit)).mappings())


# The statuses the dashboard counts, in the order it shows them.
STATUSES = ("pending", "in_flight", "sent", "failed", "unknown")


def status_counts(
    conn: Connection,
    delivery_id: int,
    to_deliver: int,
    *,
    sent: int | None = None,
    failed: int | None = None,
) -> dict[str, int]:
    """Messages of a delivery by status (the non-zero ones), from its counters rather
    than a scan of its messages (a delivery may have a million): ``sent`` (seeds
    included) is its domains' sends, ``failed`` its errors; ``in_flight`` and
    ``unknown`` are counted on the (delivery, status) index, which holds few of them
    (at most a send run's window each time one stopped); ``pending`` is the rest of
    the messages to deliver. ``sent`` and ``failed``, when the caller read them already."""
    if sent is None:
        sent = conn.execute(
            select(func.coalesce(func.sum(domain_stats.c.sent), 0)).where(
                domain_stats.c.delivery_id == delivery_id
            )
        ).scalar_one()
    if failed is None:
        failed = conn.execute(
            select(delivery_indicators.c.errors).where(
                delivery_indicators.c.delivery_id == delivery_id
            )
        ).scalar_one_or_none()
    m = messages
    few = {
        str(status): int(n)
        for status, n in conn.execute(
            select(m.c.status, func.count())
            .where(m.c.delivery_id == delivery_id, m.c.status.in_(("in_flight", "unknown")))
            .group_by(m.c.status)
        )
    }
    counts = {
        "sent": int(sent or 0),
        "failed": int(failed or 0),
        "in_flight": int(few.get("in_flight", 0)),
        "unknown": int(few.get("unknown", 0)),
    }
    counts["pending"] = max(to_deliver - sum(counts.values()), 0)
    return {s: counts[s] for s in STATUSES if counts[s]}


def messages_page(
    conn: Connection, delivery_id: int, *, status: str | None, after_id: int | None, limit: int
) -> list[RowMapping]:
    """Messages of a delivery in id order, the ``limit`` after ``after_id``.

    Served by the (delivery, status) index: one status is a range of it in id order;
    all of them are the first ``limit`` of each status, merged. (Ordering the delivery's
    messages by id without the status made SQLite sort all of them: a quarter of a
    second for a million.)"""
    m = messages
    columns = (
        m.c.id,
        m.c.email,
        m.c.status,
        m.c.failure_type,
        m.c.failure_code,
        m.c.failure_reason,
        m.c.attempts,
        m.c.sent_at,
        m.c.open_count,
        m.c.click_count,
    )
    found: list[RowMapping] = []
    for one in [status] if status else STATUSES:
        stmt = select(*columns).where(m.c.delivery_id == delivery_id, m.c.status == one)
        if after_id is not None:
            stmt = stmt.where(m.c.id > after_id)
        found += conn.execute(stmt.order_by(m.c.id).limit(limit)).mappings()
    return sorted(found, key=lambda r: int(r["id"]))[:limit]


def tracking_page(
    conn: Connection,
    delivery_id: int,
    *,
    event_type: str | None,
    before: tuple[datetime, int] | None,
    limit: int,
) -> list[RowMapping]:
    """Tracking events of a delivery newest first, the ``limit`` before ``before``
    (a keyset on (at, id), served by the (delivery_id, at) index)."""
    t, u, r = tracking_logs, tracked_urls, recipients
    stmt = (
        select(
            t.c.id,
            t.c.at,
            t.c.type,
            func.coalesce(t.c.url, u.c.url).label("url"),
            func.coalesce(u.c.label, "").label("label"),
            r.c.email,
            t.c.user_agent,
            t.c.ip,
        )
        .select_from(
            t.outerjoin(u, u.c.id == t.c.tracked_url_id).outerjoin(r, r.c.id == t.c.recipient_id)
        )
        .where(t.c.delivery_id == delivery_id)
    )
    if event_type:
        stmt = stmt.where(t.c.type == event_type)
    if before is not None:
        at, last_id = before
        stmt = stmt.where(beyond(t.c.at, t.c.id, at, last_id, descending=True))
    return list(conn.execute(stmt.order_by(t.c.at.desc(), t.c.id.desc()).limit(limit)).mappings())


def recipient_by_email(conn: Connection, email: str) -> RowMapping | None:
    r = recipients
    return (
        conn.execute(
            select(
                r.c.id,
                r.c.email,
                r.c.first_name,
                r.c.last_name,
                r.c.email_format,
                r.c.created_at,
                r.c.updated_at,
            ).where(r.c.email_key == email.strip().lower())
        )
        .mappings()
        .first()
    )


def recipient_messages(conn: Connection, recipient_id: int, limit: int) -> list[RowMapping]:
    """The recipient's messages, newest first, with the opens and clicks counted on each."""
    m, d = messages, deliveries
    return list(
        conn.execute(
            select(
                m.c.delivery_id,
                d.c.name.label("delivery_name"),
                m.c.status,
                m.c.sent_at,
                m.c.open_count,
                m.c.click_count,
            )
            .select_from(m.join(d, d.c.id == m.c.delivery_id))
            .where(m.c.recipient_id == recipient_id)
            .order_by(m.c.id.desc())
            .limit(limit)
        ).mappings()
    )


# -- global reports: deliveries started in a date range ------------------------------------


def deliveries_in_range(since: datetime | None, until: datetime | None) -> Any:
    """A select of the ids of deliveries whose sending started (or, unsent, that were
    created) in [since, until): what a global report sums over."""
    d = deliveries
    started = func.coalesce(d.c.started_at, d.c.created_at)
    stmt = select(d.c.id).where(d.c.typology != "proof")
    if since is not None:
        stmt = stmt.where(started >= since)
    if until is not None:
        stmt = stmt.where(started < until)
    return stmt


def indicator_totals(
    conn: Connection, since: datetime | None, until: datetime | None
) -> dict[str, Any]:
    """Sums of every stored counter, and of to_deliver, over the deliveries in range."""
    i, d = delivery_indicators, deliveries
    ids = deliveries_in_range(since, until)
    counters = [func.coalesce(func.sum(c), 0).label(c.name) for c in i.c if c.name != "delivery_id"]
    row = conn.execute(select(*counters).where(i.c.delivery_id.in_(ids))).mappings().one()
    to_deliver = conn.execute(
        select(func.coalesce(func.sum(d.c.to_deliver), 0)).where(d.c.id.in_(ids))
    ).scalar_one()
    deliveries_count = conn.execute(select(func.count()).select_from(ids.subquery())).scalar_one()
    return {**row, "to_deliver": int(to_deliver), "deliveries": int(deliveries_count)}
