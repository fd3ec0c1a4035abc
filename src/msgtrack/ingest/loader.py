"""Load the tracking server's event log into the database, exactly once.

Each segment (``events_dir/*.log``, in name order) is read from its checkpoint. A batch
of lines becomes one transaction that inserts the rows, moves the counters for the rows
it actually inserted, and advances the checkpoint: a crash before the commit replays the
batch, a crash after it resumes past it. An event's identity is (segment, byte offset of
its line), a unique key of ``tracking_logs`` and ``unsubscriptions``, so even a lost
checkpoint replays harmlessly: offsets already present are skipped before inserting, and
the counters never see them.

A line that cannot be trusted (bad checksum or JSON, unknown delivery, message or tracked
URL) goes to ``rejects_dir/{segment}.rejects`` and ``ingest_rejects`` with its offset and
reason, and the rest loads. A last line with no LF is a write in progress: it waits,
unless the segment is sealed or untouched for ``STALE_SECONDS`` (its writer died), and
then it is rejected as truncated and the segment is done.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from msgtrack.context import Context
from msgtrack.ingest.aggregate import CountedEvent, apply_events
from msgtrack.ingest.lock import IngestBusy, ingest_lock
from msgtrack.links.personalize import PersonalizationError, parse_url_template
from msgtrack.storage import tracking as store
from msgtrack.tracking.events import BadLine, Event, decode_event

__all__ = ["IngestBusy", "IngestStats", "ingest_once", "STALE_SECONDS"]

log = logging.getLogger(__name__)

# An unsealed segment untouched this long has lost its writer: its torn tail is final.
STALE_SECONDS = 300.0
SEALED_SUFFIX = ".sealed"
REJECTS_SUFFIX = ".rejects"
# Longer than any event the server writes; longer lines are rejected piecewise.
MAX_LINE = 1 << 20
MAX_ID = 2**63 - 1
MAX_INT32 = 2**31 - 1
SEGMENT_NAME_MAX = 120  # ingest_checkpoints.segment
VISITOR_ID_MAX = 40  # visitors.id
LOGGED_KINDS = frozenset({"click", "open", "opt-out", "mirror", "web", "transaction"})


@dataclass
class IngestStats:
    loaded: int = 0  # rows inserted (tracking logs and unsubscriptions)
    duplicates: int = 0  # lines already loaded or already rejected (a replay)
    rejected: int = 0  # lines newly set aside
    segments: int = 0  # segments in which this pass consumed lines or finished


@dataclass(frozen=True)
class Line:
    offset: int
    raw: bytes  # without its LF
    reason: str | None = None  # set when the line is rejected before decoding


def ingest_once(
    ctx: Context,
    *,
    batch_size: int = 5000,
    progress: Callable[[int], None] | None = None,
    wait: float = 0.0,
) -> IngestStats:
    """One pass over every segment; raises IngestBusy when another ingestion still
    runs after ``wait`` seconds.

    ``progress`` is called after each committed batch with the number of lines it
    consumed.
    """
    stats = IngestStats()
    events_dir = ctx.settings.events_dir
    with ingest_lock(ctx, wait=wait) as conn:
        if not events_dir.is_dir():
            return stats
        with conn.begin():
            progress_by_segment = store.checkpoints(conn)
        for path in sorted(events_dir.glob("*.log")):
            name = path.name
            if len(name) > SEGMENT_NAME_MAX:
                log.warning("segment name too long to checkpoint, skipped: %s", name)
                continue
            cp = progress_by_segment.get(name)
            if cp is not None and cp.done:
                continue
            loader = _SegmentLoader(ctx, conn, path, batch_size, stats, progress)
            if loader.run(cp.offset if cp else 0):
                stats.segments += 1
    return stats


def _lines(path: Path, start: int) -> Iterator[tuple[Line, bool, int]]:
    """(line, complete, offset after it) from ``start`` to the end of the file as it is
    now; a line with no LF at the end is incomplete."""
    with open(path, "rb") as f:
        f.seek(start)
        offset = start
        while True:
            raw = f.readline(MAX_LINE)
            if not raw:
                return
            after = offset + len(raw)
            if raw.endswith(b"\n"):
                yield Line(offset, raw[:-1]), True, after
            elif len(raw) == MAX_LINE:
                yield Line(offset, raw, "line too long"), True, after
            else:
                yield Line(offset, raw), False, after
            offset = after


def escape_raw(raw: bytes) -> str:
    """Printable ASCII as is, anything else as ``\\xNN``: one reject per line, reversible."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in raw)


class _RejectFile:
    """``rejects_dir/{segment}.rejects``: ``offset TAB reason TAB escaped line``.

    Written before the transaction commits; a replay after a crash skips offsets the file
    already holds, so each rejected line appears once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offsets: set[int] | None = None

    def _known(self) -> set[int]:
        if self._offsets is None:
            self._offsets = set()
            try:
                with open(self.path, "rb") as f:
                    for entry in f:
                        head = entry.split(b"\t", 1)[0]
                        if head.isdigit():
                            self._offsets.add(int(head))
            except FileNotFoundError:
                pass
        return self._offsets

    def write(self, rejects: list[tuple[Line, str]]) -> None:
        known = self._known()
        fresh = [(line, reason) for line, reason in rejects if line.offset not in known]
        if not fresh:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(
            f"{line.offset}\t{' '.join(reason.split())}\t{escape_raw(line.raw)}\n"
            for line, reason in fresh
        )
        with open(self.path, "a", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        known.update(line.offset for line, _ in fresh)


@dataclass
class _Batch:
    rows: list[dict[str, Any]] = field(default_factory=list)  # tracking_logs
    unsubs: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[tuple[Line, str]] = field(default_factory=list)
    counted: list[CountedEvent] = field(default_factory=list)
    # The batch's messages, loaded once for checking and again used for counting.
    messages: dict[int, store.MessageState] = field(default_factory=dict)
    duplicates: int = 0


class _SegmentLoader:
    def __init__(
        self,
        ctx: Context,
        conn: Connection,
        path: Path,
        batch_size: int,
        stats: IngestStats,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.conn = conn
        self.path = path
        self.segment = path.name
        self.batch_size = max(1, batch_size)
        self.stats = stats
        self.progress = progress
        self.reject_file = _RejectFile(ctx.settings.rejects_dir / f"{path.name}{REJECTS_SUFFIX}")

    def run(self, offset: int) -> bool:
        """Load what is new; True when anything was consumed or the segment finished."""
        # Sealed is read before the size: a sealed segment's content is final.
        sealed = self.path.with_name(self.path.name + SEALED_SUFFIX).exists()
        st = self.path.stat()
        stale = time.time() - st.st_mtime > STALE_SECONDS
        if offset > st.st_size:
            log.warning("segment %s is shorter than its checkpoint: left alone", self.segment)
            return False
        if offset == st.st_size:
            if sealed:
                with self.conn.begin():
                    store.save_checkpoint(self.conn, self.segment, offset, True)
                return True
            return False
        batch: list[Line] = []
        end = offset
        worked = False
        finished = sealed
        for line, complete, after in _lines(self.path, offset):
            if not complete:
                if not sealed and not (stale and self._still_stale(st)):
                    finished = False
                    break
                line = Line(line.offset, line.raw, "truncated line")
                finished = True
            batch.append(line)
            end = after
            if len(batch) >= self.batch_size:
                self._commit(batch, end, done=False)
                worked = True
                batch = []
        if batch or finished:
            self._commit(batch, end, done=finished)
            worked = True
        return worked

    def _still_stale(self, before: os.stat_result) -> bool:
        """Nothing was written since the first look (so the torn tail is no write in
        progress)."""
        now = self.path.stat()
        return now.st_size == before.st_size and now.st_mtime == before.st_mtime

    def _commit(self, lines: list[Line], end: int, done: bool) -> None:
        conn = self.conn
        with conn.begin():
            batch = self._prepare(lines) if lines else _Batch()
            # Unsubscriptions are counted against the rows present before this batch.
            unsubscribers = self._record_opt_outs(batch.unsubs)
            store.add_tracking_logs(conn, batch.rows)
            store.add_unsubscriptions(conn, batch.unsubs)
            apply_events(conn, batch.counted, unsubscribers, batch.messages)
            self._record_visitors(batch)
            rejected = self._record_rejects(batch)
            store.save_checkpoint(conn, self.segment, end, done)
        self.stats.loaded += len(batch.rows) + len(batch.unsubs)
        self.stats.rejected += rejected
        self.stats.duplicates += batch.duplicates + len(batch.rejects) - rejected
        if self.progress is not None and lines:
            self.progress(len(lines))

    def _record_rejects(self, batch: _Batch) -> int:
        """Set aside the rejected lines not set aside before; returns how many."""
        if not batch.rejects:
            return 0
        rejects = sorted(batch.rejects, key=lambda r: r[0].offset)
        seen = store.rejected_offsets(
            self.conn, self.segment, rejects[0][0].offset, rejects[-1][0].offset
        )
        fresh = [(line, reason) for line, reason in rejects if line.offset not in seen]
        store.add_rejects(
            self.conn,
            [{"segment": self.segment, "offset": line.offset, "reason": r} for line, r in fresh],
        )
        self.reject_file.write(fresh)
        return len(fresh)

    def _prepare(self, lines: list[Line]) -> _Batch:
        """Decode and check the lines, skipping those already loaded; build the rows."""
        conn = self.conn
        batch = _Batch()
        decoded: list[tuple[Line, Event]] = []
        for line in lines:
            if line.reason is not None:
                batch.rejects.append((line, line.reason))
                continue
            try:
                decoded.append((line, decode_event(line.raw)))
            except BadLine as exc:
                batch.rejects.append((line, str(exc)))
        if decoded:
            loaded = store.loaded_offsets(
                conn, self.segment, decoded[0][0].offset, decoded[-1][0].offset
            )
            fresh = [(line, ev) for line, ev in decoded if line.offset not in loaded]
            batch.duplicates += len(decoded) - len(fresh)
        else:
            fresh = []
        checked: list[tuple[Line, Event]] = []
        for line, ev in fresh:
            reason = _shape_problem(ev)
            if reason:
                batch.rejects.append((line, reason))
            else:
                checked.append((line, ev))
        present = store.existing_deliveries(conn, {ev.delivery_id for _, ev in checked})
        messages = batch.messages = store.message_states(
            conn, {ev.message_id for _, ev in checked if ev.message_id is not None}
        )
        urls = store.tracked_url_refs(
            conn, {ev.url_id for _, ev in checked if ev.url_id is not None}
        )
        for line, ev in checked:
            try:
                row = _row(ev, present, messages, urls)
            except _Reject as exc:
                batch.rejects.append((line, str(exc)))
                continue
            row.update(segment=self.segment, offset=line.offset)
            if ev.kind == "unsubscribe":
                batch.unsubs.append(row)
            else:
                batch.rows.append(row)
                batch.counted.append(
                    CountedEvent(
                        row["delivery_id"],
                        row["message_id"],
                        row["type"],
                        row["visitor_id"],
                        row["at"],
                        row["amount"],
                        row["articles"],
                        row["tracked_url_id"],
                        row["user_agent"],
                    )
                )
        batch.counted.sort(key=lambda e: e.at)
        return batch

    def _record_opt_outs(self, unsubs: list[dict[str, Any]]) -> dict[int, dict[str, int]]:
        """Global opt-out for each unsubscribed recipient (first one wins); returns the
        per-delivery count of recipients unsubscribing from it for the first time."""
        if not unsubs:
            return {}
        ordered = sorted(unsubs, key=lambda r: r["at"])
        pairs = {
            (r["delivery_id"], r["recipient_id"]) for r in ordered if r["recipient_id"] is not None
        }
        earlier = store.unsubscribed_pairs(self.conn, pairs)
        counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for delivery_id, _ in pairs - earlier:
            counts[delivery_id]["unsubscriptions"] += 1
        first_by_recipient: dict[int, dict[str, Any]] = {}
        for r in ordered:
            if r["recipient_id"] is not None:
                first_by_recipient.setdefault(r["recipient_id"], r)
        store.add_opt_outs(
            self.conn,
            [
                {
                    "recipient_id": rid,
                    "delivery_id": r["delivery_id"],
                    "message_id": r["message_id"],
                    "source": r["source"],
                    "created_at": r["at"],
                }
                for rid, r in sorted(first_by_recipient.items())
            ],
        )
        return counts

    def _record_visitors(self, batch: _Batch) -> None:
        """First and last seen, user agent of the latest event, and the recipient of
        the latest click (a click identifies the browser)."""
        seen: dict[str, dict[str, Any]] = {}
        for row in sorted(batch.rows + batch.unsubs, key=lambda r: r["at"]):
            vid = row.get("visitor_id")
            if not vid:
                continue
            v = seen.setdefault(
                vid, {"first": row["at"], "last": row["at"], "ua": None, "rid": None}
            )
            v["last"] = row["at"]
            if row.get("user_agent"):
                v["ua"] = row["user_agent"]
            if row.get("type") == "click" and row["recipient_id"] is not None:
                v["rid"] = row["recipient_id"]
        if not seen:
            return
        known = store.visitor_states(self.conn, seen)
        new, changed = [], []
        for vid, v in sorted(seen.items()):
            old = known.get(vid)
            if old is None:
                new.append(store.VisitorState(vid, v["rid"], v["first"], v["last"], v["ua"]))
                continue
            newer = v["last"] >= old.last_seen_at
            changed.append(
                store.VisitorState(
                    vid,
                    v["rid"] if v["rid"] is not None else old.recipient_id,
                    min(old.first_seen_at, v["first"]),
                    max(old.last_seen_at, v["last"]),
                    (v["ua"] or old.user_agent) if newer else (old.user_agent or v["ua"]),
                )
            )
        store.add_visitors(self.conn, new)
        store.update_visitors(self.conn, changed)


class _Reject(Exception):
    """The event names something the database does not know."""


def _clean(value: str | None, limit: int | None = None) -> str | None:
    """Text safe for both databases (no NUL), cut to the column's size."""
    if value is None:
        return None
    value = str(value).replace("\x00", "")
    return value[:limit] if limit else value


def _shape_problem(ev: Event) -> str | None:
    """Why the event cannot be stored as it is, whatever the database holds."""
    if ev.kind not in LOGGED_KINDS and ev.kind != "unsubscribe":
        return f"unsupported kind {ev.kind!r}"
    for name, value in (
        ("delivery", ev.delivery_id),
        ("message", ev.message_id),
        ("tracked URL", ev.url_id),
    ):
        if value is not None and not 0 < value <= MAX_ID:
            return f"bad {name} id {value}"
    if ev.visitor_id is not None and (
        not isinstance(ev.visitor_id, str) or len(ev.visitor_id) > VISITOR_ID_MAX
    ):
        return "bad visitor id"
    if ev.articles is not None and not -MAX_INT32 <= ev.articles <= MAX_INT32:
        return "bad articles"
    try:
        datetime.fromtimestamp(ev.t, UTC)
    except (OverflowError, ValueError, OSError):
        return "bad time"
    return None


def _row(
    ev: Event,
    present: set[int],
    messages: dict[int, store.MessageState],
    urls: dict[int, store.TrackedUrlRef],
) -> dict[str, Any]:
    """The tracking_logs (or unsubscriptions) row of an event; raises _Reject."""
    if ev.delivery_id not in present:
        raise _Reject(f"unknown delivery {ev.delivery_id}")
    recipient_id = None
    if ev.message_id is None:
        if ev.kind in ("click", "open", "opt-out", "mirror", "unsubscribe"):
            raise _Reject(f"{ev.kind} without a message")
    else:
        message = messages.get(ev.message_id)
        if message is None:
            raise _Reject(f"unknown message {ev.message_id}")
        if message.delivery_id != ev.delivery_id:
            raise _Reject(f"message {ev.message_id} is not of delivery {ev.delivery_id}")
        recipient_id = message.recipient_id
    at = datetime.fromtimestamp(ev.t, UTC)
    common = {
        "delivery_id": ev.delivery_id,
        "message_id": ev.message_id,
        "recipient_id": recipient_id,
        "at": at,
        "ip": _clean(ev.ip, 64),
        "user_agent": _clean(ev.user_agent),
    }
    if ev.kind == "unsubscribe":
        return {**common, "source": _clean(ev.source or "form", 20)}
    tracked = None
    if ev.url_id is not None:
        tracked = urls.get(ev.url_id)
        if tracked is None or tracked.delivery_id != ev.delivery_id:
            raise _Reject(f"unknown tracked URL {ev.url_id}")
    elif ev.kind == "click":
        raise _Reject("click without a tracked URL")
    return {
        **common,
        "tracked_url_id": ev.url_id,
        "type": ev.kind,
        "visitor_id": _clean(ev.visitor_id),
        "url": _destination(tracked, ev.values) if tracked is not None else None,
        "amount": ev.amount,
        "articles": ev.articles,
    }


def _destination(tracked: store.TrackedUrlRef, values: tuple[str, ...]) -> str | None:
    """The personalized destination, or None when the tracked URL is the same for all."""
    try:
        template = parse_url_template(tracked.url)
    except PersonalizationError as exc:
        raise _Reject(f"tracked URL {tracked.id} cannot be personalized") from exc
    if not template.personalized:
        return None
    try:
        return template.resolve(values)
    except ValueError as exc:
        raise _Reject(f"personalization values do not fit tracked URL {tracked.id}") from exc
