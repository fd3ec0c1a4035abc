"""Hour buckets grouped by local day in SQL (storage.localdays) agree with converting
each bucket in Python, across daylight-saving changes, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from msgtrack.context import Context
from msgtrack.storage import agents
from msgtrack.storage.localdays import offset_spans

HOUR = timedelta(hours=1)


def test_spans_split_at_each_offset_change() -> None:
    paris = ZoneInfo("Europe/Paris")
    first = datetime(2026, 3, 27, 0, tzinfo=UTC)
    last = datetime(2026, 10, 27, 0, tzinfo=UTC)
    spans = offset_spans(first, last, paris)
    # Summer time from 2026-03-29 01:00 UTC to 2026-10-25 01:00 UTC.
    assert [(s, o) for s, _, o in spans] == [
        (first, 3600),
        (datetime(2026, 3, 29, 1, tzinfo=UTC), 7200),
        (datetime(2026, 10, 25, 1, tzinfo=UTC), 3600),
    ]
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert spans[-1][1] > last
    assert offset_spans(first, first, ZoneInfo("UTC")) == [(first, first + timedelta(days=1), 0)]


@pytest.mark.parametrize("zone", ["Europe/Paris", "America/New_York", "Asia/Kolkata", "UTC"])
def test_agent_days_equal_python_conversion(ctx: Context, zone: str) -> None:
    tz = ZoneInfo(zone)
    # Every hour around both 2026 changes of Paris and New York, two names.
    hours = [datetime(2026, 3, 7, 0, tzinfo=UTC) + i * HOUR for i in range(24 * 24)]
    hours += [datetime(2026, 10, 23, 0, tzinfo=UTC) + i * HOUR for i in range(24 * 12)]
    rows = [
        {
            "delivery_id": 7,
            "bucket": at,
            "dimension": "browser",
            "name": name,
            "version": "1",
            "device_class": "desktop",
            "events": 1 + i % 5,
            "opens": 0,
            "clicks": 0,
            "visitors": i % 3,
        }
        for i, at in enumerate(hours)
        for name in ("Firefox", "Safari")
    ]
    with ctx.engine.begin() as conn:
        agents.add_to_buckets(conn, rows)
    expected: dict[tuple[object, str], list[int]] = {}
    for r in rows:
        sums = expected.setdefault((r["bucket"].astimezone(tz).date(), r["name"]), [0, 0])
        sums[0] += r["events"]
        sums[1] += r["visitors"]
    with ctx.engine.connect() as conn:
        got = agents.agent_days(conn, 7, None, None, "browser", tz)
    assert {(a.day, a.name): [a.events, a.visitors] for a in got} == expected
    assert [(a.day, a.name) for a in got] == sorted(expected)
