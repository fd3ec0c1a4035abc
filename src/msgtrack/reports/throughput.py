"""Delivery throughput: messages and bytes handed over per bin of local time, successes
versus errors, at a choosable timescale (15 minutes, 1 hour, 3 hours, a day).

Read from ``send_buckets``: per 15-minute UTC bucket of the time each message got its
final status (``messages.done_at``), successes (sent, seeds excluded) and errors
(failed), and their sizes in bytes as handed to the relay. A hard bounce turns a
success into an error in the bucket where the message was sent. Bins are local
(``MSGTRACK_TIMEZONE``) and DST-correct: each is a union of whole buckets, so a local
hour repeated in autumn is two bins and a 3-hour bin or a day across a change lasts
what the clock says (its ``hours``, which the per-hour rates divide by).
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Connection

from msgtrack.reports.indicators import half_up_div
from msgtrack.reports.registry import Report, ReportError, ReportQuery, Scope
from msgtrack.reports.timeline import MAX_BINS, iso_local, local_label
from msgtrack.storage import send_stats as store
from msgtrack.storage.tracking import delivery_header

TIMESCALES = ("15min", "1h", "3h", "day")
BUCKET = timedelta(minutes=store.BUCKET_MINUTES)
ROW_COLUMNS = (
    "start", "label", "hours", "messages", "success", "errors",
    "bytes", "success_bytes", "error_bytes", "messages_per_hour", "bytes_per_hour",
)  # fmt: skip


def bin_start(at: datetime, scale: str, tz: ZoneInfo) -> datetime:
    """The UTC start of the local bin holding the instant ``at`` (a bucket start): the
    last instant, not after it, when the clock showed the start of such a bin (a whole
    hour; a multiple of 3 hours; midnight), or jumped over one.

    A day starts at its (first) midnight. Hours and 3 hours: far from a change of the
    zone's offset this is the floor of the local time; near one, the buckets before
    ``at`` are walked back to it, so the repeated hour of autumn is its own bin and any
    change (even one of 30 or 45 minutes) splits the bins where the clock says."""
    if scale == "15min":
        return store.bucket_of(at)
    local = at.astimezone(tz)
    if scale == "day":
        return datetime.combine(local.date(), time(), tz).astimezone(UTC)
    every = 3 if scale == "3h" else 1
    if (at - timedelta(hours=every + 1)).astimezone(tz).utcoffset() == local.utcoffset():
        floored = local.replace(hour=local.hour - local.hour % every, minute=0, second=0)
        return floored.replace(microsecond=0).astimezone(UTC)
    start = store.bucket_of(at)
    for _ in range(4 * every + 12):  # a bin lasts at most its length and a change
        wall = start.astimezone(tz).replace(tzinfo=None)
        if wall.minute == 0 and wall.hour % every == 0:
            return start
        before = (start - BUCKET).astimezone(tz).replace(tzinfo=None) + BUCKET
        hour = before.replace(minute=0, second=0, microsecond=0)
        if hour < before:
            hour += timedelta(hours=1)
        while hour < wall:  # the clock jumped from ``before`` to ``wall``: over a start?
            if hour.hour % every == 0:
                return start
            hour += timedelta(hours=1)
        start -= BUCKET
    return start


def next_start(start: datetime, scale: str, tz: ZoneInfo) -> datetime:
    """The start of the bin after the one starting at ``start``: the first bucket whose
    bin starts later (a day is looked for from 22 hours on: no change of offset takes
    more than 2 hours away)."""
    if scale == "15min":
        return start + BUCKET
    probe = start + (timedelta(hours=22) if scale == "day" else BUCKET)
    while (found := bin_start(probe, scale, tz)) <= start:
        probe += BUCKET
    return found


def _per_hour(value: int, seconds: int) -> float:
    """value per hour over ``seconds``, to 2 decimals (half up)."""
    return half_up_div(value * 360_000, seconds) / 100


def build(conn: Connection, scope: Scope, query: ReportQuery) -> dict[str, Any] | None:
    scale = query.choose("timescale", TIMESCALES, "1h")
    d, tz = scope.delivery_id, scope.tz
    if d is not None and delivery_header(conn, d) is None:
        return None
    buckets = store.send_bucket_rows(conn, d, scope.since, scope.until)
    sums: dict[datetime, list[int]] = {}
    for bucket, *values in buckets:
        row = sums.setdefault(bin_start(bucket, scale, tz), [0, 0, 0, 0])
        for i, v in enumerate(values):
            row[i] += v
    rows: list[dict[str, Any]] = []
    if buckets:
        start, last = min(sums), max(sums)
        while start <= last:
            if len(rows) >= MAX_BINS:
                raise ReportError("too many bins for this timescale: choose a longer one")
            end = next_start(start, scale, tz)
            success, errors, success_bytes, error_bytes = sums.get(start, [0, 0, 0, 0])
            seconds = int((end - start).total_seconds())
            rows.append(
                {
                    "start": iso_local(start, tz),
                    "label": local_label(start, scale, tz),
                    "hours": seconds / 3600,
                    "messages": success + errors,
                    "success": success,
                    "errors": errors,
                    "bytes": success_bytes + error_bytes,
                    "success_bytes": success_bytes,
                    "error_bytes": error_bytes,
                    "messages_per_hour": _per_hour(success + errors, seconds),
                    "bytes_per_hour": _per_hour(success_bytes + error_bytes, seconds),
                }
            )
            start = end
    totals = {
        "success": sum(b[1] for b in buckets),
        "errors": sum(b[2] for b in buckets),
        "success_bytes": sum(b[3] for b in buckets),
        "error_bytes": sum(b[4] for b in buckets),
    }
    messages = totals["success"] + totals["errors"]
    first = buckets[0][0] if buckets else None
    last_end = buckets[-1][0] + BUCKET if buckets else None
    span = int((last_end - first).total_seconds()) if first and last_end else 0
    peak = max(rows, key=lambda r: r["messages_per_hour"], default=None)  # the first one
    return {
        "scope": scope.describe(),
        "timezone": tz.key,
        "timescale": scale,
        "timescales": list(TIMESCALES),
        "totals": {
            "messages": messages,
            **totals,
            "bytes": totals["success_bytes"] + totals["error_bytes"],
            "first_at": iso_local(first, tz),
            "last_at": iso_local(last_end, tz),
            "hours": span / 3600,
            "messages_per_hour": _per_hour(messages, span),
            "peak_messages_per_hour": peak["messages_per_hour"] if peak else 0.0,
            "peak_start": peak["start"] if peak else None,
        },
        "rows": rows,
    }


REPORT = Report(
    name="throughput",
    title="Delivery throughput",
    build=build,
    tables={"rows": ROW_COLUMNS},
)
