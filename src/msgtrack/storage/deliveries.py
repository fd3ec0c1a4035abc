"""The deliveries store: deliveries, their tracked URLs, and the analysis that turns a
draft into one message per targeted recipient.

The analysis is set-based (``INSERT … SELECT``) so a million recipients never pass
through Python, and it moves the delivery from 'draft' to 'prepared' with a
compare-and-set on the state, in the same transaction as the messages it creates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, case, false, func, insert, literal, or_, select, true, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.sql.elements import ColumnElement

from msgtrack.storage.schema import (
    Id,
    deliveries,
    delivery_indicators,
    messages,
    opt_outs,
    quarantines,
    recipients,
)
from msgtrack.storage.schema import (
    tracked_urls as tracked_urls_table,
)

#: While a delivery is in one of these states, its tracked URLs may still be edited.
EDITABLE_STATES = ("draft", "prepared")

LIST_COLUMNS = (
    deliveries.c.id,
    deliveries.c.name,
    deliveries.c.subject,
    deliveries.c.from_addr,
    deliveries.c.state,
    deliveries.c.typology,
    deliveries.c.created_at,
    deliveries.c.prepared_at,
    deliveries.c.started_at,
    deliveries.c.sent_at,
    deliveries.c.to_deliver,
)


# -- deliveries ----------------------------------------------------------------------


def insert_delivery(conn: Connection, values: Mapping[str, Any]) -> int:
    """A new delivery row; returns its id."""
    result = conn.execute(insert(deliveries).values(dict(values)).returning(deliveries.c.id))
    return int(result.scalar_one())


def get_delivery(conn: Connection, delivery_id: int) -> RowMapping | None:
    return conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).mappings().first()


def list_deliveries(conn: Connection) -> list[RowMapping]:
    """Every delivery, newest first, without its content."""
    return list(
        conn.execute(select(*LIST_COLUMNS).order_by(deliveries.c.id.desc())).mappings().all()
    )


def create_indicators(conn: Connection, delivery_id: int) -> None:
    """The zeroed counters row of a new delivery."""
    conn.execute(insert(delivery_indicators).values(delivery_id=delivery_id))


# -- tracked URLs --------------------------------------------------------------------


def insert_tracked_urls(
    conn: Connection, delivery_id: int, rows: Sequence[Mapping[str, Any]]
) -> None:
    """``rows``: ordinal, url, label, category, type, tracked."""
    if rows:
        conn.execute(
            insert(tracked_urls_table), [{**row, "delivery_id": delivery_id} for row in rows]
        )


def tracked_urls(conn: Connection, delivery_id: int) -> list[RowMapping]:
    """Every tracked URL of a delivery (links, then open, opt-out, mirror), by ordinal."""
    t = tracked_urls_table
    query = (
        select(
            t.c.id,
            t.c.delivery_id,
            t.c.ordinal,
            t.c.url,
            t.c.label,
            t.c.category,
            t.c.type,
            t.c.tracked,
        )
        .where(t.c.delivery_id == delivery_id)
        .order_by((t.c.ordinal < 0).asc(), func.abs(t.c.ordinal))
    )
    return list(conn.execute(query).mappings().all())


def set_tracked_url(
    conn: Connection,
    delivery_id: int,
    url_id: int,
    *,
    tracked: bool | None = None,
    label: str | None = None,
    category: str | None = None,
) -> bool:
    """Switch tracking or relabel a link, only while the delivery is draft or prepared.

    False when there is no such URL or the delivery has gone further. Tracking can be
    switched only for links of the content: the open, opt-out and mirror rows are what
    the tracking server answers on.
    """
    values: dict[str, Any] = {}
    if label is not None:
        values["label"] = label
    if category is not None:
        values["category"] = category
    if tracked is not None:
        values["tracked"] = tracked
    t = tracked_urls_table
    editable = (
        select(deliveries.c.id)
        .where(deliveries.c.id == delivery_id, deliveries.c.state.in_(EDITABLE_STATES))
        .scalar_subquery()
    )
    conditions = [t.c.id == url_id, t.c.delivery_id == delivery_id, t.c.delivery_id == editable]
    if tracked is not None:
        conditions.append(t.c.type == "click")
    if not values:
        found = conn.execute(select(t.c.id).where(*conditions)).first()
        return found is not None
    return conn.execute(update(t).where(*conditions).values(values)).rowcount == 1


# -- analysis ------------------------------------------------------------------------


def _domain_of(email: Any, dialect: str) -> ColumnElement[Any]:
    """The lower-cased part after the '@' (addresses are validated: exactly one '@')."""
    if dialect == "postgresql":
        return func.lower(func.split_part(email, "@", 2))
    return func.lower(func.substr(email, func.instr(email, "@") + 1))


def _exclusion() -> ColumnElement[Any]:
    """Per recipient: why the analysis excludes it ('quarantine', 'denylist', 'opt-out'),
    or NULL. The first cause wins, so each excluded recipient counts once."""
    return case(
        (quarantines.c.kind == "quarantine", literal("quarantine")),
        (quarantines.c.kind == "denylist", literal("denylist")),
        (opt_outs.c.recipient_id.is_not(None), literal("opt-out")),
        else_=None,
    )


def _target(now: datetime) -> Any:
    """Every recipient joined with what could exclude it."""
    active_quarantine = and_(
        quarantines.c.address == recipients.c.email_key,
        quarantines.c.released_at.is_(None),
        or_(quarantines.c.expires_at.is_(None), quarantines.c.expires_at > now),
    )
    return recipients.outerjoin(quarantines, active_quarantine).outerjoin(
        opt_outs, opt_outs.c.recipient_id == recipients.c.id
    )


def claim_preparation(conn: Connection, delivery_id: int, now: datetime) -> bool:
    """Compare-and-set 'draft' -> 'prepared'; False when another run got there first.

    Done first in the analysis transaction, so on PostgreSQL it also locks the row."""
    result = conn.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery_id, deliveries.c.state == "draft")
        .values(state="prepared", prepared_at=now)
    )
    return result.rowcount == 1


def create_messages(conn: Connection, delivery_id: int, *, has_html: bool, now: datetime) -> int:
    """One pending message per targeted recipient not excluded; returns how many."""
    r = recipients
    text_only: ColumnElement[Any] = (
        case((r.c.email_format == "text", true()), else_=false()) if has_html else true()
    )
    source = (
        select(
            literal(delivery_id, Id),
            r.c.id,
            r.c.email,
            _domain_of(r.c.email, conn.dialect.name),
            literal("pending", String),
            text_only,
        )
        .select_from(_target(now))
        .where(_exclusion().is_(None))
        .order_by(r.c.id)
    )
    conn.execute(
        insert(messages).from_select(
            ["delivery_id", "recipient_id", "email", "domain", "status", "text_only"], source
        )
    )
    # rowcount of INSERT … SELECT is not reported by every driver: count instead.
    return int(
        conn.execute(
            select(func.count()).select_from(messages).where(messages.c.delivery_id == delivery_id)
        ).scalar_one()
    )


def exclusion_counts(conn: Connection, now: datetime) -> dict[str, int]:
    """Recipients of the target by exclusion cause ('' for those not excluded)."""
    cause = _exclusion()
    rows = conn.execute(select(cause, func.count()).select_from(_target(now)).group_by(cause))
    return {(row[0] or ""): int(row[1]) for row in rows}


def count_text_only(conn: Connection, delivery_id: int) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(messages)
            .where(messages.c.delivery_id == delivery_id, messages.c.text_only == true())
        ).scalar_one()
    )


def record_analysis(
    conn: Connection, delivery_id: int, counts: Mapping[str, int], text_only: int
) -> None:
    """Keep the analysis on the delivery (``counts``: the ``deliveries`` column names)
    and ``text_only`` in its indicators."""
    conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(dict(counts)))
    conn.execute(
        update(delivery_indicators)
        .where(delivery_indicators.c.delivery_id == delivery_id)
        .values(text_only=text_only)
    )


def stored_text_only(conn: Connection, delivery_id: int) -> int:
    value = conn.execute(
        select(delivery_indicators.c.text_only).where(
            delivery_indicators.c.delivery_id == delivery_id
        )
    ).scalar_one_or_none()
    return int(value or 0)


# -- what the renderer needs ---------------------------------------------------------


def message_for_mirror(conn: Connection, message_id: int) -> RowMapping | None:
    """A message with its recipient's profile (None when unknown), for the mirror page."""
    m, r = messages, recipients
    query = (
        select(
            m.c.id,
            m.c.delivery_id,
            m.c.recipient_id,
            m.c.email,
            m.c.text_only,
            r.c.email.label("recipient_email"),
            r.c.first_name,
            r.c.last_name,
            r.c.email_format,
            r.c.fields,
        )
        .select_from(m.outerjoin(r, r.c.id == m.c.recipient_id))
        .where(m.c.id == message_id)
    )
    return conn.execute(query).mappings().first()
