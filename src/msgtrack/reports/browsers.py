"""Browsers report (SPEC §7): visitors, pages and usage rate per browser and per major
version, and the history per day, from ``agent_buckets`` (see ``reports.agents``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from msgtrack.reports.agents import HISTORY_COLUMNS, ROW_COLUMNS, VERSION_COLUMNS, build_dimension
from msgtrack.reports.registry import Report, ReportQuery, Scope
from msgtrack.storage.tracking import delivery_header


def build(conn: Connection, scope: Scope, query: ReportQuery) -> dict[str, Any] | None:
    if scope.delivery_id is not None and delivery_header(conn, scope.delivery_id) is None:
        return None
    return build_dimension(conn, scope, query, "browser")


REPORT = Report(
    name="browsers",
    title="Browsers",
    build=build,
    tables={"rows": ROW_COLUMNS, "versions": VERSION_COLUMNS, "history": HISTORY_COLUMNS},
)
