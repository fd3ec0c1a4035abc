"""The user-agent store: ``delivery_visitors`` and ``agent_buckets``.

Ingestion (``msgtrack.ingest.agents``) writes them with set-wise statements per batch;
the breakdown-of-opens, browsers and operating-systems reports read only them (never the
tracking logs), grouped in SQL so a report's cost follows the number of hour buckets and
agents, not the number of events.

SQLAlchemy Core, identical on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select

from msgtrack.storage import localdays
from msgtrack.storage.pairs import per_delivery
from msgtrack.storage.reports import deliveries_in_range
from msgtrack.storage.schema import agent_buckets, delivery_visitors
from msgtrack.storage.upsert import add_to_counter_rows

IN_CHUNK = 500  # values per IN (...) list
BUCKET_KEYS = ("delivery_id", "bucket", "dimension", "name", "version", "device_class")
BUCKET_COUNTERS = ("events", "opens", "clicks", "visitors")
HANDHELD = ("mobile", "tablet")  # what "mobile only" keeps


@dataclass(frozen=True, order=True)
class Agent:
    """What one user agent was parsed into (names and major versions)."""

    browser: str
    browser_version: str
    os: str
    os_version: str
    device_class: str


@dataclass(frozen=True)
class VisitorFirst:
    """A visitor already counted in a delivery: when and as which agent."""

    at: datetime
    agent: Agent


def visitor_firsts(
    conn: Connection, keys: Iterable[tuple[int, str]]
) -> dict[tuple[int, str], VisitorFirst]:
    """The (delivery, visitor) pairs among ``keys`` already counted, with their first."""
    wanted = set(keys)
    if not wanted:
        return {}
    v = delivery_visitors
    out: dict[tuple[int, str], VisitorFirst] = {}
    for delivery_id, ids in per_delivery(wanted, IN_CHUNK):
        rows = conn.execute(
            select(
                v.c.delivery_id,
                v.c.visitor_id,
                v.c.first_at,
                v.c.browser,
                v.c.browser_version,
                v.c.os,
                v.c.os_version,
                v.c.device_class,
            ).where(v.c.delivery_id == delivery_id, v.c.visitor_id.in_(ids))
        )
        for d, vid, at, *agent in rows:
            out[(int(d), vid)] = VisitorFirst(at, Agent(*agent))
    return out


def _visitor_row(delivery_id: int, visitor_id: str, first: VisitorFirst) -> dict[str, Any]:
    a = first.agent
    return {
        "v_delivery": delivery_id,
        "v_visitor": visitor_id,
        "v_at": first.at,
        "v_browser": a.browser,
        "v_browser_version": a.browser_version,
        "v_os": a.os,
        "v_os_version": a.os_version,
        "v_device_class": a.device_class,
    }


def add_visitors(conn: Connection, rows: Mapping[tuple[int, str], VisitorFirst]) -> None:
    """Record new (delivery, visitor) pairs with their first event."""
    if not rows:
        return
    v = delivery_visitors
    conn.execute(
        insert(v).values(
            delivery_id=bindparam("v_delivery"),
            visitor_id=bindparam("v_visitor"),
            first_at=bindparam("v_at", type_=v.c.first_at.type),
            browser=bindparam("v_browser"),
            browser_version=bindparam("v_browser_version"),
            os=bindparam("v_os"),
            os_version=bindparam("v_os_version"),
            device_class=bindparam("v_device_class"),
        ),
        [_visitor_row(d, vid, first) for (d, vid), first in sorted(rows.items())],
    )


def move_visitors(conn: Connection, rows: Mapping[tuple[int, str], VisitorFirst]) -> None:
    """Replace the first event of counted visitors (an earlier one arrived)."""
    if not rows:
        return
    v = delivery_visitors
    conn.execute(
        update(v)
        .where(v.c.delivery_id == bindparam("v_delivery"), v.c.visitor_id == bindparam("v_visitor"))
        .values(
            first_at=bindparam("v_at", type_=v.c.first_at.type),
            browser=bindparam("v_browser"),
            browser_version=bindparam("v_browser_version"),
            os=bindparam("v_os"),
            os_version=bindparam("v_os_version"),
            device_class=bindparam("v_device_class"),
        ),
        [_visitor_row(d, vid, first) for (d, vid), first in sorted(rows.items())],
    )


def add_to_buckets(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add (events, opens, clicks, visitors) deltas to agent bucket rows, created at zero."""
    ordered = sorted(rows, key=lambda r: tuple(r[k] for k in BUCKET_KEYS))
    add_to_counter_rows(conn, agent_buckets, BUCKET_KEYS, BUCKET_COUNTERS, ordered)


# Whatever select goes in comes out, with its columns: a scope only adds WHERE clauses.
SelectT = TypeVar("SelectT", bound=Select)

# -- reports ---------------------------------------------------------------------------------


def _scoped(
    stmt: SelectT,
    delivery_id: int | None,
    since: datetime | None,
    until: datetime | None,
    dimension: str,
    handheld_only: bool,
) -> SelectT:
    """One delivery's rows, or those of the deliveries started in [since, until)."""
    b = agent_buckets
    if delivery_id is not None:
        stmt = stmt.where(b.c.delivery_id == delivery_id)
    else:
        stmt = stmt.where(b.c.delivery_id.in_(deliveries_in_range(since, until)))
    stmt = stmt.where(b.c.dimension == dimension)
    if handheld_only:
        stmt = stmt.where(b.c.device_class.in_(HANDHELD))
    return stmt


@dataclass(frozen=True)
class AgentTotals:
    name: str
    version: str
    device_class: str
    events: int
    opens: int
    clicks: int
    visitors: int


def agent_totals(
    conn: Connection,
    delivery_id: int | None,
    since: datetime | None,
    until: datetime | None,
    dimension: str,
    *,
    handheld_only: bool = False,
) -> list[AgentTotals]:
    """Sums per (name, version, device class) of one dimension over the scope."""
    b = agent_buckets
    stmt = select(
        b.c.name,
        b.c.version,
        b.c.device_class,
        func.sum(b.c.events),
        func.sum(b.c.opens),
        func.sum(b.c.clicks),
        func.sum(b.c.visitors),
    ).group_by(b.c.name, b.c.version, b.c.device_class)
    stmt = _scoped(stmt, delivery_id, since, until, dimension, handheld_only)
    return [
        AgentTotals(name, version, device, int(e), int(o), int(c), int(v))
        for name, version, device, e, o, c, v in conn.execute(stmt)
    ]


@dataclass(frozen=True)
class AgentDay:
    day: date  # local, in the zone asked for
    name: str
    events: int
    visitors: int


def agent_days(
    conn: Connection,
    delivery_id: int | None,
    since: datetime | None,
    until: datetime | None,
    dimension: str,
    tz: ZoneInfo,
) -> list[AgentDay]:
    """Sums per (local day, name) of one dimension over the scope, by day and name; an
    hour bucket counts in the local day of its start."""
    b = agent_buckets
    bounds = _scoped(
        select(func.min(b.c.bucket), func.max(b.c.bucket)),
        delivery_id,
        since,
        until,
        dimension,
        False,
    )
    first, last = conn.execute(bounds).one()
    if first is None:
        return []
    sums: dict[tuple[date, str], list[int]] = {}
    for day, start, end in localdays.day_groups(conn, b.c.bucket, first, last, tz):
        stmt = select(day, b.c.name, func.sum(b.c.events), func.sum(b.c.visitors))
        stmt = _scoped(stmt, delivery_id, since, until, dimension, False)
        if start is not None and end is not None:
            stmt = stmt.where(b.c.bucket >= start, b.c.bucket < end)
        for d, name, e, v in conn.execute(stmt.group_by(day, b.c.name)):
            key = (localdays.as_date(d), name)
            row = sums.setdefault(key, [0, 0])
            row[0] += int(e or 0)
            row[1] += int(v or 0)
    return [AgentDay(d, name, e, v) for (d, name), (e, v) in sorted(sums.items())]
