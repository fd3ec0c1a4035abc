"""Messages (delivery logs) as a send run moves them, and the send run's claim on its
delivery.

A message goes pending → in_flight → sent | failed | unknown; a soft failure puts it
back to pending with ``next_attempt_at``. The claim (``send_run``, ``send_lease_until``
on the delivery row) lives here rather than in the deliveries store because it exists
only to say which run may move these messages: every statement a run makes on its
messages is preceded, in the same transaction, by :func:`renew_send_lease`, whose
``UPDATE`` both proves the run still owns the delivery and (on PostgreSQL) locks the
row so no other run can take it over before that transaction commits.

Counters move in the same transaction as the status change: ``sent`` adds to
``delivery_indicators.success`` (seeds excluded) and ``domain_stats.sent``; a final
``failed`` adds to ``delivery_indicators.errors``; both move the send-side aggregates
(throughput buckets, per-domain and per-reason counts: see the send_stats store).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.engine import Connection, RowMapping

from msgtrack.storage import quarantine, send_stats
from msgtrack.storage.quarantine import QuarantinePolicy
from msgtrack.storage.schema import deliveries, delivery_indicators, domain_stats, messages
from msgtrack.storage.types import utcnow
from msgtrack.storage.upsert import add_to_counters

#: States a delivery may be (re)claimed for sending in.
SENDABLE_STATES = ("draft", "prepared", "sending")

UNKNOWN_REASON = "in flight when its send run stopped: not sent again (at most once)"


# -- the claim on the delivery -------------------------------------------------------


def claim_send(
    conn: Connection, delivery_id: int, run_id: str, *, now: datetime, lease_until: datetime
) -> bool:
    """Compare-and-set: take the delivery for ``run_id`` unless a live run holds it.

    True when this run now owns the delivery. A run whose lease has expired (it
    crashed) can be taken over.
    """
    result = conn.execute(
        update(deliveries)
        .where(
            deliveries.c.id == delivery_id,
            deliveries.c.state.in_(SENDABLE_STATES),
            or_(
                deliveries.c.send_run.is_(None),
                deliveries.c.send_lease_until.is_(None),
                deliveries.c.send_lease_until < now,
            ),
        )
        .values(send_run=run_id, send_lease_until=lease_until)
    )
    return result.rowcount == 1


def renew_send_lease(
    conn: Connection, delivery_id: int, run_id: str, lease_until: datetime
) -> bool:
    """Extend the lease; False when another run has taken the delivery over."""
    result = conn.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery_id, deliveries.c.send_run == run_id)
        .values(send_lease_until=lease_until)
    )
    return result.rowcount == 1


def begin_sending(conn: Connection, delivery_id: int, run_id: str, now: datetime) -> None:
    """State 'sending'; ``started_at`` is kept from the first run."""
    conn.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery_id, deliveries.c.send_run == run_id)
        .values(state="sending", started_at=func.coalesce(deliveries.c.started_at, now))
    )


def release_send(
    conn: Connection,
    delivery_id: int,
    run_id: str,
    *,
    sent_at: datetime | None = None,
    error: str | None = None,
) -> bool:
    """Give the delivery up; with ``sent_at`` it is finished (state 'sent')."""
    values: dict[str, Any] = {"send_run": None, "send_lease_until": None, "last_error": error}
    if sent_at is not None:
        values.update(state="sent", sent_at=sent_at)
    result = conn.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery_id, deliveries.c.send_run == run_id)
        .values(**values)
    )
    return result.rowcount == 1


def send_claim(conn: Connection, delivery_id: int) -> RowMapping | None:
    """State, owning run and lease of a delivery (None when there is no such delivery)."""
    return (
        conn.execute(
            select(
                deliveries.c.id,
                deliveries.c.state,
                deliveries.c.send_run,
                deliveries.c.send_lease_until,
                deliveries.c.started_at,
                deliveries.c.sent_at,
                deliveries.c.last_error,
                deliveries.c.validity_seconds,
            ).where(deliveries.c.id == delivery_id)
        )
        .mappings()
        .first()
    )


# -- messages ------------------------------------------------------------------------


def _due(delivery_id: int, due_by: datetime) -> Any:
    return and_(
        messages.c.delivery_id == delivery_id,
        messages.c.status == "pending",
        or_(messages.c.next_attempt_at.is_(None), messages.c.next_attempt_at <= due_by),
    )


def due_messages(
    conn: Connection, delivery_id: int, *, due_by: datetime, after_id: int = 0, limit: int = 500
) -> list[Mapping[str, Any]]:
    """Pending messages whose (next) attempt is due by ``due_by``, in id order."""
    rows = conn.execute(
        select(messages)
        .where(_due(delivery_id, due_by), messages.c.id > after_id)
        .order_by(messages.c.id)
        .limit(limit)
    )
    return cast(list[Mapping[str, Any]], list(rows.mappings()))


def count_due_messages(conn: Connection, delivery_id: int, *, due_by: datetime) -> int:
    return int(conn.execute(select(func.count()).where(_due(delivery_id, due_by))).scalar_one())


def mark_in_flight(conn: Connection, delivery_id: int, message_ids: Sequence[int]) -> int:
    """pending → in_flight, to be committed before their DATA; returns how many moved."""
    if not message_ids:
        return 0
    result = conn.execute(
        update(messages)
        .where(
            messages.c.delivery_id == delivery_id,
            messages.c.id.in_(list(message_ids)),
            messages.c.status == "pending",
        )
        .values(status="in_flight")
    )
    return int(result.rowcount)


def return_to_pending(conn: Connection, delivery_id: int, message_ids: Iterable[int]) -> int:
    """in_flight → pending, for messages known never to have reached their DATA."""
    ids = list(message_ids)
    if not ids:
        return 0
    result = conn.execute(
        update(messages)
        .where(
            messages.c.delivery_id == delivery_id,
            messages.c.id.in_(ids),
            messages.c.status == "in_flight",
        )
        .values(status="pending")
    )
    return int(result.rowcount)


def mark_unknown(
    conn: Connection,
    delivery_id: int,
    message_ids: Iterable[int] | None = None,
    *,
    reason: str = UNKNOWN_REASON,
) -> int:
    """in_flight → unknown: every in-flight message of the delivery, or only ``message_ids``.

    A message in flight may or may not have been accepted; it is never sent again.
    """
    condition = and_(messages.c.delivery_id == delivery_id, messages.c.status == "in_flight")
    if message_ids is not None:
        ids = list(message_ids)
        if not ids:
            return 0
        condition = and_(condition, messages.c.id.in_(ids))
    result = conn.execute(
        update(messages).where(condition).values(status="unknown", failure_reason=reason)
    )
    return int(result.rowcount)


@dataclass(frozen=True)
class Outcome:
    """What became of one message in a send attempt.

    ``status``: 'sent', 'pending' (soft failure, retry at ``next_attempt_at``) or
    'failed' (``failure_type`` hard, soft after the last retry, or ignored).
    """

    message_id: int
    status: str
    domain: str
    seed: bool = False
    failure_type: str | None = None
    failure_reason: str | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    size_bytes: int | None = None
    email: str | None = None  # for the quarantine: success clears, failure counts
    failure_code: str | None = None  # qualified reason of failure_reason
    done_at: datetime | None = None  # when it got its final status (sent or failed)
    # A soft failure given up after the validity period: its error was counted toward
    # the quarantine when it happened, not again.
    given_up: bool = False

    def send_state(self) -> send_stats.SendState:
        return send_stats.SendState(
            self.domain,
            self.status,
            self.failure_type,
            self.failure_code,
            self.seed,
            self.size_bytes,
            self.done_at,
        )


_record = (
    update(messages)
    .where(
        messages.c.id == bindparam("b_id"),
        messages.c.delivery_id == bindparam("b_delivery"),
        # Not IN (…): an expanding parameter cannot go into executemany.
        or_(messages.c.status == "pending", messages.c.status == "in_flight"),
    )
    .values(
        status=bindparam("b_status"),
        failure_type=bindparam("b_failure_type"),
        failure_reason=bindparam("b_failure_reason"),
        failure_code=bindparam("b_failure_code"),
        attempts=bindparam("b_attempts"),
        next_attempt_at=bindparam("b_next_attempt_at"),
        sent_at=bindparam("b_sent_at"),
        size_bytes=bindparam("b_size_bytes"),
        done_at=bindparam("b_done_at"),
    )
)


def record_outcomes(
    conn: Connection,
    delivery_id: int,
    outcomes: Sequence[Outcome],
    policy: QuarantinePolicy | None = None,
) -> None:
    """Store each message's outcome and move the counters, in the caller's transaction.

    The caller owns the delivery (it renewed its lease in this transaction), so every
    message named is still pending or in flight and each update applies exactly once.
    """
    if not outcomes:
        return
    conn.execute(
        _record,
        [
            {
                "b_id": o.message_id,
                "b_delivery": delivery_id,
                "b_status": o.status,
                "b_failure_type": o.failure_type,
                "b_failure_reason": o.failure_reason,
                "b_failure_code": o.failure_code,
                "b_attempts": o.attempts,
                "b_next_attempt_at": o.next_attempt_at,
                "b_sent_at": o.sent_at,
                "b_size_bytes": o.size_bytes,
                "b_done_at": o.done_at,
            }
            for o in outcomes
        ],
    )
    success = sum(1 for o in outcomes if o.status == "sent" and not o.seed)
    errors = sum(1 for o in outcomes if o.status == "failed")
    if success or errors:
        add_to_counters(
            conn,
            delivery_indicators,
            {"delivery_id": delivery_id},
            {"success": success, "errors": errors},
        )
    for domain, sent in Counter(o.domain for o in outcomes if o.status == "sent").items():
        add_to_counters(
            conn, domain_stats, {"delivery_id": delivery_id, "domain": domain}, {"sent": sent}
        )
    # A pending or in-flight message counts nothing yet: only the new state adds.
    deltas = send_stats.Deltas()
    for o in outcomes:
        deltas.add(o.send_state())
    deltas.write(conn, delivery_id)
    _quarantine(conn, delivery_id, outcomes, policy or QuarantinePolicy())


def _quarantine(
    conn: Connection, delivery_id: int, outcomes: Sequence[Outcome], policy: QuarantinePolicy
) -> None:
    """A success clears soft errors of its address; a qualified failure counts toward
    (or makes) a quarantine; final failures count as hard or soft bounces."""
    now = utcnow()
    accepted = [o.email for o in outcomes if o.status == "sent" and o.email]
    if accepted:
        quarantine.clear_after_success(conn, accepted, now)
    counts = Counter[str]()
    for o in outcomes:
        if o.status not in ("failed", "pending") or not o.failure_code or not o.email:
            continue
        if o.status == "failed" and o.failure_type in ("hard", "soft"):
            counts[f"{o.failure_type}_bounces"] += 1
        failure_type = o.failure_type or "hard"
        if o.given_up:
            continue
        if quarantine.record_failure(
            conn, o.email, o.failure_code, failure_type, now, policy, message_id=o.message_id
        ):
            counts["new_quarantines"] += 1
    if counts:
        add_to_counters(conn, delivery_indicators, {"delivery_id": delivery_id}, dict(counts))


def soft_pending_messages(
    conn: Connection, delivery_id: int, *, after_id: int = 0, limit: int = 500
) -> list[Mapping[str, Any]]:
    """Pending messages that failed soft and wait for a retry (due or not), in id order:
    what is given up once the delivery's validity period is over."""
    m = messages
    rows = conn.execute(
        select(
            m.c.id,
            m.c.email,
            m.c.domain,
            m.c.seed,
            m.c.attempts,
            m.c.failure_reason,
            m.c.failure_code,
            m.c.size_bytes,
        )
        .where(
            m.c.delivery_id == delivery_id,
            m.c.status == "pending",
            m.c.failure_type == "soft",
            m.c.id > after_id,
        )
        .order_by(m.c.id)
        .limit(limit)
    )
    return cast(list[Mapping[str, Any]], list(rows.mappings()))


@dataclass(frozen=True)
class MessageCounts:
    """Messages of a delivery by where they stand."""

    pending: int = 0  # not yet sent, including soft failures waiting for a retry
    soft_pending: int = 0  # of which soft failures waiting for a retry
    in_flight: int = 0
    sent: int = 0
    failed: int = 0  # hard, or soft after the last retry
    ignored: int = 0  # failed before sending (e.g. the message could not be rendered)
    unknown: int = 0
    next_attempt_at: datetime | None = None  # earliest scheduled retry


def message_counts(conn: Connection, delivery_id: int) -> MessageCounts:
    rows = conn.execute(
        select(
            messages.c.status,
            messages.c.failure_type,
            func.count(),
            func.min(messages.c.next_attempt_at),
        )
        .where(messages.c.delivery_id == delivery_id)
        .group_by(messages.c.status, messages.c.failure_type)
    ).all()
    counts: Counter[str] = Counter()
    next_at: datetime | None = None
    for status, failure_type, n, first_at in rows:
        if status == "pending":
            counts["pending"] += n
            if failure_type == "soft":
                counts["soft_pending"] += n
            if first_at is not None:
                next_at = first_at if next_at is None else min(next_at, first_at)
        elif status == "failed":
            counts["ignored" if failure_type == "ignored" else "failed"] += n
        elif status in ("in_flight", "sent", "unknown"):
            counts[status] += n
    return MessageCounts(**counts, next_attempt_at=next_at)
