"""What the browsers and operating-systems reports share: one builder over one dimension
of ``agent_buckets`` (visitors, pages, opens per name and per major version, and their
history per local day).

A visitor is a browser known by its cookie, or (no cookie: a mail client loading the
open beacon) a message read with one user agent; each is counted once per delivery, under
the agent of its first event. A global report sums the deliveries' visitors. Pages are all
tracking events (opens, clicks, mirror and web pages) made with the agent.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from msgtrack.reports.indicators import rate
from msgtrack.reports.registry import Report, ReportQuery, Scope
from msgtrack.storage import agents as store
from msgtrack.storage.tracking import delivery_header

CHART_SERIES = 5  # names drawn in the history chart; the rest is one "Others" series
OTHERS = "Others"

ROW_COLUMNS = ("name", "visitors", "pages", "opens", "usage_rate")
VERSION_COLUMNS = ("name", "version", "visitors", "pages", "opens", "usage_rate")
HISTORY_COLUMNS = ("day", "name", "visitors", "pages")


def _ranked(sums: dict[Any, list[int]]) -> list[tuple[Any, list[int]]]:
    """Most visitors first, then most pages, then by name, so the order is stable."""
    return sorted(sums.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))


def build_dimension(
    conn: Connection, scope: Scope, query: ReportQuery, dimension: str
) -> dict[str, Any]:
    """The report for ``dimension`` ('browser' or 'os') over the scope (the caller has
    checked that the delivery exists). Reads only ``agent_buckets``."""
    totals = store.agent_totals(conn, scope.delivery_id, scope.since, scope.until, dimension)
    by_name: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    by_version: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for t in totals:
        for sums in (by_name[t.name], by_version[(t.name, t.version)]):
            sums[0] += t.visitors
            sums[1] += t.events
            sums[2] += t.opens
    visitors = sum(s[0] for s in by_name.values())
    rows = [
        {
            "name": name,
            "visitors": v,
            "pages": p,
            "opens": o,
            "usage_rate": rate(v, visitors),
        }
        for name, (v, p, o) in _ranked(by_name)
    ]
    order = {r["name"]: i for i, r in enumerate(rows)}
    versions = [
        {
            "name": name,
            "version": version,
            "visitors": v,
            "pages": p,
            "opens": o,
            "usage_rate": rate(v, visitors),
        }
        for (name, version), (v, p, o) in sorted(
            _ranked(by_version), key=lambda kv: order[kv[0][0]]
        )
    ]
    history, chart = _history(conn, scope, dimension, [r["name"] for r in rows])
    return {
        "scope": scope.describe(),
        "timezone": scope.tz.key,
        "dimension": dimension,
        "totals": {
            "visitors": visitors,
            "pages": sum(r["pages"] for r in rows),
            "opens": sum(r["opens"] for r in rows),
        },
        "rows": rows,
        "versions": versions,
        "history": history,
        "history_chart": chart,
    }


def _history(
    conn: Connection, scope: Scope, dimension: str, ranked: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Visitors and pages per local day and name (hour buckets fall in the day of their
    start in ``scope.tz``), and the same pivoted for the chart: pages per day of the top
    names, every day from the first to the last shown (empty ones at 0)."""
    days = {
        (a.day, a.name): (a.visitors, a.events)
        for a in store.agent_days(
            conn, scope.delivery_id, scope.since, scope.until, dimension, scope.tz
        )
    }
    history = [
        {"day": day.isoformat(), "name": name, "visitors": v, "pages": p}
        for (day, name), (v, p) in sorted(days.items())
        if v or p
    ]
    names = ranked[:CHART_SERIES] + ([OTHERS] if len(ranked) > CHART_SERIES else [])
    column = {name: min(i, CHART_SERIES) for i, name in enumerate(ranked)}
    pages: dict[date, list[int]] = {}
    for (day, name), (_, p) in days.items():
        pages.setdefault(day, [0] * len(names))[column[name]] += p
    chart_days = []
    if pages:
        day, last = min(pages), max(pages)
        while day <= last:
            chart_days.append({"day": day.isoformat(), "pages": pages.get(day, [0] * len(names))})
            day += timedelta(days=1)
    return history, {"names": names, "days": chart_days}


def dimension_report(name: str, title: str, dimension: str) -> Report:
    """The report of one dimension ('browser' or 'os') of ``agent_buckets``."""

    def build(conn: Connection, scope: Scope, query: ReportQuery) -> dict[str, Any] | None:
        if scope.delivery_id is not None and delivery_header(conn, scope.delivery_id) is None:
            return None
        return build_dimension(conn, scope, query, dimension)

    return Report(
        name=name,
        title=title,
        build=build,
        tables={"rows": ROW_COLUMNS, "versions": VERSION_COLUMNS, "history": HISTORY_COLUMNS},
    )
