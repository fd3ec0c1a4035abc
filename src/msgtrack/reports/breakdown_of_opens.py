"""Breakdown of opens (SPEC §7): open events (beacon loads) by browser, by operating
system or by device class (``?view=browser|os|device``), all of them or only those made
on a phone or a tablet (``?mobile=true``), from ``agent_buckets``.

The beacon is loaded by whatever renders the message, so "browser" here is mostly the mail
client (Outlook, Apple Mail, Thunderbird, a webmail's browser or image proxy).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy.engine import Connection

from msgtrack.reports.indicators import rate
from msgtrack.reports.registry import Report, ReportQuery, Scope
from msgtrack.storage import agents as store
from msgtrack.storage.tracking import delivery_header

VIEWS = ("browser", "os", "device")
VIEW_TITLES = {"browser": "Browser", "os": "Operating system", "device": "Device"}


def build(conn: Connection, scope: Scope, query: ReportQuery) -> dict[str, Any] | None:
    view = query.choose("view", VIEWS, "browser")
    if scope.delivery_id is not None and delivery_header(conn, scope.delivery_id) is None:
        return None
    # Device classes are read from the browser rows: every event has exactly one.
    dimension = "os" if view == "os" else "browser"
    opens: dict[str, int] = defaultdict(int)
    for t in store.agent_totals(
        conn, scope.delivery_id, scope.since, scope.until, dimension, handheld_only=query.mobile
    ):
        if t.opens:
            opens[t.device_class if view == "device" else t.name] += t.opens
    total = sum(opens.values())
    return {
        "scope": scope.describe(),
        "timezone": scope.tz.key,
        "view": view,
        "views": list(VIEWS),
        "mobile": query.mobile,
        "total_opens": total,
        "rows": [
            {"name": name, "opens": n, "share": rate(n, total)}
            for name, n in sorted(opens.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
    }


REPORT = Report(
    name="breakdown-of-opens",
    title="Breakdown of opens",
    build=build,
    tables={"rows": ("name", "opens", "share")},
)
