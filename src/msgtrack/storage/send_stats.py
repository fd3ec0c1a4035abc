"""The send-side aggregates: what sending and bounce processing made of a delivery's
messages, kept as counters so the delivery reports never scan its messages (a delivery
may have a million).

- ``send_buckets``: per (delivery, 15-minute UTC bucket of ``messages.done_at``):
  successes and errors, and their bytes (``messages.size_bytes``): throughput.
- ``domain_sends``: per (delivery, domain): processed (messages to deliver, counted at
  analysis), delivered, errors, hard and soft failures, unsubscriptions.
- ``failure_stats``: per (delivery, domain, qualified reason, failure type): failures.

What a message contributes depends on its state alone (:meth:`Deltas.add`), and every
change of state applies new minus old in the transaction that makes it. So
:func:`rebuild` (``msgtrack recompute``), which adds up the states, equals the
incremental counts by construction. success = sent and not a seed, errors = failed,
as ``delivery_indicators`` counts them; a soft failure is a final soft failure or a
delivered message that bounced soft (it stays delivered); a hard bounce turns a
delivered message into an error in the bucket where it was sent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, select, tuple_
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from msgtrack.storage.schema import (
    deliveries,
    delivery_indicators,
    domain_sends,
    domain_stats,
    failure_stats,
    messages,
    send_buckets,
    unsubscriptions,
)
from msgtrack.storage.upsert import add_to_counter_rows

BUCKET_MINUTES = 15
BUCKET_COUNTERS = ("success", "errors", "success_bytes", "error_bytes")
DOMAIN_COUNTERS = ("processed", "delivered", "errors", "hard", "soft", "unsubscriptions")
UNQUALIFIED = "to_qualify"


def bucket_of(at: datetime) -> datetime:
    """The 15-minute UTC bucket an instant falls in."""
    at = at.astimezone(UTC)
    return at.replace(minute=at.minute - at.minute % BUCKET_MINUTES, second=0, microsecond=0)


@dataclass(frozen=True)
class SendState:
    """The columns of a message that decide what it contributes."""

    domain: str
    status: str
    failure_type: str | None = None
    failure_code: str | None = None
    seed: bool = False
    size_bytes: int | None = None
    done_at: datetime | None = None


class Deltas:
    """Changes to one delivery's send-side counters, written by :meth:`write`."""

    def __init__(self) -> None:
        self.buckets: dict[datetime, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        self.domains: dict[str, list[int]] = defaultdict(lambda: [0] * len(DOMAIN_COUNTERS))
        self.failures: dict[tuple[str, str, str], int] = defaultdict(int)

    def add(self, s: SendState | None, sign: int = 1) -> None:
        """Add (or with ``sign`` -1 take away) what a message in state ``s`` counts."""
        if s is None:
            return
        success = s.status == "sent" and not s.seed
        error = s.status == "failed"
        soft = s.failure_type == "soft" and s.status in ("sent", "failed")
        if s.done_at is not None and (success or error):
            row = self.buckets[bucket_of(s.done_at)]
            size = sign * (s.size_bytes or 0)
            if success:
                row[0] += sign
                row[2] += size
            else:
                row[1] += sign
                row[3] += size
        dom = self.domains[s.domain]
        dom[1] += sign * success
        dom[2] += sign * error
        dom[3] += sign * (error and s.failure_type == "hard")
        dom[4] += sign * soft
        if error or soft:
            key = (s.domain, s.failure_code or UNQUALIFIED, s.failure_type or "hard")
            self.failures[key] += sign

    def change(self, old: SendState | None, new: SendState | None) -> None:
        self.add(old, -1)
        self.add(new, 1)

    def write(self, conn: Connection, delivery_id: int) -> None:
        """Add the non-zero deltas to the tables (rows in key order, so concurrent
        writers lock them in the same order)."""
        add_to_counter_rows(
            conn,
            send_buckets,
            ("delivery_id", "bucket"),
            BUCKET_COUNTERS,
            [
                {
                    "delivery_id": delivery_id,
                    "bucket": b,
                    **dict(zip(BUCKET_COUNTERS, v, strict=True)),
                }
                for b, v in sorted(self.buckets.items())
                if any(v)
            ],
        )
        add_to_counter_rows(
            conn,
            domain_sends,
            ("delivery_id", "domain"),
            DOMAIN_COUNTERS,
            [
                {
                    "delivery_id": delivery_id,
                    "domain": d,
                    **dict(zip(DOMAIN_COUNTERS, v, strict=True)),
                }
                for d, v in sorted(self.domains.items())
                if any(v)
            ],
        )
        add_to_counter_rows(
            conn,
            failure_stats,
            ("delivery_id", "domain", "reason", "failure_type"),
            ("messages",),
            [
                {
                    "delivery_id": delivery_id,
                    "domain": d,
                    "reason": r,
                    "failure_type": t,
                    "messages": n,
                }
                for (d, r, t), n in sorted(self.failures.items())
                if n
            ],
        )


def record_processed(conn: Connection, delivery_id: int) -> None:
    """At analysis: the delivery's messages to deliver, per domain."""
    deltas = Deltas()
    for domain, n in _processed(conn, delivery_id):
        deltas.domains[domain][0] += n
    deltas.write(conn, delivery_id)


def _processed(conn: Connection, delivery_id: int) -> list[tuple[str, int]]:
    m = messages
    rows = conn.execute(
        select(m.c.domain, func.count()).where(m.c.delivery_id == delivery_id).group_by(m.c.domain)
    )
    return [(str(d), int(n)) for d, n in rows]


def add_unsubscribed(conn: Connection, pairs: Iterable[tuple[int, int]]) -> None:
    """(delivery, recipient) pairs that unsubscribed for the first time: counted under the
    domain of the recipient's message in that delivery."""
    wanted = sorted(set(pairs))
    if not wanted:
        return
    m = messages
    counts: dict[int, Deltas] = defaultdict(Deltas)
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        rows = conn.execute(
            select(m.c.delivery_id, m.c.domain, func.count())
            .where(tuple_(m.c.delivery_id, m.c.recipient_id).in_(chunk))
            .group_by(m.c.delivery_id, m.c.domain)
        )
        for delivery_id, domain, n in rows:
            counts[int(delivery_id)].domains[str(domain)][5] += int(n)
    for delivery_id, deltas in sorted(counts.items()):
        deltas.write(conn, delivery_id)


def rebuild(conn: Connection, delivery_id: int, batch_size: int = 10_000) -> None:
    """Forget and recount a delivery's send-side aggregates from its messages and
    unsubscriptions, in the caller's transaction."""
    for table in (send_buckets, domain_sends, failure_stats):
        conn.execute(delete(table).where(table.c.delivery_id == delivery_id))
    deltas = Deltas()
    for domain, n in _processed(conn, delivery_id):
        deltas.domains[domain][0] += n
    m = messages
    rows = conn.execute(
        select(
            m.c.domain,
            m.c.status,
            m.c.failure_type,
            m.c.failure_code,
            m.c.seed,
            m.c.size_bytes,
            m.c.done_at,
        )
        .where(m.c.delivery_id == delivery_id, m.c.status.in_(("sent", "failed")))
        .execution_options(yield_per=batch_size)
    )
    for r in rows:
        deltas.add(
            SendState(
                str(r.domain),
                str(r.status),
                r.failure_type,
                r.failure_code,
                bool(r.seed),
                r.size_bytes,
                r.done_at,
            )
        )
    u = unsubscriptions
    first = (
        select(u.c.delivery_id, u.c.recipient_id)
        .where(u.c.delivery_id == delivery_id, u.c.recipient_id.is_not(None))
        .distinct()
        .subquery()
    )
    for domain, n in conn.execute(
        select(m.c.domain, func.count())
        .select_from(
            first.join(
                m,
                and_(
                    m.c.delivery_id == first.c.delivery_id, m.c.recipient_id == first.c.recipient_id
                ),
            )
        )
        .group_by(m.c.domain)
    ):
        deltas.domains[str(domain)][5] += int(n)
    deltas.write(conn, delivery_id)


def snapshot(conn: Connection, delivery_id: int) -> dict[str, Any]:
    """Every send-side counter of a delivery, comparable (zero rows left out)."""
    out: dict[str, Any] = {}
    for name, table, keys in (
        ("buckets", send_buckets, ("bucket",)),
        ("domains", domain_sends, ("domain",)),
        ("failures", failure_stats, ("domain", "reason", "failure_type")),
    ):
        rows = conn.execute(
            select(table)
            .where(table.c.delivery_id == delivery_id)
            .order_by(*(table.c[k] for k in keys))
        ).mappings()
        out[name] = [
            dict(r) for r in rows if any(v for k, v in r.items() if k not in (*keys, "delivery_id"))
        ]
    return out


# -- what the reports read -----------------------------------------------------------


def delivery_ids_started(since: datetime | None, until: datetime | None) -> Any:
    """The deliveries a global report covers: those whose sending started in [since,
    until) (every delivery that started, without bounds)."""
    d = deliveries
    conditions: list[ColumnElement[bool]] = [d.c.started_at.is_not(None)]
    if since is not None:
        conditions.append(d.c.started_at >= since)
    if until is not None:
        conditions.append(d.c.started_at < until)
    return select(d.c.id).where(*conditions)


def _in_scope(
    column: Any, delivery_id: int | None, since: datetime | None, until: datetime | None
) -> Any:
    if delivery_id is not None:
        return column == delivery_id
    return column.in_(delivery_ids_started(since, until))


def send_bucket_rows(
    conn: Connection, delivery_id: int | None, since: datetime | None, until: datetime | None
) -> list[tuple[datetime, int, int, int, int]]:
    """(bucket, success, errors, success_bytes, error_bytes) per 15-minute bucket, in time
    order: of one delivery, or of every delivery within [since, until)."""
    b = send_buckets
    conditions: list[Any] = []
    if delivery_id is not None:
        conditions.append(b.c.delivery_id == delivery_id)
    if since is not None:
        conditions.append(b.c.bucket >= since)
    if until is not None:
        conditions.append(b.c.bucket < until)
    rows = conn.execute(
        select(
            b.c.bucket,
            func.sum(b.c.success),
            func.sum(b.c.errors),
            func.sum(b.c.success_bytes),
            func.sum(b.c.error_bytes),
        )
        .where(*conditions)
        .group_by(b.c.bucket)
        .order_by(b.c.bucket)
    )
    return [(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]


def domain_send_rows(
    conn: Connection, delivery_id: int | None, since: datetime | None, until: datetime | None
) -> dict[str, dict[str, int]]:
    """Per domain: the ``domain_sends`` counters and the distinct opens and clicks of
    ``domain_stats``, summed over the scope."""
    s, t = domain_sends, domain_stats
    out: dict[str, dict[str, int]] = {}
    for r in conn.execute(
        select(s.c.domain, *(func.sum(s.c[c]).label(c) for c in DOMAIN_COUNTERS))
        .where(_in_scope(s.c.delivery_id, delivery_id, since, until))
        .group_by(s.c.domain)
    ).mappings():
        out[str(r["domain"])] = {c: int(r[c]) for c in DOMAIN_COUNTERS} | {"opens": 0, "clicks": 0}
    for domain, opens, clicks in conn.execute(
        select(t.c.domain, func.sum(t.c.opens), func.sum(t.c.clicks))
        .where(_in_scope(t.c.delivery_id, delivery_id, since, until))
        .group_by(t.c.domain)
    ):
        row = out.setdefault(
            str(domain), dict.fromkeys(DOMAIN_COUNTERS, 0) | {"opens": 0, "clicks": 0}
        )
        row["opens"], row["clicks"] = int(opens), int(clicks)
    return out


def failure_rows(
    conn: Connection, delivery_id: int | None, since: datetime | None, until: datetime | None
) -> list[tuple[str, str, str, int]]:
    """(domain, reason, failure type, messages), summed over the scope."""
    f = failure_stats
    rows = conn.execute(
        select(f.c.domain, f.c.reason, f.c.failure_type, func.sum(f.c.messages))
        .where(_in_scope(f.c.delivery_id, delivery_id, since, until))
        .group_by(f.c.domain, f.c.reason, f.c.failure_type)
    )
    return [(str(d), str(r), str(t), int(n)) for d, r, t, n in rows if int(n)]


def indicator_sums(
    conn: Connection,
    delivery_id: int | None,
    since: datetime | None,
    until: datetime | None,
    names: Iterable[str],
) -> dict[str, int]:
    """``delivery_indicators`` counters summed over the scope."""
    t = delivery_indicators
    cols = list(names)
    row = (
        conn.execute(
            select(*(func.coalesce(func.sum(t.c[c]), 0).label(c) for c in cols)).where(
                _in_scope(t.c.delivery_id, delivery_id, since, until)
            )
        )
        .mappings()
        .one()
    )
    return {c: int(row[c]) for c in cols}


def analysis_sums(
    conn: Connection, since: datetime | None, until: datetime | None, names: Iterable[str]
) -> Mapping[str, int]:
    """The analysis columns of ``deliveries`` summed over the deliveries started in the
    range, and how many deliveries that is (``deliveries``)."""
    d = deliveries
    cols = list(names)
    row = (
        conn.execute(
            select(
                func.count().label("deliveries"),
                *(func.coalesce(func.sum(d.c[c]), 0).label(c) for c in cols),
            ).where(d.c.id.in_(delivery_ids_started(since, until)))
        )
        .mappings()
        .one()
    )
    return {k: int(v) for k, v in row.items()}
