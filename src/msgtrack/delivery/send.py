"""The send run: claim a delivery, hand its due messages to a transport, record verdicts.

At most once, whatever crashes:

- A run first takes the delivery with a compare-and-set on its row (``send_run``,
  ``send_lease_until``); a second run gets :class:`AlreadySending` until the first
  releases it or its lease expires (it crashed). The lease is renewed while the run
  lives, and every transaction of the run checks it still owns the delivery.
- A message is committed ``in_flight`` before its DATA (the transport announces it
  through ``on_before_data``) and gets its verdict recorded after. A run that finds
  messages still in flight (a crashed run's) marks them ``unknown``: they may have
  been accepted, so they are never sent again.
- A transport failure (connection, TLS, auth, MAIL FROM) fails the run, not the
  recipients: decided messages are recorded, announced-but-unsent ones go back to
  pending, and the one whose DATA was cut is ``unknown``.

Soft failures (4xx) go back to pending with ``next_attempt_at`` from
``settings.retry_delays``; after the last delay they fail. A run sends what is due
when it starts; when retries are scheduled later the delivery stays 'sending' with
no owner, and the next run sends them.

The validity period (``deliveries.validity_seconds``, from ``settings.delivery_validity``
or ``deliveries create --validity``) bounds the retries: a retry is scheduled only when
it falls before the delivery's first send start + its validity; a soft failure whose
retry would fall later fails for good at once, and a run that starts after that instant
first gives up every soft failure still waiting (final ``failed``, type soft, its reply
kept, counted as an error and a soft bounce).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from msgtrack.context import Context
from msgtrack.delivery.analyse import prepare_delivery
from msgtrack.delivery.bounces.qualify import qualify_reply
from msgtrack.delivery.bounces.rulefile import live_rules
from msgtrack.delivery.message import return_path
from msgtrack.delivery.render import MessageRenderer, RenderError
from msgtrack.delivery.transports import Outgoing, Transport, TransportError, Verdict
from msgtrack.storage import messages as store
from msgtrack.storage.deliveries import tracked_urls
from msgtrack.storage.quarantine import QuarantinePolicy
from msgtrack.storage.types import utcnow
from msgtrack.tracking.snapshot import PublishedUrl, publish

Progress = Callable[[int, int], None]

#: Messages rendered per call, so a slow template cannot outlive the lease unseen.
RENDER_CHUNK = 50


class SendError(Exception):
    """The delivery cannot be sent (unknown, or in a state that does not send)."""


class DeliveryNotFound(SendError, LookupError):
    """No delivery has this id."""


class AlreadySending(SendError):
    """Another send run holds the delivery (until its lease expires, if it crashed)."""

    def __init__(self, delivery_id: int, lease_until: datetime | None = None) -> None:
        until = f" (lease until {lease_until.isoformat()})" if lease_until else ""
        super().__init__(f"delivery {delivery_id} is being sent by another run{until}")
        self.delivery_id = delivery_id
        self.lease_until = lease_until


class LeaseLost(AlreadySending):
    """This run's lease expired and another run took the delivery over: stop."""


@dataclass
class SendReport:
    """Where a delivery stands after a send run (counts are of all its messages)."""

    delivery_id: int
    state: str
    sent: int
    failed: int  # hard failures, and soft ones after the last retry
    soft_pending: int  # soft failures waiting for a retry
    unknown: int  # in flight when a run crashed: never sent again
    ignored: int  # failed before sending (could not be rendered)
    pending: int  # every message still to send, soft_pending included
    newly_unknown: int = 0  # marked unknown by this run: a crashed run's, or a cut DATA
    sent_now: int = 0  # by this run
    failed_now: int = 0
    deferred_now: int = 0  # soft failures of this run, scheduled for a retry
    given_up_now: int = 0  # soft failures given up by this run: the validity period is over
    next_attempt_at: datetime | None = None
    valid_until: datetime | None = None  # soft failures are retried until then

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("next_attempt_at", "valid_until"):
            value = getattr(self, key)
            data[key] = value.isoformat() if value else None
        return data


def send_delivery(
    ctx: Context, delivery_id: int, transport: Transport, *, progress: Progress | None = None
) -> SendReport:
    """Send the due messages of a delivery (preparing it first when still a draft).

    Raises :class:`AlreadySending` when another run holds it, :class:`TransportError`
    when the transport failed the run (its ``report`` attribute says where the delivery
    stands). The transport's connections are closed on return; it can be reused.
    """
    return asyncio.run(send_delivery_async(ctx, delivery_id, transport, progress=progress))


async def send_delivery_async(
    ctx: Context, delivery_id: int, transport: Transport, *, progress: Progress | None = None
) -> SendReport:
    """:func:`send_delivery` for callers already in an event loop (it blocks the loop
    while it talks to the database)."""
    try:
        return await _SendRun(ctx, delivery_id, transport, progress).run()
    finally:
        await transport.close()


class _SendRun:
    def __init__(
        self, ctx: Context, delivery_id: int, transport: Transport, progress: Progress | None
    ) -> None:
        self.ctx = ctx
        self.engine = ctx.engine
        self.delivery_id = delivery_id
        self.transport = transport
        self.progress = progress
        self.run_id = uuid.uuid4().hex
        self.lease = timedelta(seconds=ctx.settings.send_lease_seconds)
        self.retry_delays = ctx.settings.retry_delays
        self.quarantine_policy = QuarantinePolicy.from_settings(ctx.settings)
        self.rules = live_rules(ctx.settings)  # re-read when edited in the UI
        self.owned = False
        self.renewed_at = 0.0
        self.valid_until: datetime | None = None  # set once sending has started
        # The batch under way: its rows and sizes, what was announced for DATA, what has
        # a verdict, and the outcomes not recorded yet.
        self.rows: dict[int, Mapping[str, Any]] = {}
        self.sizes: dict[int, int] = {}
        self.in_flight: set[int] = set()
        self.decided: set[int] = set()
        self.unrecorded: list[store.Outcome] = []
        self.tally: Counter[str] = Counter()

    # -- ownership -------------------------------------------------------------------

    def _renew(self, conn: Connection) -> None:
        """In the caller's transaction: prove the run still owns the delivery."""
        if not store.renew_send_lease(conn, self.delivery_id, self.run_id, utcnow() + self.lease):
            self.owned = False
            raise LeaseLost(self.delivery_id)
        self.renewed_at = time.monotonic()

    def _renew_if_due(self) -> None:
        if time.monotonic() - self.renewed_at > self.lease.total_seconds() / 3:
            with self.engine.begin() as conn:
                self._renew(conn)

    async def _keep_lease(self) -> None:
        """Renew while the run waits on the network; a lost lease stops the run at its
        next transaction."""
        while self.owned:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            try:
                if self.unrecorded:  # verdicts waiting on a slow message of the batch
                    self._record()
                else:
                    self._renew_if_due()
            except LeaseLost:
                return
            except Exception:  # noqa: BLE001,S112 - the run's next transaction reports it
                continue

    def _claim(self) -> str:
        """Take the delivery; its state, or raise when it cannot be sent now."""
        now = utcnow()
        with self.engine.begin() as conn:
            claimed = store.claim_send(
                conn, self.delivery_id, self.run_id, now=now, lease_until=now + self.lease
            )
            row = store.send_claim(conn, self.delivery_id)
            if row is None:
                raise DeliveryNotFound(f"no delivery {self.delivery_id}")
            if not claimed:
                if row["state"] == "sent":
                    return "sent"
                if row["state"] not in store.SENDABLE_STATES:
                    raise SendError(
                        f"delivery {self.delivery_id} is {row['state']}: it is not sent"
                    )
                raise AlreadySending(self.delivery_id, row["send_lease_until"])
            self.owned = True
            self.renewed_at = time.monotonic()
            self.tally["newly_unknown"] = store.mark_unknown(conn, self.delivery_id)
            return str(row["state"])

    # -- the run ---------------------------------------------------------------------

    async def run(self) -> SendReport:
        state = self._claim()
        if not self.owned:
            return self._report(state)
        try:
            if state == "draft":
                prepare_delivery(self.ctx, self.delivery_id)
            with self.engine.begin() as conn:
                self._renew(conn)
                store.begin_sending(conn, self.delivery_id, self.run_id, utcnow())
                self.valid_until = self._valid_until(store.send_claim(conn, self.delivery_id))
            self._publish_urls()
            keeper = asyncio.create_task(self._keep_lease())
            try:
                await self._send_due()
            finally:
                keeper.cancel()
            return self._finish()
        except TransportError as exc:
            exc.report = self._finish(error=str(exc))
            raise
        except BaseException as exc:
            self._give_up(exc)
            raise

    def _publish_urls(self) -> None:
        """The tracked URLs go where the tracking server reads them, before any message."""
        with self.engine.connect() as conn:
            urls = tracked_urls(conn, self.delivery_id)
        publish(
            self.ctx.settings.snapshots_dir,
            self.delivery_id,
            [
                PublishedUrl(
                    id=int(u["id"]),
                    delivery_id=self.delivery_id,
                    type=str(u["type"]),
                    url=str(u["url"]),
                    label=str(u["label"] or ""),
                    tracked=bool(u["tracked"]),
                )
                for u in urls
            ],
        )

    @staticmethod
    def _valid_until(row: Mapping[Any, Any] | None) -> datetime | None:
        if row is None or row["started_at"] is None:
            return None
        return row["started_at"] + timedelta(seconds=int(row["validity_seconds"]))

    def _give_up_expired(self, now: datetime) -> None:
        """Past the validity period: every soft failure waiting for a retry fails for
        good, with its last reply."""
        if self.valid_until is None or now < self.valid_until:
            return
        after_id = 0
        while True:
            with self.engine.connect() as conn:
                rows = store.soft_pending_messages(conn, self.delivery_id, after_id=after_id)
            if not rows:
                return
            after_id = int(rows[-1]["id"])
            self.unrecorded += [
                store.Outcome(
                    message_id=int(r["id"]),
                    status="failed",
                    domain=str(r["domain"]),
                    seed=bool(r["seed"]),
                    failure_type="soft",
                    failure_reason=r["failure_reason"],
                    failure_code=r["failure_code"],
                    attempts=int(r["attempts"] or 0),
                    size_bytes=r["size_bytes"],
                    email=str(r["email"]),
                    done_at=now,
                    given_up=True,
                )
                for r in rows
            ]
            self._record()

    async def _send_due(self) -> None:
        # Due when the run starts: a retry scheduled by this run waits for the next one.
        due_by = utcnow()
        self._give_up_expired(due_by)
        with self.engine.connect() as conn:
            total = store.count_due_messages(conn, self.delivery_id, due_by=due_by)
        if self.progress:
            self.progress(0, total)
        renderer = MessageRenderer(self.ctx, self.delivery_id)
        done = after_id = 0
        while True:
            with self.engine.connect() as conn:
                rows = store.due_messages(
                    conn,
                    self.delivery_id,
                    due_by=due_by,
                    after_id=after_id,
                    limit=self.transport.batch_size,
                )
            if not rows:
                return
            after_id = int(rows[-1]["id"])
            await self._send_batch(rows, renderer)
            done += len(rows)
            if self.progress:
                self.progress(done, total)

    async def _send_batch(
        self, rows: Sequence[Mapping[str, Any]], renderer: MessageRenderer
    ) -> None:
        settings, keyring = self.ctx.settings, self.ctx.keyring
        rendered: list[bytes | RenderError] = []
        for start in range(0, len(rows), RENDER_CHUNK):
            rendered += renderer.render_batch(rows[start : start + RENDER_CHUNK])
            self._renew_if_due()
        batch: list[Outgoing] = []
        self.rows, self.sizes = {}, {}
        self.in_flight, self.decided = set(), set()
        for row, result in zip(rows, rendered, strict=True):
            if isinstance(result, RenderError):
                self.unrecorded.append(self._ignored(row, result))
                continue
            message_id = int(row["id"])
            self.rows[message_id], self.sizes[message_id] = row, len(result)
            batch.append(
                Outgoing(
                    message_id,
                    str(row["email"]),
                    return_path(settings, keyring, message_id),
                    result,
                    delivery_id=self.delivery_id,
                )
            )
        try:
            verdicts = (
                await self.transport.send(batch, self._before_data, self._on_verdict)
                if batch
                else []
            )
        except TransportError as exc:
            for message_id, verdict in exc.verdicts.items():
                self._on_verdict(message_id, verdict)
            unsent = exc.unsent & self.in_flight
            in_doubt = self.in_flight - self.decided - exc.unsent
            reason = f"the send run failed during its DATA, so it may have been accepted: {exc}"

            def settle(conn: Connection) -> None:
                store.return_to_pending(conn, self.delivery_id, unsent)
                moved = store.mark_unknown(conn, self.delivery_id, in_doubt, reason=reason)
                self.tally["newly_unknown"] += moved

            self._record(settle)
            raise
        for out, verdict in zip(batch, verdicts, strict=True):
            self._on_verdict(out.message_id, verdict)
        self._record()

    def _on_verdict(self, message_id: int, verdict: Verdict) -> None:
        """A verdict as soon as the transport has it; recorded with the next transaction."""
        if message_id in self.decided:
            return
        self.decided.add(message_id)
        self.unrecorded.append(
            self._outcome(self.rows[message_id], verdict, self.sizes[message_id], utcnow())
        )

    def _before_data(self, message_ids: list[int]) -> None:
        """Commit these messages in flight before the transport hands them over (with the
        verdicts that came in meanwhile)."""

        def mark(conn: Connection) -> None:
            moved = store.mark_in_flight(conn, self.delivery_id, message_ids)
            if moved != len(message_ids):
                raise SendError(
                    f"{len(message_ids) - moved} message(s) of delivery {self.delivery_id} "
                    "stopped being pending under this run"
                )

        self._record(mark)
        self.in_flight.update(message_ids)

    def _record(self, then: Callable[[Connection], None] | None = None) -> None:
        """One transaction: prove the run still owns the delivery, record the outcomes
        gathered so far, then ``then``."""
        outcomes = list(self.unrecorded)
        with self.engine.begin() as conn:
            self._renew(conn)
            store.record_outcomes(conn, self.delivery_id, outcomes, self.quarantine_policy)
            if then is not None:
                then(conn)
        del self.unrecorded[: len(outcomes)]
        self._count(outcomes)

    # -- outcomes --------------------------------------------------------------------

    def _outcome(
        self, row: Mapping[str, Any], verdict: Verdict, size: int, now: datetime
    ) -> store.Outcome:
        attempts = int(row["attempts"] or 0) + 1
        common: dict[str, Any] = {
            "message_id": int(row["id"]),
            "domain": str(row["domain"]),
            "seed": bool(row["seed"]),
            "attempts": attempts,
            "size_bytes": size,
            "email": str(row["email"]),
        }
        if verdict.status != "sent":
            # Qualified by the bounce rules; the failure reason stays the full reply.
            common["failure_code"] = qualify_reply(verdict.reason or "", self.rules)[0]
        if verdict.status == "sent":
            return store.Outcome(status="sent", sent_at=now, done_at=now, **common)
        if verdict.status == "soft" and attempts <= len(self.retry_delays):
            retry_at = now + timedelta(seconds=self.retry_delays[attempts - 1])
            if self.valid_until is None or retry_at <= self.valid_until:
                return store.Outcome(
                    status="pending",
                    failure_type="soft",
                    failure_reason=verdict.reason,
                    next_attempt_at=retry_at,
                    **common,
                )
        return store.Outcome(
            status="failed",
            failure_type=verdict.status,
            failure_reason=verdict.reason,
            done_at=now,
            **common,
        )

    @staticmethod
    def _ignored(row: Mapping[str, Any], error: RenderError) -> store.Outcome:
        return store.Outcome(
            message_id=int(row["id"]),
            status="failed",
            domain=str(row["domain"]),
            seed=bool(row["seed"]),
            failure_type="ignored",
            failure_reason=str(getattr(error, "reason", None) or error),
            failure_code="ignored",
            attempts=int(row["attempts"] or 0),
            done_at=utcnow(),
        )

    def _count(self, outcomes: Sequence[store.Outcome]) -> None:
        for o in outcomes:
            key = {"sent": "sent_now", "failed": "failed_now", "pending": "deferred_now"}[o.status]
            self.tally["given_up_now" if o.given_up else key] += 1

    # -- the end ---------------------------------------------------------------------

    def _finish(self, error: str | None = None) -> SendReport:
        """Release the delivery: 'sent' once nothing is left to send."""
        with self.engine.begin() as conn:
            counts = store.message_counts(conn, self.delivery_id)
            done = error is None and counts.pending == 0 and counts.in_flight == 0
            store.release_send(
                conn, self.delivery_id, self.run_id, sent_at=utcnow() if done else None, error=error
            )
            row = store.send_claim(conn, self.delivery_id)
        self.owned = False
        return self._report(str(row["state"]) if row else "unknown", counts)

    def _give_up(self, exc: BaseException) -> None:
        """Best effort on any other failure: let the next run start without waiting."""
        if not self.owned:
            return
        self.owned = False
        try:
            with self.engine.begin() as conn:
                store.release_send(
                    conn, self.delivery_id, self.run_id, error=f"{type(exc).__name__}: {exc}"
                )
        except Exception:  # noqa: BLE001,S110 - the original error is what matters
            pass

    def _report(self, state: str, counts: store.MessageCounts | None = None) -> SendReport:
        if counts is None:
            with self.engine.connect() as conn:
                counts = store.message_counts(conn, self.delivery_id)
        return SendReport(
            delivery_id=self.delivery_id,
            state=state,
            sent=counts.sent,
            failed=counts.failed,
            soft_pending=counts.soft_pending,
            unknown=counts.unknown,
            ignored=counts.ignored,
            pending=counts.pending,
            newly_unknown=self.tally["newly_unknown"],
            sent_now=self.tally["sent_now"],
            failed_now=self.tally["failed_now"],
            deferred_now=self.tally["deferred_now"],
            given_up_now=self.tally["given_up_now"],
            next_attempt_at=counts.next_attempt_at,
            valid_until=self.valid_until,
        )
