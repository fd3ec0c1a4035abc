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
delivered message into an error in the bucket where it was sent. Bounce processing
moves ``delivery_indicators.hard_bounces`` / ``soft_bounces`` by the same deltas
(:meth:`Deltas.bounce_counts`), so they always equal the sums of the domains' hard and
soft counts.

The reads (below) serve the send-side reports and the delivery dashboard: each is a
grouped query on these small tables, over one delivery or the deliveries a global
report covers (started in its date range, proofs excluded, as every global report).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import and_, delete, func, select, tuple_
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from msgtrack.storage.reports import deliveries_in_range
from msgtrack.storage.schema import (
    deliveries,
    delivery_indicators,
    domain_aliases,
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

    def bounce_counts(self) -> dict[str, int]:
        """What these deltas move ``delivery_indicators.hard_bounces`` and
        ``soft_bounces`` by: the messages failed hard, and failed or bounced soft."""
        return {
            "hard_bounces": sum(v[3] for v in self.domains.values()),
            "soft_bounces": sum(v[4] for v in self.domains.values()),
        }

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
# One delivery's rows, or those of every delivery a global report covers: the ones whose
# sending started in [since, until), proofs excluded (``deliveries_in_range``, as every
# other global report). Each read groups these small tables in the database; a list
# that could be long (a delivery to a million addresses has many domains) is cut by a
# LIMIT, the rest summed as "others".

TOP_DOMAINS = 20
OTHERS = "others"
# The per-domain columns of the delivery statistics: domain_sends' counters, and the
# messages sent (seeds included), distinct opening / clicking messages and complaints of
# domain_stats.
TRACKING_COLUMNS = ("sent", "opens", "clicks", "complaints")
DOMAIN_COLUMNS = (*DOMAIN_COUNTERS, *TRACKING_COLUMNS)
FAILURE_TYPES = ("hard", "soft", "ignored")


def in_scope(
    column: Any, delivery_id: int | None, since: datetime | None, until: datetime | None
) -> ColumnElement[bool]:
    """``column`` (a delivery id) is the delivery, or one of the range's deliveries."""
    if delivery_id is not None:
        return cast(ColumnElement[bool], column == delivery_id)
    return cast(ColumnElement[bool], column.in_(deliveries_in_range(since, until)))


def _utc(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite, when the column type was lost
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def alias_map(conn: Connection) -> dict[str, str]:
    """alias -> the domain it is reported under (the alias table is small)."""
    a = domain_aliases
    return {
        str(alias).lower(): str(domain)
        for alias, domain in conn.execute(select(a.c.alias, a.c.domain))
    }


def send_bucket_rows(
    conn: Connection, delivery_id: int | None, since: datetime | None, until: datetime | None
) -> list[tuple[datetime, int, int, int, int]]:
    """(bucket, success, errors, success_bytes, error_bytes) per 15-minute UTC bucket
    with anything in it, in time order, summed over the scope's deliveries."""
    b = send_buckets
    rows = conn.execute(
        select(
            b.c.bucket,
            func.sum(b.c.success),
            func.sum(b.c.errors),
            func.sum(b.c.success_bytes),
            func.sum(b.c.error_bytes),
        )
        .where(in_scope(b.c.delivery_id, delivery_id, since, until))
        .group_by(b.c.bucket)
        .order_by(b.c.bucket)
    )
    out = []
    for r in rows:
        values = (int(r[1] or 0), int(r[2] or 0), int(r[3] or 0), int(r[4] or 0))
        if any(values):
            out.append((_utc(r[0]), *values))
    return out


def domain_send_table(
    conn: Connection,
    delivery_id: int | None,
    since: datetime | None,
    until: datetime | None,
    top: int = TOP_DOMAINS,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Per domain (aliases merged under their domain) the ``DOMAIN_COLUMNS`` summed over
    the scope, most messages to deliver first, those beyond ``top`` summed as
    ``others``; and the totals of every domain.

    A delivery to a million addresses can have tens of thousands of domains: only the
    totals read them all (SUMs), the top ones come from an ORDER BY … LIMIT, and only the
    domains the alias table names are merged here."""
    s, t = domain_sends, domain_stats
    in_sends = in_scope(s.c.delivery_id, delivery_id, since, until)
    in_stats = in_scope(t.c.delivery_id, delivery_id, since, until)
    send_sums = [func.coalesce(func.sum(s.c[c]), 0).label(c) for c in DOMAIN_COUNTERS]
    stat_sums = [func.coalesce(func.sum(t.c[c]), 0).label(c) for c in TRACKING_COLUMNS]
    total = {
        k: int(v)
        for stmt in (select(*send_sums).where(in_sends), select(*stat_sums).where(in_stats))
        for k, v in conn.execute(stmt).mappings().one().items()
    }
    aliases = alias_map(conn)
    merged = sorted(set(aliases) | {d.lower() for d in aliases.values()})
    groups: dict[str, dict[str, int]] = {}

    def add(rows: Any) -> list[str]:
        names = []
        for r in rows.mappings():
            raw = str(r["domain"])
            row = groups.setdefault(aliases.get(raw.lower(), raw), dict.fromkeys(DOMAIN_COLUMNS, 0))
            for c in DOMAIN_COLUMNS:
                if c in r:
                    row[c] += int(r[c])
            names.append(raw)
        return names

    def per_domain(table: Any, columns: Sequence[str], *where: Any) -> Any:
        """Per domain of the table: one row each for a delivery (its key), sums for a
        range of deliveries."""
        scoped = in_scope(table.c.delivery_id, delivery_id, since, until)
        if delivery_id is not None:
            return select(table.c.domain, *(table.c[c] for c in columns)).where(scoped, *where)
        return (
            select(table.c.domain, *(func.sum(table.c[c]).label(c) for c in columns))
            .where(scoped, *where)
            .group_by(table.c.domain)
        )

    # The biggest domains the alias table leaves alone, then those it merges.
    biggest = per_domain(s, DOMAIN_COUNTERS, s.c.domain.not_in(merged)).subquery()
    b = biggest.c
    candidates = add(
        conn.execute(
            select(biggest)
            .order_by(b.processed.desc(), (b.delivered + b.errors).desc(), b.domain)
            .limit(top + 1)
        )
    )
    if len(candidates) <= top:  # few domains: those only tracking counted can show too
        only = per_domain(t, ("sent",), t.c.domain.not_in([*merged, *candidates])).subquery()
        candidates += [
            str(d)
            for (d,) in conn.execute(
                select(only.c.domain)
                .order_by(only.c.sent.desc(), only.c.domain)
                .limit(top + 1 - len(candidates))
            )
        ]
    if merged:
        add(conn.execute(per_domain(s, DOMAIN_COUNTERS, s.c.domain.in_(merged))))
    tracked = sorted(set(candidates) | set(merged))
    if tracked:
        add(conn.execute(per_domain(t, TRACKING_COLUMNS, t.c.domain.in_(tracked))))
    ordered = sorted(
        (kv for kv in groups.items() if any(kv[1].values())),
        key=lambda kv: (
            -kv[1]["processed"],
            -(kv[1]["delivered"] + kv[1]["errors"]),
            -kv[1]["sent"],
            kv[0],
        ),
    )
    shown = ordered[:top]
    rest = {c: total[c] - sum(v[c] for _, v in shown) for c in DOMAIN_COLUMNS}
    if any(rest.values()):
        shown.append((OTHERS, rest))
    return [{"domain": name, **values} for name, values in shown], total


def sent_total(
    conn: Connection, delivery_id: int | None, since: datetime | None, until: datetime | None
) -> int:
    """Messages sent, seeds included (``domain_stats.sent``), over the scope."""
    t = domain_stats
    return int(
        conn.execute(
            select(func.coalesce(func.sum(t.c.sent), 0)).where(
                in_scope(t.c.delivery_id, delivery_id, since, until)
            )
        ).scalar_one()
    )


def failure_reason_rows(
    conn: Connection, delivery_id: int | None, since: datetime | None, until: datetime | None
) -> list[tuple[str, str, int]]:
    """(reason, failure type, messages) over the scope, most messages first."""
    f = failure_stats
    n = func.sum(f.c.messages)
    rows = conn.execute(
        select(f.c.reason, f.c.failure_type, n)
        .where(in_scope(f.c.delivery_id, delivery_id, since, until))
        .group_by(f.c.reason, f.c.failure_type)
        .having(n != 0)
        .order_by(n.desc(), f.c.reason, f.c.failure_type)
    )
    return [(str(r), str(t), int(m)) for r, t, m in rows]


def failure_rows(
    conn: Connection, delivery_id: int | None, since: datetime | None, until: datetime | None
) -> list[tuple[str, str, str, int]]:
    """(domain, reason, failure type, messages) over the scope, non-zero only. A
    delivery's failures are a few rows per domain that had any (its PK order groups them
    as they are read)."""
    f = failure_stats
    n = func.sum(f.c.messages)
    rows = conn.execute(
        select(f.c.domain, f.c.reason, f.c.failure_type, n)
        .where(in_scope(f.c.delivery_id, delivery_id, since, until))
        .group_by(f.c.domain, f.c.reason, f.c.failure_type)
        .having(n != 0)
    )
    return [(str(d), str(r), str(t), int(m)) for d, r, t, m in rows]


def indicator_sums(
    conn: Connection,
    delivery_id: int | None,
    since: datetime | None,
    until: datetime | None,
    names: Iterable[str],
) -> dict[str, int]:
    """``delivery_indicators`` counters summed over the scope (0 without a row)."""
    t = delivery_indicators
    cols = list(names)
    row = (
        conn.execute(
            select(*(func.coalesce(func.sum(t.c[c]), 0).label(c) for c in cols)).where(
                in_scope(t.c.delivery_id, delivery_id, since, until)
            )
        )
        .mappings()
        .one()
    )
    return {c: int(row[c]) for c in cols}


def analysis_sums(
    conn: Connection,
    delivery_id: int | None,
    since: datetime | None,
    until: datetime | None,
    names: Iterable[str],
) -> dict[str, int]:
    """The analysis columns of ``deliveries`` summed over the scope, and how many
    deliveries that is (``deliveries``)."""
    d = deliveries
    cols = list(names)
    row = (
        conn.execute(
            select(
                func.count().label("deliveries"),
                *(func.coalesce(func.sum(d.c[c]), 0).label(c) for c in cols),
            ).where(in_scope(d.c.id, delivery_id, since, until))
        )
        .mappings()
        .one()
    )
    return {k: int(v) for k, v in row.items()}
