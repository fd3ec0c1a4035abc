"""URLs and click streams: reactivity and click rates against the platform average,
clicks per link (by label, URL or category) with their share, clicks per local day, for
the whole tracking time or only the first 6 h, 24 h or 7 days after the send.

Everything is read from the time buckets, so a period is a sum over the buckets that
start before its end: click events for the totals and links, and the firsts
(recipient_open, recipient_click, person_click) for the distinct counts, which gives the
rates "as they stood" at the end of the period. Success (the divisor) is the delivery's.

The platform average is pooled (sum of numerators over sum of denominators) over the
delivery_indicators of the deliveries of the same channel and typology whose sending
started in the six months before this one's, proofs excluded; it is the whole-time
average whatever the period. Global reports have no platform average and no period.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_
from sqlalchemy.engine import Connection

from msgtrack.reports.indicators import rate
from msgtrack.reports.registry import Report, ReportError, ReportQuery, Scope
from msgtrack.reports.timeline import (
    PERIODS,
    iso_local,
    local_bin,
    local_bins,
    local_label,
    months_before,
    period_end,
    send_start,
)
from msgtrack.storage import buckets as store
from msgtrack.storage.reports import deliveries_in_range
from msgtrack.storage.schema import deliveries

VIEWS = ("label", "url", "category")
AVERAGE_MONTHS = 6
FIRSTS = ("click", "recipient_open", "recipient_click", "person_click")
RATE_COLUMNS = ("indicator", "value", "platform_average")
LINK_COLUMNS = ("key", "clicks", "percent")
DAY_COLUMNS = ("day", "clicks")
# rate name -> (numerator, divisor) among the counters
RATES = {
    "raw_reactivity": ("recipient_clicks", "recipient_opens"),
    "distinct_click_rate": ("person_clicks", "success"),
    "cumulated_click_rate": ("total_clicks", "success"),
}
RATE_TITLES = {
    "raw_reactivity": "Raw reactivity (%)",
    "distinct_click_rate": "Distinct click rate (%)",
    "cumulated_click_rate": "Cumulated click rate (%)",
}


def build(conn: Connection, scope: Scope, query: ReportQuery) -> dict[str, Any] | None:
    view = query.choose("view", VIEWS, "label")
    period = query.choose("period", tuple(PERIODS), "launch")
    did = scope.delivery_id
    start: datetime | None = None
    average: dict[str, float] | None = None
    pool = 0
    if did is not None:
        times = store.delivery_times(conn, did)
        if times is None:
            return None
        start = send_start(times)
        success = store.indicator_sums(conn, [did], ["success"])["success"]
        if times.typology != "proof" and start is not None:
            average, pool = _platform_average(conn, did, times.channel, times.typology, start)
    else:
        if period != "launch":
            raise ReportError("the period filter applies to one delivery's report")
        ids = deliveries_in_range(scope.since, scope.until)
        success = store.indicator_sums(conn, ids, ["success"])["success"]
    before = period_end(start, period)
    span = {"since": scope.since, "until": scope.until, "before": before}
    firsts = store.totals(conn, did, FIRSTS, **span)
    counters = {
        "recipient_opens": firsts["recipient_open"],
        "recipient_clicks": firsts["recipient_click"],
        "person_clicks": firsts["person_click"],
        "total_clicks": firsts["click"],
        "success": success,
    }
    rates = [
        {
            "indicator": name,
            "title": RATE_TITLES[name],
            "value": rate(counters[num], counters[div]),
            "platform_average": average[name] if average is not None else None,
        }
        for name, (num, div) in RATES.items()
    ]
    links = _links(conn, did, view, span)
    days = _days(store.series(conn, did, ["click"], **span), scope)
    return {
        "scope": scope.describe(),
        "timezone": scope.tz.key,
        "view": view,
        "views": list(VIEWS),
        "period": period,
        "periods": list(PERIODS),
        "start": iso_local(start, scope.tz),
        "period_end": iso_local(before, scope.tz),
        "counters": counters,
        "rates": rates,
        "platform_deliveries": pool,
        "links": links,
        "days": days,
    }


def _platform_average(
    conn: Connection, delivery_id: int, channel: str, typology: str, start: datetime
) -> tuple[dict[str, float], int]:
    """Pooled rates over the peers of the six months before ``start`` (this one excluded)."""
    pool = store.peers(conn, channel, typology, months_before(start, AVERAGE_MONTHS), start)
    pool = pool.where(and_(deliveries.c.id != delivery_id))
    names = sorted({n for pair in RATES.values() for n in pair})
    sums = store.indicator_sums(conn, pool, names)
    count = len(conn.execute(pool).all())
    return {name: rate(sums[num], sums[div]) for name, (num, div) in RATES.items()}, count


def _links(
    conn: Connection, delivery_id: int | None, view: str, span: dict[str, Any]
) -> list[dict[str, Any]]:
    """Clicks per label, URL or category, most first, with their share of all clicks.
    A delivery's links that nobody clicked are listed with 0."""
    rows = store.events_per_url(conn, delivery_id, ["click"], **span)
    if delivery_id is not None:
        clicked = {r.tracked_url_id for r in rows}
        rows += [
            r for r in store.delivery_links(conn, delivery_id) if r.tracked_url_id not in clicked
        ]
    grouped: dict[str, int] = {}
    for r in rows:
        if view == "url":
            key = r.url
        elif view == "category":
            key = r.category or "(none)"
        else:
            key = r.label or r.url
        grouped[key] = grouped.get(key, 0) + r.clicks
    total = sum(grouped.values())
    ordered = sorted(grouped.items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"key": k, "clicks": n, "percent": rate(n, total)} for k, n in ordered]


def _days(rows: list[tuple[str, datetime, int, float, int]], scope: Scope) -> list[dict[str, Any]]:
    """Clicks per local day, days without clicks included."""
    counts: dict[datetime, int] = {}
    for _, bucket, n, _, _ in rows:
        day = local_bin(bucket, "day", scope.tz)
        counts[day] = counts.get(day, 0) + n
    if not counts:
        return []
    return [
        {"day": local_label(day, "day", scope.tz), "clicks": counts.get(day, 0)}
        for day in local_bins(min(counts), max(counts), "day", scope.tz)
    ]


REPORT = Report(
    name="click-streams",
    title="URLs and click streams",
    build=build,
    tables={"links": LINK_COLUMNS, "rates": RATE_COLUMNS, "days": DAY_COLUMNS},
)
