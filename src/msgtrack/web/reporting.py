"""Running a report for a route: the scope from the address, the query from its
parameters, the build in a worker thread. The page and the API call share this, so they
show the same numbers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from fastapi import HTTPException, Query

from msgtrack.reports.catalog import REPORTS
from msgtrack.reports.registry import (
    DEFAULT_GLOBAL_DAYS,
    Report,
    ReportError,
    ReportQuery,
    Scope,
    date_range,
)
from msgtrack.storage.tracking import delivery_header
from msgtrack.web.state import WebState

MAX_ID = 2**63


@dataclass
class ReportParams:
    """The query parameters of every report (each report reads the ones it has)."""

    since: date | None = Query(None, description="First local day (global reports).")
    until: date | None = Query(None, description="Last local day, inclusive.")
    timescale: str | None = Query(None, max_length=20, description="e.g. 1h, 3h, 24h.")
    view: str | None = Query(None, max_length=20, description="e.g. label, url, category.")
    period: str | None = Query(None, max_length=20, description="e.g. launch, 6h, 24h, 7d.")
    mobile: bool = False
    table: str | None = Query(None, max_length=40, description="The table ?format=csv exports.")
    format: Literal["json", "csv"] = "json"  # the API's; pages ignore it

    def query(self) -> ReportQuery:
        return ReportQuery(self.timescale, self.view, self.period, self.mobile, self.table)


def find_report(name: str) -> Report:
    report = REPORTS.get(name)
    if report is None:
        raise HTTPException(404, "no such report")
    return report


def make_scope(
    state: WebState, delivery_id: int | None, since: date | None, until: date | None
) -> Scope:
    """A delivery's report covers all its events unless a range is given; a global one
    covers the last ``DEFAULT_GLOBAL_DAYS`` days unless told otherwise."""
    if delivery_id is not None and not 0 < delivery_id < MAX_ID:
        raise HTTPException(404, "no such delivery")
    try:
        start, end = date_range(
            state.zone,
            since,
            until,
            default_days=DEFAULT_GLOBAL_DAYS if delivery_id is None else None,
        )
    except ReportError as exc:
        raise HTTPException(400, str(exc)) from None
    return Scope(delivery_id, start, end, state.zone)


async def run_report(
    state: WebState, report: Report, scope: Scope, query: ReportQuery
) -> tuple[dict[str, Any], str]:
    """The report's data and the delivery's name ("" for a global report); 404 for an
    unknown delivery, 400 for a query the report cannot use."""

    def build() -> tuple[dict[str, Any] | None, str]:
        with state.ctx.reader.connect() as conn:
            name = ""
            if scope.delivery_id is not None:
                header = delivery_header(conn, scope.delivery_id)
                if header is None:
                    return None, ""
                name = header.name
            return report.build(conn, scope, query), name

    try:
        data, name = await asyncio.to_thread(build)
    except ReportError as exc:
        raise HTTPException(400, str(exc)) from None
    if data is None:
        raise HTTPException(404, "no such delivery")
    return data, name


def csv_rows(report: Report, data: dict[str, Any], query: ReportQuery) -> tuple[str, Any, Any]:
    """(table key, columns, rows) of what ``?format=csv`` exports."""
    try:
        key, columns = report.csv_table(query)
    except ReportError as exc:
        raise HTTPException(400, str(exc)) from None
    return key, columns, data.get(key) or []
