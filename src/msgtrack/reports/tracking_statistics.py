"""Tracking statistics: opens, clicks and transactions per 1 h, 3 h or 24 h since the
send, the cumulative curve, and how long it took to reach 50, 80 and 90 % of all opens
and of all clicks.

Bins count from the send start (floored to its 15-minute bucket), not from midnight:
"the first 3 hours" is what people compare across deliveries. Milestones are read on
the 15-minute buckets, so they are precise to 15 minutes whatever the timescale; a
milestone is reached at the end of the bucket where the running total crosses it.
A global report starts its clock at the start of its date range.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from msgtrack.reports.indicators import rate
from msgtrack.reports.registry import Report, ReportError, ReportQuery, Scope
from msgtrack.reports.timeline import MAX_BINS, duration_text, iso_local, send_start
from msgtrack.storage import buckets as store

TIMESCALES = {"1h": timedelta(hours=1), "3h": timedelta(hours=3), "24h": timedelta(hours=24)}
METRICS = {"open": "opens", "click": "clicks", "transaction": "transactions"}
MILESTONES = (50, 80, 90)

ROW_COLUMNS = (
    "start", "hours_since_send", "opens", "clicks", "transactions", "amount",
    "cumulated_opens", "cumulated_clicks", "cumulated_opens_percent",
    "cumulated_clicks_percent",
)  # fmt: skip
MILESTONE_COLUMNS = ("metric", "percent", "reached_at", "elapsed_seconds", "elapsed")


def build(conn: Connection, scope: Scope, query: ReportQuery) -> dict[str, Any] | None:
    scale = query.choose("timescale", tuple(TIMESCALES), "1h")
    if scope.delivery_id is not None:
        times = store.delivery_times(conn, scope.delivery_id)
        if times is None:
            return None
        start = send_start(times)
    else:
        start = scope.since or store.global_start(conn, scope.since, scope.until)
    rows = store.series(conn, scope.delivery_id, METRICS, since=scope.since, until=scope.until)
    totals = {name: 0 for name in METRICS.values()}
    for metric, _, n, _, _ in rows:
        totals[METRICS[metric]] += n
    return {
        "scope": scope.describe(),
        "timezone": scope.tz.key,
        "timescale": scale,
        "timescales": list(TIMESCALES),
        "start": iso_local(start, scope.tz),
        "totals": totals,
        "rows": _bins(rows, start, TIMESCALES[scale], totals, scope) if start else [],
        "milestones": _milestones(rows, start, totals, scope) if start else [],
    }


def _bins(
    rows: list[tuple[str, datetime, int, float, int]],
    start: datetime,
    size: timedelta,
    totals: dict[str, int],
    scope: Scope,
) -> list[dict[str, Any]]:
    """Per bin since the send (gaps included), with running totals."""
    if not rows:
        return []
    origin = store.bucket_of(start)
    counts: dict[int, list[float]] = {}
    for metric, bucket, n, amount, _ in rows:
        k = (bucket - origin) // size
        bin_counts = counts.setdefault(k, [0, 0, 0, 0.0])
        bin_counts[list(METRICS).index(metric)] += n
        if metric == "transaction":
            bin_counts[3] += amount
    first, last = min(counts), max(counts)
    if last - first >= MAX_BINS:
        raise ReportError("too many bins for this timescale: choose a longer one")
    out = []
    opens = clicks = 0
    for k in range(first, last + 1):
        o, c, t, amount = counts.get(k, [0, 0, 0, 0.0])
        opens += int(o)
        clicks += int(c)
        out.append(
            {
                "start": iso_local(origin + k * size, scope.tz),
                "hours_since_send": k * size // timedelta(hours=1),
                "opens": int(o),
                "clicks": int(c),
                "transactions": int(t),
                "amount": round(amount, 2),
                "cumulated_opens": opens,
                "cumulated_clicks": clicks,
                "cumulated_opens_percent": rate(opens, totals["opens"]),
                "cumulated_clicks_percent": rate(clicks, totals["clicks"]),
            }
        )
    return out


def _milestones(
    rows: list[tuple[str, datetime, int, float, int]],
    start: datetime,
    totals: dict[str, int],
    scope: Scope,
) -> list[dict[str, Any]]:
    """When the running total of opens / clicks first reached each share of its total."""
    out = []
    for metric in ("open", "click"):
        name = METRICS[metric]
        total = totals[name]
        running = 0
        pending = list(MILESTONES)
        for m, bucket, n, _, _ in rows:
            if m != metric:
                continue
            running += n
            while pending and running * 100 >= pending[0] * total:
                reached = bucket + store.BUCKET
                seconds = max(int((reached - start).total_seconds()), 0)
                out.append(
                    {
                        "metric": name,
                        "percent": pending.pop(0),
                        "reached_at": iso_local(reached, scope.tz),
                        "elapsed_seconds": seconds,
                        "elapsed": duration_text(seconds),
                    }
                )
        for percent in pending:  # nothing counted yet
            out.append(
                {
                    "metric": name,
                    "percent": percent,
                    "reached_at": None,
                    "elapsed_seconds": None,
                    "elapsed": None,
                }
            )
    return out


REPORT = Report(
    name="tracking-statistics",
    title="Tracking statistics",
    build=build,
    tables={"rows": ROW_COLUMNS, "milestones": MILESTONE_COLUMNS},
)
