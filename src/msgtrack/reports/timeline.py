"""Time arithmetic shared by the reports over time: where a delivery's clock starts, the
"since the send" periods, and local (``MSGTRACK_TIMEZONE``) half-hours, hours and days.

Events are counted in 15-minute UTC buckets (``event_buckets``); every coarser bin is a
union of whole buckets, so sums never split a bucket. Local bins are built by converting
each bucket to the zone and flooring there, which is what makes them DST-correct: the
day of a change has 23 or 25 hours and the repeated hour of autumn stays two hours.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from msgtrack.reports.registry import ReportError
from msgtrack.storage.buckets import DeliveryTimes, bucket_of

# "Since the send" filters of the click streams: how long after the send start counts.
PERIODS: dict[str, timedelta | None] = {
    "launch": None,
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
# A chart beyond this many bins asks for a coarser timescale instead.
MAX_BINS = 20_000


def send_start(times: DeliveryTimes) -> datetime | None:
    """When a delivery's clock starts: its send start (``started_at``), else when it
    finished sending, else its first tracked event; None when it has none of them."""
    return times.started_at or times.sent_at or times.first_bucket


def period_end(start: datetime | None, period: str) -> datetime | None:
    """The first bucket a period leaves out (None: no limit). The start is floored to
    its bucket, so a period is a whole number of buckets."""
    length = PERIODS[period]
    if length is None or start is None:
        return None
    return bucket_of(start) + length


def months_before(at: datetime, months: int) -> datetime:
    """The same instant ``months`` calendar months earlier (the day clamped to the
    month's length)."""
    index = at.year * 12 + at.month - 1 - months
    year, month = divmod(index, 12)
    month += 1
    for day in range(at.day, 27, -1):
        try:
            return at.replace(year=year, month=month, day=day)
        except ValueError:
            continue
    return at.replace(year=year, month=month, day=min(at.day, 28))


def local_bin(bucket: datetime, scale: str, tz: ZoneInfo) -> datetime:
    """The UTC start of the local half-hour, hour or day (``30min``, ``1h``, ``day``)
    that holds a bucket."""
    local = bucket.astimezone(tz)
    if scale == "day":
        return datetime.combine(local.date(), time(), tz).astimezone(UTC)
    minutes = 30 if scale == "30min" else 60
    floored = local.replace(minute=local.minute - local.minute % minutes, second=0, microsecond=0)
    return floored.astimezone(UTC)


def local_bins(first: datetime, last: datetime, scale: str, tz: ZoneInfo) -> Iterator[datetime]:
    """Every local bin from the one holding ``first`` to the one holding ``last``, as
    UTC starts, gaps included."""
    current = local_bin(first, scale, tz)
    end = local_bin(last, scale, tz)
    count = 0
    while current <= end:
        yield current
        count += 1
        if count > MAX_BINS:
            raise ReportError("too many bins for this timescale: choose a longer one")
        if scale == "day":
            day: date = current.astimezone(tz).date() + timedelta(days=1)
            current = datetime.combine(day, time(), tz).astimezone(UTC)
        else:
            step = timedelta(minutes=30 if scale == "30min" else 60)
            current = local_bin(current + step, scale, tz)


def local_label(start: datetime, scale: str, tz: ZoneInfo) -> str:
    """How a bin is labelled on charts: the local date, or date and time."""
    local = start.astimezone(tz)
    if scale == "day":
        return local.date().isoformat()
    label = local.strftime("%Y-%m-%d %H:%M")
    if local.replace(fold=1 - local.fold).utcoffset() != local.utcoffset():
        label += f" {local.tzname()}"  # the repeated hour of a DST change: say which
    return label


def iso_local(at: datetime | None, tz: ZoneInfo) -> str | None:
    """An instant as ISO 8601 in the report's zone (offset included)."""
    return None if at is None else at.astimezone(tz).isoformat()


def duration_text(seconds: int) -> str:
    """``2 d 3 h 15 min``: how long, for people."""
    minutes = max(seconds, 0) // 60
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{days} d"] if days else []
    if hours:
        parts.append(f"{hours} h")
    if minutes or not parts:
        parts.append(f"{minutes} min")
    return " ".join(parts)
