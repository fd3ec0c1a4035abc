"""The tracking store: tracking logs, unsubscriptions, visitors, aggregates, checkpoints.

Every statement ingestion, recompute and the tracking reports need is here, named by
what it answers. A few read or touch rows of other stores (messages' aggregate columns,
tracked URLs, deliveries' names, the global opt-out) because they are part of loading
events; they stay narrow so the other stores keep their own rules.

Written once with SQLAlchemy Core; identical on SQLite and PostgreSQL. Upserts use each
dialect's ``INSERT ... ON CONFLICT``, which both backends share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection

from msgtrack.storage import schema, send_stats
from msgtrack.storage.keyset import beyond
from msgtrack.storage.pairs import per_delivery
from msgtrack.storage.schema import (
    deliveries,
    delivery_indicators,
    delivery_persons,
    domain_aliases,
    domain_stats,
    ingest_checkpoints,
    ingest_rejects,
    messages,
    opt_outs,
    recipients,
    tracked_urls,
    tracking_logs,
    unsubscriptions,
    visitors,
)
from msgtrack.storage.types import utcnow
from msgtrack.storage.upsert import insert_ignoring_conflicts, upsert

# Counters of delivery_indicators that events move (the rest come from sending, analysis
# and bounces).
EVENT_COUNTERS = (
    "recipient_opens",
    "total_opens",
    "recipient_clicks",
    "person_clicks",
    "total_clicks",
    "opt_outs",
    "unsubscriptions",
    "mirror_views",
    "visited_pages",
    "transactions",
    "amount",
    "articles",
)

# Bound IN lists: SQLite caps variables per statement, PostgreSQL plans better on less.
IN_CHUNK = 2000


def _chunks(values: Sequence[Any], size: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


# -- the ingestion lock (PostgreSQL part) --------------------------------------------


def try_advisory_lock(conn: Connection, key: int) -> bool:
    """Take a session-level advisory lock without waiting; True when taken."""
    return bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())


def advisory_unlock(conn: Connection, key: int) -> None:
    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


# -- checkpoints and rejects ---------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    segment: str
    offset: int
    done: bool


def checkpoints(conn: Connection) -> dict[str, Checkpoint]:
    """Every segment's ingestion progress, by segment name."""
    t = ingest_checkpoints
    rows = conn.execute(select(t.c.segment, t.c["offset"], t.c.done))
    return {r.segment: Checkpoint(r.segment, int(r.offset), bool(r.done)) for r in rows}


def checkpoint(conn: Connection, segment: str) -> Checkpoint | None:
    t = ingest_checkpoints
    r = conn.execute(
        select(t.c.segment, t.c["offset"], t.c.done).where(t.c.segment == segment)
    ).first()
    return None if r is None else Checkpoint(r.segment, int(r.offset), bool(r.done))


def save_checkpoint(conn: Connection, segment: str, offset: int, done: bool) -> None:
    upsert(
        conn,
        ingest_checkpoints,
        {"segment": segment, "offset": offset, "done": done, "updated_at": utcnow()},
        ["segment"],
    )


def loaded_offsets(conn: Connection, segment: str, lo: int, hi: int) -> set[int]:
    """Offsets in [lo, hi] of ``segment`` already loaded as events or unsubscriptions."""
    found: set[int] = set()
    for t in (tracking_logs, unsubscriptions):
        rows = conn.execute(
            select(t.c["offset"]).where(t.c.segment == segment, t.c["offset"].between(lo, hi))
        )
        found.update(int(r[0]) for r in rows)
    return found


def rejected_offsets(conn: Connection, segment: str, lo: int, hi: int) -> set[int]:
    t = ingest_rejects
    rows = conn.execute(
        select(t.c["offset"]).where(t.c.segment == segment, t.c["offset"].between(lo, hi))
    )
    return {int(r[0]) for r in rows}


def add_rejects(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows of (segment, offset, reason); ``at`` is now."""
    if rows:
        now = utcnow()
        conn.execute(insert(ingest_rejects), [{**r, "at": now} for r in rows])


def rejects_of(conn: Connection, segment: str) -> list[tuple[int, str]]:
    """(offset, reason) of a segment's rejected lines, in file order."""
    t = ingest_rejects
    rows = conn.execute(
        select(t.c["offset"], t.c.reason).where(t.c.segment == segment).order_by(t.c["offset"])
    )
    return [(int(r[0]), str(r[1])) for r in rows]


# -- what events refer to -------------------------------------------------------------


@dataclass(frozen=True)
class MessageState:
    """A message as aggregation sees it."""

    id: int
    delivery_id: int
    recipient_id: int | None
    domain: str
    first_event_at: datetime | None
    first_click_at: datetime | None


@dataclass(frozen=True)
class TrackedUrlRef:
    id: int
    delivery_id: int
    url: str
    type: str


def existing_deliveries(conn: Connection, ids: Iterable[int]) -> set[int]:
    found: set[int] = set()
    for chunk in _chunks(sorted(set(ids))):
        found.update(
            int(r[0])
            for r in conn.execute(select(deliveries.c.id).where(deliveries.c.id.in_(chunk)))
        )
    return found


def all_delivery_ids(conn: Connection) -> list[int]:
    return [int(r[0]) for r in conn.execute(select(deliveries.c.id).order_by(deliveries.c.id))]


def message_states(conn: Connection, ids: Iterable[int]) -> dict[int, MessageState]:
    m = messages
    out: dict[int, MessageState] = {}
    for chunk in _chunks(sorted(set(ids))):
        rows = conn.execute(
            select(
                m.c.id,
                m.c.delivery_id,
                m.c.recipient_id,
                m.c.domain,
                m.c.first_event_at,
                m.c.first_click_at,
            ).where(m.c.id.in_(chunk))
        )
        for r in rows:
            out[int(r.id)] = MessageState(
                int(r.id),
                int(r.delivery_id),
                r.recipient_id,
                r.domain,
                r.first_event_at,
                r.first_click_at,
            )
    return out


def tracked_url_refs(conn: Connection, ids: Iterable[int]) -> dict[int, TrackedUrlRef]:
    t = tracked_urls
    out: dict[int, TrackedUrlRef] = {}
    for chunk in _chunks(sorted(set(ids))):
        rows = conn.execute(
            select(t.c.id, t.c.delivery_id, t.c.url, t.c.type).where(t.c.id.in_(chunk))
        )
        for r in rows:
            out[int(r.id)] = TrackedUrlRef(int(r.id), int(r.delivery_id), r.url, r.type)
    return out


# -- loading events ---------------------------------------------------------------------


# Columns of a tracking_logs row as ingestion builds it, in COPY / VALUES order.
TRACKING_LOG_COLUMNS = (
    "segment",
    "offset",
    "delivery_id",
    "message_id",
    "recipient_id",
    "tracked_url_id",
    "type",
    "visitor_id",
    "at",
    "ip",
    "user_agent",
    "url",
    "amount",
    "articles",
)


def add_tracking_logs(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert loaded events in bulk: COPY on PostgreSQL, the driver's executemany on
    SQLite. Both skip SQLAlchemy's per-parameter processing, which was 40 % of an
    ingestion pass (benchmarks/RESULTS.md)."""
    if not rows:
        return
    names = ", ".join(f'"{c}"' for c in TRACKING_LOG_COLUMNS)
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cur, cur.copy(f"COPY tracking_logs ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[c] for c in TRACKING_LOG_COLUMNS])
        return
    at = TRACKING_LOG_COLUMNS.index("at")
    values = []
    for row in rows:
        value = [row[c] for c in TRACKING_LOG_COLUMNS]
        value[at] = _sqlite_time(value[at])
        values.append(tuple(value))
    marks = ", ".join("?" * len(TRACKING_LOG_COLUMNS))
    conn.exec_driver_sql(f"INSERT INTO tracking_logs ({names}) VALUES ({marks})", values)


def _sqlite_time(value: datetime) -> str:
    """A UTC time as UTCDateTime stores it on SQLite (SQLAlchemy's DATETIME format)."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def add_unsubscriptions(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert the rows; the (delivery, recipient) pairs unsubscribing for the first time
    count in their domain's send-side counters."""
    if rows:
        pairs = {
            (r["delivery_id"], r["recipient_id"]) for r in rows if r["recipient_id"] is not None
        }
        first = pairs - unsubscribed_pairs(conn, pairs)
        conn.execute(insert(unsubscriptions), list(rows))
        send_stats.add_unsubscribed(conn, first)


def unsubscribed_pairs(conn: Connection, pairs: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    """Which (delivery, recipient) pairs already have an unsubscription."""
    wanted = set(pairs)
    if not wanted:
        return set()
    u = unsubscriptions
    found: set[tuple[int, int]] = set()
    rids = sorted({r for _, r in wanted})
    for chunk in _chunks(rids):
        rows = conn.execute(
            select(u.c.delivery_id, u.c.recipient_id).distinct().where(u.c.recipient_id.in_(chunk))
        )
        found.update((int(d), int(r)) for d, r in rows if (int(d), int(r)) in wanted)
    return found


def add_opt_outs(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Record the global opt-out of recipients; an existing opt-out stays (first wins)."""
    insert_ignoring_conflicts(conn, opt_outs, rows)


@dataclass(frozen=True)
class VisitorState:
    id: str
    recipient_id: int | None
    first_seen_at: datetime
    last_seen_at: datetime
    user_agent: str | None


def visitor_states(conn: Connection, ids: Iterable[str]) -> dict[str, VisitorState]:
    v = visitors
    out: dict[str, VisitorState] = {}
    for chunk in _chunks(sorted(set(ids))):
        rows = conn.execute(
            select(
                v.c.id, v.c.recipient_id, v.c.first_seen_at, v.c.last_seen_at, v.c.user_agent
            ).where(v.c.id.in_(chunk))
        )
        for r in rows:
            out[r.id] = VisitorState(
                r.id, r.recipient_id, r.first_seen_at, r.last_seen_at, r.user_agent
            )
    return out


def add_visitors(conn: Connection, rows: Sequence[VisitorState]) -> None:
    if rows:
        conn.execute(
            insert(visitors),
            [
                {
                    "id": r.id,
                    "recipient_id": r.recipient_id,
                    "first_seen_at": r.first_seen_at,
                    "last_seen_at": r.last_seen_at,
                    "user_agent": r.user_agent,
                }
                for r in rows
            ],
        )


def update_visitors(conn: Connection, rows: Sequence[VisitorState]) -> None:
    if not rows:
        return
    v = visitors
    stmt = (
        update(v)
        .where(v.c.id == bindparam("v_id"))
        .values(
            recipient_id=bindparam("v_recipient_id"),
            first_seen_at=bindparam("v_first", type_=v.c.first_seen_at.type),
            last_seen_at=bindparam("v_last", type_=v.c.last_seen_at.type),
            user_agent=bindparam("v_ua"),
        )
    )
    conn.execute(
        stmt,
        [
            {
                "v_id": r.id,
                "v_recipient_id": r.recipient_id,
                "v_first": r.first_seen_at,
                "v_last": r.last_seen_at,
                "v_ua": r.user_agent,
            }
            for r in rows
        ],
    )


# -- aggregates ---------------------------------------------------------------------------


def update_message_aggregates(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows of (id, first_event_at, first_click_at, opens, clicks): firsts are set,
    counts are added."""
    if not rows:
        return
    m = messages
    stmt = (
        update(m)
        .where(m.c.id == bindparam("m_id"))
        .values(
            first_event_at=bindparam("m_first_event", type_=m.c.first_event_at.type),
            first_click_at=bindparam("m_first_click", type_=m.c.first_click_at.type),
            open_count=m.c.open_count + bindparam("m_opens"),
            click_count=m.c.click_count + bindparam("m_clicks"),
        )
    )
    conn.execute(
        stmt,
        [
            {
                "m_id": r["id"],
                "m_first_event": r["first_event_at"],
                "m_first_click": r["first_click_at"],
                "m_opens": r["opens"],
                "m_clicks": r["clicks"],
            }
            for r in rows
        ],
    )


def delivery_person_firsts(
    conn: Connection, pairs: Iterable[tuple[int, str]]
) -> dict[tuple[int, str], datetime]:
    """First click time of the (delivery, visitor) pairs already counted as persons."""
    wanted = set(pairs)
    if not wanted:
        return {}
    p = delivery_persons
    out: dict[tuple[int, str], datetime] = {}
    for delivery_id, ids in per_delivery(wanted, IN_CHUNK):
        rows = conn.execute(
            select(p.c.delivery_id, p.c.visitor_id, p.c.first_click_at).where(
                p.c.delivery_id == delivery_id, p.c.visitor_id.in_(ids)
            )
        )
        for d, v, at in rows:
            out[(int(d), v)] = at
    return out


def add_delivery_persons(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(insert(delivery_persons), list(rows))


def move_delivery_person_firsts(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows of (delivery_id, visitor_id, first_click_at): an earlier first click."""
    if not rows:
        return
    p = delivery_persons
    stmt = (
        update(p)
        .where(p.c.delivery_id == bindparam("p_delivery"), p.c.visitor_id == bindparam("p_visitor"))
        .values(first_click_at=bindparam("p_at", type_=p.c.first_click_at.type))
    )
    conn.execute(
        stmt,
        [
            {
                "p_delivery": r["delivery_id"],
                "p_visitor": r["visitor_id"],
                "p_at": r["first_click_at"],
            }
            for r in rows
        ],
    )


def ensure_indicator_rows(conn: Connection, delivery_ids: Iterable[int]) -> None:
    insert_ignoring_conflicts(
        conn, delivery_indicators, [{"delivery_id": d} for d in sorted(set(delivery_ids))]
    )


def add_to_indicators(conn: Connection, deltas: Mapping[int, Mapping[str, float]]) -> None:
    """Add per-delivery deltas to the event counters (rows must exist)."""
    if not deltas:
        return
    t = delivery_indicators
    stmt = (
        update(t)
        .where(t.c.delivery_id == bindparam("i_delivery"))
        .values({c: t.c[c] + bindparam(f"i_{c}") for c in EVENT_COUNTERS})
    )
    conn.execute(
        stmt,
        [
            {"i_delivery": d, **{f"i_{c}": delta.get(c, 0) for c in EVENT_COUNTERS}}
            for d, delta in sorted(deltas.items())
        ],
    )


def ensure_domain_rows(conn: Connection, keys: Iterable[tuple[int, str]]) -> None:
    insert_ignoring_conflicts(
        conn, domain_stats, [{"delivery_id": d, "domain": dom} for d, dom in sorted(set(keys))]
    )


def add_to_domain_stats(
    conn: Connection, deltas: Mapping[tuple[int, str], tuple[int, int]]
) -> None:
    """Add (opens, clicks) to (delivery, domain) rows (rows must exist)."""
    if not deltas:
        return
    t = domain_stats
    stmt = (
        update(t)
        .where(t.c.delivery_id == bindparam("s_delivery"), t.c.domain == bindparam("s_domain"))
        .values(opens=t.c.opens + bindparam("s_opens"), clicks=t.c.clicks + bindparam("s_clicks"))
    )
    conn.execute(
        stmt,
        [
            {"s_delivery": d, "s_domain": dom, "s_opens": o, "s_clicks": c}
            for (d, dom), (o, c) in sorted(deltas.items())
        ],
    )


# -- recompute -------------------------------------------------------------------------------


def lock_indicator_row(conn: Connection, delivery_id: int) -> None:
    """Create and lock a delivery's counters row, so a concurrent send's ``+= 1`` waits
    for the rebuild instead of being lost in it (SQLite's write lock already does)."""
    ensure_indicator_rows(conn, [delivery_id])
    stmt = select(delivery_indicators.c.delivery_id).where(
        delivery_indicators.c.delivery_id == delivery_id
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    conn.execute(stmt)


def refresh_visitor_statistics(conn: Connection) -> None:
    """PostgreSQL: ANALYZE the visitor tables a rebuild refills (it sees the rebuild's
    own rows). Planned from statistics taken when a delivery had few visitors, each
    (delivery, visitor) IN (...) lookup reads every visitor of the delivery instead of
    the 500 it asks for. SQLite needs nothing (its planner takes the primary key)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ANALYZE delivery_visitors, delivery_persons")


def reset_event_aggregates(conn: Connection, delivery_id: int) -> None:
    """Forget everything events added to a delivery: message firsts and counts, persons,
    domain opens and clicks, event counters."""
    m = messages
    conn.execute(
        update(m)
        .where(m.c.delivery_id == delivery_id)
        .values(first_event_at=None, first_click_at=None, open_count=0, click_count=0)
    )
    conn.execute(delete(delivery_persons).where(delivery_persons.c.delivery_id == delivery_id))
    conn.execute(
        update(domain_stats)
        .where(domain_stats.c.delivery_id == delivery_id)
        .values(opens=0, clicks=0)
    )
    conn.execute(
        update(delivery_indicators)
        .where(delivery_indicators.c.delivery_id == delivery_id)
        .values({c: 0 for c in EVENT_COUNTERS})
    )
    # The time buckets (event_buckets): recompute replays every event into them.
    buckets = schema.event_buckets
    conn.execute(delete(buckets).where(buckets.c.delivery_id == delivery_id))
    # User agents (delivery_visitors, agent_buckets): replayed likewise.
    for table in (schema.delivery_visitors, schema.agent_buckets):
        conn.execute(delete(table).where(table.c.delivery_id == delivery_id))


@dataclass(frozen=True)
class SendCounts:
    success: int
    errors: int
    text_only: int
    sent_by_domain: dict[str, int]


def send_counts(conn: Connection, delivery_id: int) -> SendCounts:
    """What sending and analysis counted, recounted from the messages themselves:
    success = sent and not seed, errors = failed, text_only = text-only messages,
    per-domain sends = sent messages (seeds included, as sending counts them)."""
    m = messages
    one = func.count()
    success, errors, text_only = conn.execute(
        select(
            func.count().filter(and_(m.c.status == "sent", m.c.seed.is_(False))),
            func.count().filter(m.c.status == "failed"),
            func.count().filter(m.c.text_only.is_(True)),
        ).where(m.c.delivery_id == delivery_id)
    ).one()
    by_domain = conn.execute(
        select(m.c.domain, one)
        .where(m.c.delivery_id == delivery_id, m.c.status == "sent")
        .group_by(m.c.domain)
    )
    return SendCounts(int(success), int(errors), int(text_only), {d: int(n) for d, n in by_domain})


def set_send_counts(conn: Connection, delivery_id: int, counts: SendCounts) -> None:
    """Overwrite the send-time counters and the per-domain sends of a delivery."""
    conn.execute(
        update(delivery_indicators)
        .where(delivery_indicators.c.delivery_id == delivery_id)
        .values(success=counts.success, errors=counts.errors, text_only=counts.text_only)
    )
    ds = domain_stats
    conn.execute(update(ds).where(ds.c.delivery_id == delivery_id).values(sent=0))
    ensure_domain_rows(conn, [(delivery_id, d) for d in counts.sent_by_domain])
    if counts.sent_by_domain:
        conn.execute(
            update(ds)
            .where(
                ds.c.delivery_id == bindparam("s_delivery"), ds.c.domain == bindparam("s_domain")
            )
            .values(sent=bindparam("s_sent")),
            [
                {"s_delivery": delivery_id, "s_domain": d, "s_sent": n}
                for d, n in sorted(counts.sent_by_domain.items())
            ],
        )


def unsubscribed_recipient_count(conn: Connection, delivery_id: int) -> int:
    u = unsubscriptions
    return int(
        conn.execute(
            select(func.count(u.c.recipient_id.distinct())).where(u.c.delivery_id == delivery_id)
        ).scalar_one()
    )


def set_unsubscriptions(conn: Connection, delivery_id: int, count: int) -> None:
    conn.execute(
        update(delivery_indicators)
        .where(delivery_indicators.c.delivery_id == delivery_id)
        .values(unsubscriptions=count)
    )


@dataclass(frozen=True)
class LoggedEvent:
    """A tracking log row as aggregation replays it."""

    id: int
    delivery_id: int
    message_id: int | None
    type: str
    visitor_id: str | None
    at: datetime
    amount: float | None
    articles: int | None
    tracked_url_id: int | None
    user_agent: str | None


def logged_events_page(
    conn: Connection, delivery_id: int, after: tuple[datetime, int] | None, limit: int
) -> list[LoggedEvent]:
    """A delivery's tracking logs in (at, id) order, the ``limit`` after ``after``."""
    t = tracking_logs
    stmt = select(
        t.c.id,
        t.c.delivery_id,
        t.c.message_id,
        t.c.type,
        t.c.visitor_id,
        t.c.at,
        t.c.amount,
        t.c.articles,
        t.c.tracked_url_id,
        t.c.user_agent,
    ).where(t.c.delivery_id == delivery_id)
    if after is not None:
        at, last_id = after
        stmt = stmt.where(beyond(t.c.at, t.c.id, at, last_id, descending=False))
    rows = conn.execute(stmt.order_by(t.c.at, t.c.id).limit(limit))
    return [
        LoggedEvent(
            int(r.id),
            int(r.delivery_id),
            r.message_id,
            r.type,
            r.visitor_id,
            r.at,
            r.amount,
            r.articles,
            r.tracked_url_id,
            r.user_agent,
        )
        for r in rows
    ]


# -- reports ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryHeader:
    id: int
    name: str
    state: str
    to_deliver: int


def delivery_header(conn: Connection, delivery_id: int) -> DeliveryHeader | None:
    d = deliveries
    r = conn.execute(
        select(d.c.id, d.c.name, d.c.state, d.c.to_deliver).where(d.c.id == delivery_id)
    ).first()
    return None if r is None else DeliveryHeader(int(r.id), r.name, r.state, int(r.to_deliver))


def indicator_counters(conn: Connection, delivery_id: int) -> dict[str, Any]:
    """The stored counters of a delivery (all zero when nothing was counted yet)."""
    t = delivery_indicators
    cols = [c for c in t.c if c.name != "delivery_id"]
    r = conn.execute(select(*cols).where(t.c.delivery_id == delivery_id)).first()
    if r is None:
        return {c.name: 0.0 if c.name == "amount" else 0 for c in cols}
    return dict(r._mapping)


@dataclass(frozen=True)
class DomainRow:
    domain: str
    sent: int
    complaints: int
    opens: int
    clicks: int


DOMAIN_COUNTS = ("sent", "complaints", "opens", "clicks")


def top_domains(
    conn: Connection,
    delivery_id: int | None,
    since: datetime | None,
    until: datetime | None,
    top: int,
) -> tuple[list[DomainRow], DomainRow | None]:
    """The per-domain table of the indicators over one delivery or the deliveries started
    in [since, until): aliases merged under their domain, the ``top`` biggest senders
    (most sent, then by name), and the sum of all the others (None when there are none).

    A delivery to a million addresses can have tens of thousands of domains: the database
    sums them and returns only the biggest; the few domains the alias table names are
    merged here."""
    t = domain_stats
    scoped = send_stats.in_scope(t.c.delivery_id, delivery_id, since, until)
    aliases = send_stats.alias_map(conn)
    merged = sorted(set(aliases) | {d.lower() for d in aliases.values()})
    sums = [func.coalesce(func.sum(t.c[c]), 0).label(c) for c in DOMAIN_COUNTS]
    totals = conn.execute(select(*sums).where(scoped)).one()

    def per_domain(*where: Any) -> Any:
        return select(t.c.domain, *sums).where(scoped, *where).group_by(t.c.domain)

    groups: dict[str, list[int]] = {}
    alone = per_domain(t.c.domain.not_in(merged)).subquery()
    count = int(conn.execute(select(func.count()).select_from(alone)).scalar_one())
    biggest = select(alone).order_by(alone.c.sent.desc(), alone.c.domain).limit(top)
    for rows in (conn.execute(biggest), conn.execute(per_domain(t.c.domain.in_(merged)))):
        for domain, *values in rows:
            name = aliases.get(str(domain).lower(), str(domain).lower())
            if name not in groups:
                if domain.lower() in merged:
                    count += 1  # a merged group counts once, like a domain
                groups[name] = [0] * len(DOMAIN_COUNTS)
            groups[name] = [a + int(b) for a, b in zip(groups[name], values, strict=True)]
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top]
    shown = [DomainRow(name, *values) for name, values in ordered]
    if count <= top:
        return shown, None
    rest = [
        int(v) - sum(getattr(r, c) for r in shown)
        for v, c in zip(totals, DOMAIN_COUNTS, strict=True)
    ]
    return shown, DomainRow("", *rest)


def set_domain_alias(conn: Connection, alias: str, domain: str) -> None:
    """Report ``alias`` (e.g. googlemail.com) under ``domain`` (e.g. gmail.com)."""
    upsert(
        conn,
        domain_aliases,
        {"alias": alias.strip().lower(), "domain": domain.strip().lower()},
        ["alias"],
    )


def recipient_id_by_email(conn: Connection, email: str) -> int | None:
    r = recipients
    return conn.execute(
        select(r.c.id).where(r.c.email_key == email.strip().lower())
    ).scalar_one_or_none()


@dataclass(frozen=True)
class ClickRow:
    id: int
    url: str
    label: str
    clicked_at: datetime
    delivery_id: int
    delivery_name: str


def clicks_of_recipient(
    conn: Connection,
    recipient_id: int,
    *,
    before: tuple[datetime, int] | None = None,
    limit: int | None = None,
) -> list[ClickRow]:
    """The clicks of a recipient in the deliveries still present, newest first, the
    ``limit`` before ``before`` (a keyset on (at, id) along the (recipient_id, at)
    index); the URL is the destination they reached (personalized when it was)."""
    t, u, d = tracking_logs, tracked_urls, deliveries
    stmt = (
        select(
            t.c.id,
            func.coalesce(t.c.url, u.c.url).label("url"),
            func.coalesce(u.c.label, "").label("label"),
            t.c.at,
            t.c.delivery_id,
            d.c.name,
        )
        .select_from(
            t.join(d, d.c.id == t.c.delivery_id).outerjoin(u, u.c.id == t.c.tracked_url_id)
        )
        .where(t.c.recipient_id == recipient_id, t.c.type == "click")
        .order_by(t.c.at.desc(), t.c.id.desc())
    )
    if before is not None:
        at, last_id = before
        stmt = stmt.where(beyond(t.c.at, t.c.id, at, last_id, descending=True))
    if limit is not None:
        stmt = stmt.limit(limit)
    return [
        ClickRow(int(r.id), r.url or "", r.label, r.at, int(r.delivery_id), r.name)
        for r in conn.execute(stmt)
    ]
