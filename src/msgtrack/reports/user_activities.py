"""User activities: opens, clicks and transactions per local half-hour, hour or day.

Unlike the tracking statistics (time since the send), these bins are wall-clock ones in
the configured zone: when people read and click. Each 15-minute UTC bucket lands in the
local bin that holds it (``timeline.local_bin``), so a Paris day runs from 23:00 or
22:00 UTC depending on the season.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from msgtrack.reports.registry import Report, ReportQuery, Scope
from msgtrack.reports.timeline import iso_local, local_bin, local_bins, local_label
from msgtrack.storage import buckets as store

TIMESCALES = ("30min", "1h", "day")
METRICS = ("open", "click", "transaction")
COLUMNS = ("label", "start", "opens", "clicks", "transactions", "amount")


def build(conn: Connection, scope: Scope, query: ReportQuery) -> dict[str, Any] | None:
    scale = query.choose("timescale", TIMESCALES, "1h")
    if scope.delivery_id is not None and store.delivery_times(conn, scope.delivery_id) is None:
        return None
    rows = store.series(conn, scope.delivery_id, METRICS, since=scope.since, until=scope.until)
    counts: dict[Any, list[float]] = {}
    for metric, bucket, n, amount, _ in rows:
        bin_counts = counts.setdefault(local_bin(bucket, scale, scope.tz), [0, 0, 0, 0.0])
        bin_counts[METRICS.index(metric)] += n
        if metric == "transaction":
            bin_counts[3] += amount
    out = []
    if counts:
        for start in local_bins(min(counts), max(counts), scale, scope.tz):
            o, c, t, amount = counts.get(start, [0, 0, 0, 0.0])
            out.append(
                {
                    "label": local_label(start, scale, scope.tz),
                    "start": iso_local(start, scope.tz),
                    "opens": int(o),
                    "clicks": int(c),
                    "transactions": int(t),
                    "amount": round(amount, 2),
                }
            )
    return {
        "scope": scope.describe(),
        "timezone": scope.tz.key,
        "timescale": scale,
        "timescales": list(TIMESCALES),
        "totals": {
            "opens": sum(r["opens"] for r in out),
            "clicks": sum(r["clicks"] for r in out),
            "transactions": sum(r["transactions"] for r in out),
        },
        "rows": out,
    }


REPORT = Report(
    name="user-activities",
    title="User activities",
    build=build,
    tables={"rows": COLUMNS},
)
