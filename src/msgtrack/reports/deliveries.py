"""The deliveries list, a delivery's dashboard and its tracking tab, shaped for the API
(JSON, CSV) and the web pages alike: plain values, times in UTC ISO 8601."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine

from msgtrack.reports.indicators import connection
from msgtrack.reports.non_deliverables import breakdown
from msgtrack.reports.summary import counts as summary_counts
from msgtrack.reports.summary import rates as summary_rates
from msgtrack.storage import deliveries as delivery_store
from msgtrack.storage import reports as store

EDITABLE_STATES = ("draft", "prepared")
EVENT_TYPES = ("click", "open", "opt-out", "mirror", "web", "transaction")
MESSAGE_STATUSES = ("pending", "in_flight", "sent", "failed", "unknown")
EXPORT_PAGE = 1000


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _plain(row: Any) -> dict[str, Any]:
    return {k: _iso(v) if isinstance(v, datetime) else v for k, v in dict(row).items()}


def list_cursor(sort: str, row: dict[str, Any]) -> str:
    """Where the next page of the deliveries list starts: the row's sort key and id."""
    key = {"created": "created_at"}.get(sort, sort)
    body = json.dumps([row[key], row["id"]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


def read_list_cursor(sort: str, cursor: str) -> tuple[Any, int]:
    """ValueError when the cursor is not one of ours (for this sort)."""
    try:
        value, last_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        raise ValueError("not a deliveries cursor") from None
    if not isinstance(last_id, int) or isinstance(last_id, bool) or not 0 < last_id < 2**63:
        raise ValueError("not a deliveries cursor")
    if sort == "id":
        if value != last_id:
            raise ValueError("not a deliveries cursor")
    elif sort == "created":
        if not isinstance(value, str):
            raise ValueError("not a deliveries cursor")
        value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            raise ValueError("cursor without a time zone")
    elif not isinstance(value, str):
        raise ValueError("not a deliveries cursor")
    return value, last_id


def delivery_list(
    conn_or_engine: Connection | Engine,
    *,
    search: str = "",
    sort: str = "id",
    descending: bool = True,
    after: str | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the deliveries list and the cursor of the next one (None at the end);
    ValueError for a cursor that is not one of ours."""
    start = read_list_cursor(sort, after) if after else None
    with connection(conn_or_engine) as conn:
        rows = store.deliveries_page(
            conn, search=search, sort=sort, descending=descending, after=start, limit=limit + 1
        )
    page = [_plain(r) for r in rows[:limit]]
    return page, list_cursor(sort, page[-1]) if len(rows) > limit else None


def iter_delivery_list(
    engine: Engine, *, search: str, sort: str, descending: bool
) -> Iterator[dict[str, Any]]:
    """Every matching delivery, a page at a time (for exports)."""
    after = None
    while True:
        rows, after = delivery_list(
            engine, search=search, sort=sort, descending=descending, after=after, limit=EXPORT_PAGE
        )
        yield from rows
        if after is None:
            return


def delivery_dashboard(
    conn_or_engine: Connection | Engine,
    delivery_id: int,
    *,
    status: str | None = None,
    after: int | None = None,
    limit: int = 50,
) -> dict[str, Any] | None:
    """State, progress and counts by status, what went wrong (errors by reason and by
    domain, bounce rates, new quarantines), a page of messages and the tracked URLs.

    Every count comes from stored counters (``delivery_indicators``, ``domain_stats``,
    ``failure_stats``): the page never scans the delivery's messages, only reads the
    page of them it lists."""
    with connection(conn_or_engine) as conn:
        delivery = delivery_store.get_delivery(conn, delivery_id)
        if delivery is None:
            return None
        c = summary_counts(conn, delivery_id, None, None)
        counts = store.status_counts(
            conn, delivery_id, int(delivery.to_deliver), sent=c["sent"], failed=c["errors"]
        )
        failures = breakdown(conn, delivery_id)
        page = store.messages_page(
            conn, delivery_id, status=status, after_id=after, limit=limit + 1
        )
        urls = delivery_store.tracked_urls(conn, delivery_id)
    more = len(page) > limit
    page = page[:limit]
    rates = summary_rates(c)
    return {
        "id": delivery.id,
        "name": delivery.name,
        "subject": delivery.subject,
        "state": delivery.state,
        "created_at": _iso(delivery.created_at),
        "started_at": _iso(delivery.started_at),
        "sent_at": _iso(delivery.sent_at),
        "to_deliver": delivery.to_deliver,
        "editable": delivery.state in EDITABLE_STATES,
        "status_counts": counts,
        "progress": {
            "done": counts.get("sent", 0) + counts.get("failed", 0),
            "to_deliver": delivery.to_deliver,
            "percent": rates["progress"],
        },
        "bounces": {
            "processed": c["processed"],
            "success": c["success"],
            "errors": c["errors"],
            "hard_bounces": c["hard_bounces"],
            "soft_bounces": c["soft_bounces"],
            "hard_bounce_rate": rates["hard_bounce_rate"],
            "soft_bounce_rate": rates["soft_bounce_rate"],
            "complaints": c["complaints"],
            "complaint_rate": rates["complaint_rate"],
            "new_quarantines": c["new_quarantines"],
        },
        # The non-deliverables report's tables, without their expansions.
        "errors_by_reason": [
            {k: v for k, v in r.items() if k != "domains"} for r in failures["by_reason"]
        ],
        "errors_by_domain": [
            {k: v for k, v in r.items() if k != "reasons"} for r in failures["by_domain"]
        ],
        "messages": [_plain(m) for m in page],
        "next_after": page[-1]["id"] if more else None,
        "urls": [
            {
                "id": u.id,
                "ordinal": u.ordinal,
                "type": u.type,
                "url": u.url,
                "label": u.label,
                "category": u.category,
                "tracked": bool(u.tracked),
            }
            for u in urls
        ],
    }


def iter_messages(engine: Engine, delivery_id: int, status: str | None) -> Iterator[dict[str, Any]]:
    after: int | None = None
    while True:
        with engine.connect() as conn:
            rows = store.messages_page(
                conn, delivery_id, status=status, after_id=after, limit=EXPORT_PAGE
            )
        yield from (_plain(r) for r in rows)
        if len(rows) < EXPORT_PAGE:
            return
        after = rows[-1]["id"]


def encode_cursor(at: datetime, event_id: int) -> str:
    return f"{at.isoformat()}~{event_id}"


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """ValueError when the cursor is not one of ours."""
    at, _, event_id = cursor.rpartition("~")
    parsed = datetime.fromisoformat(at)
    if parsed.tzinfo is None:
        raise ValueError("cursor without a time zone")
    return parsed, int(event_id)


def delivery_tracking(
    conn_or_engine: Connection | Engine,
    delivery_id: int,
    *,
    event_type: str | None = None,
    before: tuple[datetime, int] | None = None,
    limit: int = 50,
) -> dict[str, Any] | None:
    """A page of the delivery's tracking events, newest first, and the next cursor."""
    with connection(conn_or_engine) as conn:
        delivery = delivery_store.get_delivery(conn, delivery_id)
        if delivery is None:
            return None
        rows = store.tracking_page(
            conn, delivery_id, event_type=event_type, before=before, limit=limit + 1
        )
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "delivery_id": delivery.id,
        "name": delivery.name,
        "events": [_plain(r) for r in rows],
        "next": encode_cursor(rows[-1]["at"], rows[-1]["id"]) if more else None,
    }


def iter_tracking(
    engine: Engine, delivery_id: int, event_type: str | None
) -> Iterator[dict[str, Any]]:
    before: tuple[datetime, int] | None = None
    while True:
        with engine.connect() as conn:
            rows = store.tracking_page(
                conn, delivery_id, event_type=event_type, before=before, limit=EXPORT_PAGE
            )
        yield from (_plain(r) for r in rows)
        if len(rows) < EXPORT_PAGE:
            return
        before = (rows[-1]["at"], rows[-1]["id"])


def recipient_profile(
    conn_or_engine: Connection | Engine,
    email: str,
    *,
    limit: int = 100,
    clicks_before: str | None = None,
) -> dict[str, Any] | None:
    """The recipient, their latest messages and a page of their clicks (the tracking
    tab), newest first, with the cursor of the next, older page (``clicks_next``);
    ValueError for a cursor that is not one of ours."""
    from msgtrack.reports.recipients import click_json, recipient_clicks

    before = decode_cursor(clicks_before) if clicks_before else None
    with connection(conn_or_engine) as conn:
        recipient = store.recipient_by_email(conn, email)
        if recipient is None:
            return None
        messages = store.recipient_messages(conn, recipient["id"], limit)
        clicks = recipient_clicks(conn, email, before=before, limit=limit + 1) or []
    last = clicks[limit - 1] if len(clicks) > limit else None
    return {
        **_plain(recipient),
        "messages": [_plain(m) for m in messages],
        "clicks": [click_json(c) for c in clicks[:limit]],
        "clicks_next": encode_cursor(last.clicked_at, last.id) if last else None,
    }


def iter_recipient_clicks(engine: Engine, email: str) -> Iterator[dict[str, Any]]:
    """Every click of a recipient, newest first, a page at a time (for exports)."""
    from msgtrack.reports.recipients import click_json, recipient_clicks

    before = None
    while True:
        page = recipient_clicks(engine, email, before=before, limit=EXPORT_PAGE) or []
        yield from (click_json(c) for c in page)
        if len(page) < EXPORT_PAGE:
            return
        before = (page[-1].clicked_at, page[-1].id)
