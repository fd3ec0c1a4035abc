"""The bounces store: messages read back from the bounce mailbox, and what they change
on the messages they are matched to.

A read message is keyed by the SHA-256 of its bytes (``source_key``); its first row is
inserted first, with ``ON CONFLICT DO NOTHING``, as a claim: a message read again (the
processor crashed after its commit but before moving the file) finds its key taken
and changes nothing. Every counter moves in that same transaction.

A bounce moves a message ``sent`` → ``failed`` on a hard error, and the send-time
counters with it (success −1 unless a seed, errors +1, the domain's sends −1, and the
send-side aggregates by the difference of the message's states), so a recompute from
the messages gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from msgtrack.storage import send_stats, tracking
from msgtrack.storage.schema import (
    bounces,
    delivery_indicators,
    domain_stats,
    failure_stats,
    messages,
)
from msgtrack.storage.upsert import add_to_counters


def is_recorded(conn: Connection, source_key: str) -> bool:
    return (
        conn.execute(
            select(bounces.c.id).where(bounces.c.source_key == source_key).limit(1)
        ).first()
        is not None
    )


def claim(conn: Connection, row: Mapping[str, Any]) -> bool:
    """Insert the first row of a read message; False when it was recorded before."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(bounces).values(dict(row)).on_conflict_do_nothing()
    return conn.execute(stmt.returning(bounces.c.id)).first() is not None


def add_rows(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(insert(bounces), [dict(r) for r in rows])


@dataclass(frozen=True)
class MessageRef:
    id: int
    delivery_id: int
    recipient_id: int | None
    email: str
    domain: str
    status: str
    seed: bool
    failure_type: str | None
    failure_code: str | None = None
    size_bytes: int | None = None
    done_at: datetime | None = None

    def send_state(self, **changes: Any) -> send_stats.SendState:
        values = {
            "status": self.status,
            "failure_type": self.failure_type,
            "failure_code": self.failure_code,
            **changes,
        }
        return send_stats.SendState(
            self.domain,
            values["status"],
            values["failure_type"],
            values["failure_code"],
            self.seed,
            self.size_bytes,
            self.done_at,
        )


def message_ref(conn: Connection, message_id: int) -> MessageRef | None:
    m = messages
    row = conn.execute(
        select(
            m.c.id,
            m.c.delivery_id,
            m.c.recipient_id,
            m.c.email,
            m.c.domain,
            m.c.status,
            m.c.seed,
            m.c.failure_type,
            m.c.failure_code,
            m.c.size_bytes,
            m.c.done_at,
        ).where(m.c.id == message_id)
    ).first()
    if row is None:
        return None
    return MessageRef(
        int(row.id),
        int(row.delivery_id),
        None if row.recipient_id is None else int(row.recipient_id),
        str(row.email),
        str(row.domain),
        str(row.status),
        bool(row.seed),
        row.failure_type,
        row.failure_code,
        row.size_bytes,
        row.done_at,
    )


def record_message_failure(
    conn: Connection, msg: MessageRef, reason: str, failure_type: str, text: str
) -> dict[str, int]:
    """Store a bounce's verdict on its message and move the counters; returns the
    changes to hard_bounces and soft_bounces.

    - hard: a sent message fails (success -1 unless a seed, errors +1, its domain's
      sends -1, counted in the bucket where it was sent); a failed one becomes a hard
      failure for this reason.
    - soft: a sent message stays delivered, bounced soft; a soft failure takes the
      latest reason; a hard failure keeps its own (a later "mailbox full" does not make
      an unknown user soft).
    - A failure ``ignored`` (never sent), and a message not decided yet (pending, in
      flight) or ``unknown``, keep their state and count nothing: only the reason and
      text are noted on the undecided ones, and their send decides.

    hard_bounces and soft_bounces move with the message's state, as the send-side
    aggregates do: they always count the messages failed hard, and those failed or
    bounced soft (a soft bounce followed by a hard one is a hard bounce, once).
    """
    noted: dict[str, Any] = {"failure_code": reason, "failure_reason": text}
    values: dict[str, Any] = {}
    if msg.status == "failed":
        if msg.failure_type == "soft":
            values = {**noted, "failure_type": failure_type}
        elif msg.failure_type == "hard" and failure_type == "hard":
            values = noted
        # else ignored, or hard with a soft bounce: unchanged
    elif msg.status == "sent":
        if failure_type == "hard":
            values = {**noted, "status": "failed", "failure_type": "hard"}
            add_to_counters(
                conn,
                delivery_indicators,
                {"delivery_id": msg.delivery_id},
                {"success": 0 if msg.seed else -1, "errors": 1},
            )
            add_to_counters(
                conn,
                domain_stats,
                {"delivery_id": msg.delivery_id, "domain": msg.domain},
                {"sent": -1},
            )
        else:
            values = {**noted, "failure_type": "soft"}
    else:  # pending, in flight, unknown
        values = noted
    if not values:
        return {"hard_bounces": 0, "soft_bounces": 0}
    conn.execute(update(messages).where(messages.c.id == msg.id).values(**values))
    deltas = send_stats.Deltas()
    deltas.change(
        msg.send_state(),
        msg.send_state(
            **{k: values[k] for k in ("status", "failure_type", "failure_code") if k in values}
        ),
    )
    deltas.write(conn, msg.delivery_id)
    counts = deltas.bounce_counts()
    add_counts(conn, msg.delivery_id, counts)
    return counts


def add_counts(conn: Connection, delivery_id: int, counts: Mapping[str, int]) -> None:
    """Add to a delivery's bounce counters (hard_bounces, soft_bounces, complaints,
    new_quarantines)."""
    add_to_counters(conn, delivery_indicators, {"delivery_id": delivery_id}, counts)


def add_domain_complaint(conn: Connection, delivery_id: int, domain: str) -> None:
    add_to_counters(
        conn, domain_stats, {"delivery_id": delivery_id, "domain": domain}, {"complaints": 1}
    )


def add_mailto_unsubscription(
    conn: Connection, source_key: str, msg: MessageRef, now: datetime
) -> bool:
    """An unsubscription sent to the unsubscribe mailbox: recorded as the tracking
    server's are (unsubscriptions row, global opt-out, counter once per recipient and
    delivery). True when this recipient had not unsubscribed from the delivery before."""
    if msg.recipient_id is None:
        return False
    pair = (msg.delivery_id, msg.recipient_id)
    first = not tracking.unsubscribed_pairs(conn, [pair])
    tracking.add_unsubscriptions(
        conn,
        [
            {
                "segment": f"mailbox:{source_key[:100]}",
                "offset": 0,
                "delivery_id": msg.delivery_id,
                "message_id": msg.id,
                "recipient_id": msg.recipient_id,
                "source": "mailto",
                "at": now,
                "ip": None,
                "user_agent": None,
            }
        ],
    )
    tracking.add_opt_outs(
        conn,
        [
            {
                "recipient_id": msg.recipient_id,
                "delivery_id": msg.delivery_id,
                "message_id": msg.id,
                "source": "mailto",
                "created_at": now,
            }
        ],
    )
    if first:
        add_to_counters(
            conn, delivery_indicators, {"delivery_id": msg.delivery_id}, {"unsubscriptions": 1}
        )
    return first


def bounces_of_delivery(conn: Connection, delivery_id: int) -> list[dict[str, Any]]:
    b = bounces
    rows = conn.execute(
        select(b).where(b.c.delivery_id == delivery_id).order_by(b.c.received_at, b.c.id)
    ).mappings()
    return [dict(r) for r in rows]


def failure_texts(conn: Connection, limit: int = 100_000) -> list[tuple[str, str, str, str]]:
    """(reason, type, status, diagnostic) of recorded failures, oldest first: the input
    of the qualification list."""
    b = bounces
    rows = conn.execute(
        select(b.c.reason, b.c.failure_type, b.c.status, b.c.diagnostic)
        .where(b.c.failure_type != "ignored")
        .order_by(b.c.id)
        .limit(limit)
    ).all()
    return [(r[0], r[1], r[2] or "", r[3] or "") for r in rows]


def counts_by_reason(conn: Connection, delivery_id: int) -> dict[str, int]:
    b = bounces
    rows = conn.execute(
        select(b.c.reason, func.count())
        .where(b.c.delivery_id == delivery_id, b.c.matched.is_(True))
        .group_by(b.c.reason)
    ).all()
    return {str(r): int(n) for r, n in rows}


def failures_by_domain(conn: Connection, delivery_id: int) -> list[tuple[str, str, str, int]]:
    """(domain, reason, type, messages) of a delivery's qualified failures, synchronous
    and asynchronous alike (failed messages, and delivered ones that bounced soft), from
    the send-side aggregates: never a scan of its messages."""
    f = failure_stats
    rows = conn.execute(
        select(f.c.domain, f.c.reason, f.c.failure_type, f.c.messages)
        .where(f.c.delivery_id == delivery_id, f.c.messages != 0)
        .order_by(f.c.domain, f.c.reason, f.c.failure_type)
    ).all()
    return [(str(d), str(r), str(t), int(n)) for d, r, t, n in rows]


def bounce_counters(conn: Connection, delivery_id: int) -> dict[str, int]:
    """Handed-over messages (success + errors) and the bounce counters of a delivery."""
    t = delivery_indicators
    row = conn.execute(
        select(
            t.c.success, t.c.errors, t.c.hard_bounces, t.c.soft_bounces, t.c.complaints,
            t.c.new_quarantines,
        ).where(t.c.delivery_id == delivery_id)
    ).mappings().first()  # fmt: skip
    names = ("success", "errors", "hard_bounces", "soft_bounces", "complaints", "new_quarantines")
    return {n: int(row[n]) if row else 0 for n in names}
