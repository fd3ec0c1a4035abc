"""Hour buckets grouped by local calendar day in SQL, on both backends.

A report that shows days in ``MSGTRACK_TIMEZONE`` would otherwise fetch one row per
hour and name and convert each in Python (3,500 rows for one delivery's browsers).
PostgreSQL knows the IANA zones: ``timezone(zone, bucket)`` is the local time. SQLite
does not, so the range is cut into spans where the zone's UTC offset is constant (a
change happens at most twice a year) and each span is grouped on
``date(bucket, '+N seconds')``. Either way a bucket falls in the local day of its start,
as ``bucket.astimezone(tz).date()`` would put it.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Date, cast, func
from sqlalchemy.engine import Connection

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def _offset(at: datetime, tz: ZoneInfo) -> int:
    offset = at.astimezone(tz).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def offset_spans(
    first: datetime, last: datetime, tz: ZoneInfo
) -> list[tuple[datetime, datetime, int]]:
    """[start, end) UTC spans covering the hours ``first`` .. ``last`` (aware, on the
    hour) in which ``tz``'s UTC offset stays the same, each with that offset in seconds."""
    spans = []
    start = t = first
    offset = _offset(first, tz)
    while t <= last:
        if _offset(t + DAY, tz) == offset:  # no change within the day (zones change twice a year)
            t += DAY
            continue
        t += HOUR
        if _offset(t, tz) != offset:
            spans.append((start, t, offset))
            start, offset = t, _offset(t, tz)
    spans.append((start, t, offset))
    return spans


def day_groups(
    conn: Connection, bucket: Any, first: datetime, last: datetime, tz: ZoneInfo
) -> list[tuple[Any, datetime | None, datetime | None]]:
    """(local day expression, span start, span end) pairs to group ``bucket`` by: one
    for PostgreSQL (no bounds), one per constant-offset span on SQLite."""
    if conn.dialect.name == "postgresql":
        return [(cast(func.timezone(tz.key, bucket), Date), None, None)]
    return [
        (func.date(bucket, f"{offset:+d} seconds"), start, end)
        for start, end, offset in offset_spans(first, last, tz)
    ]


def as_date(value: Any) -> date:
    """What a day expression returns (a date on PostgreSQL, 'YYYY-MM-DD' on SQLite)."""
    return value if isinstance(value, date) else date.fromisoformat(str(value))
