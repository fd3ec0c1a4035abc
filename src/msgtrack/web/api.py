"""The JSON API, behind an API token (``Authorization: Bearer …``) or a signed-in session.

FastAPI is used here for its OpenAPI schema (served at ``/api/openapi.json``); the
admin side is not on the tracking hot path, so a framework costs nothing that matters.
Every list is also CSV with ``?format=csv``, streamed a page at a time.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response

from msgtrack.reports import deliveries as reports
from msgtrack.reports.indicators import delivery_indicators
from msgtrack.reports.recipients import recipient_tracking
from msgtrack.reports.registry import REPORT_NAMES
from msgtrack.web.auth import api_access
from msgtrack.web.csv import csv_response
from msgtrack.web.reporting import ReportParams, csv_rows, find_report, make_scope, run_report
from msgtrack.web.state import WebState

Format = Literal["json", "csv"]
ReportName = Literal[
    "indicators", "click-streams", "hot-clicks", "tracking-statistics", "user-activities",
    "breakdown-of-opens", "browsers", "operating-systems", "summary",
    "delivery-statistics", "non-deliverables", "throughput",
]  # fmt: skip
assert set(get_args(ReportName)) == set(REPORT_NAMES)


MAX_ID = 2**63

DELIVERY_COLUMNS = (
    "id", "name", "state", "created_at", "sent_at", "to_deliver",
    "success", "errors", "recipient_opens", "total_clicks",
)  # fmt: skip
MESSAGE_COLUMNS = (
    "id", "email", "status", "failure_type", "failure_code", "failure_reason",
    "attempts", "sent_at", "open_count", "click_count",
)  # fmt: skip
EVENT_COLUMNS = ("id", "at", "type", "url", "label", "email", "user_agent", "ip")
CLICK_COLUMNS = ("clicked_at", "url", "label", "delivery_id", "delivery_name")


def _valid_id(delivery_id: int) -> int:
    if not 0 < delivery_id < MAX_ID:
        raise HTTPException(404, "no such delivery")
    return delivery_id


def api_router(state: WebState) -> APIRouter:
    ctx = state.ctx

    require_access = api_access(state.sessions, state.ctx.reader)
    router = APIRouter(prefix="/api", dependencies=[Depends(require_access)])

    @router.get("/deliveries/{delivery_id}/indicators")
    async def indicators(delivery_id: int) -> dict[str, Any]:
        """Tracking indicators of one delivery (SPEC §6), with the per-domain table."""
        _valid_id(delivery_id)
        result = await asyncio.to_thread(delivery_indicators, ctx.reader, delivery_id)
        if result is None:
            raise HTTPException(404, "no such delivery")
        return result

    @router.get("/recipients/{email}/tracking")
    async def tracking(email: str) -> list[dict[str, Any]]:
        """Every click of one recipient across deliveries, newest first."""
        result = await asyncio.to_thread(recipient_tracking, ctx.reader, email)
        if result is None:
            raise HTTPException(404, "no such recipient")
        return result

    @router.get("/deliveries", response_model=None)
    async def deliveries(
        response: Response,
        q: str = Query("", max_length=200, description="Part of the name."),
        sort: Literal["id", "name", "created", "state"] = "id",
        order: Literal["asc", "desc"] = "desc",
        after: str | None = Query(
            None, max_length=1000, description="The cursor of the next page (its Link header)."
        ),
        limit: int = Query(50, ge=1, le=500),
        format: Format = "json",
    ) -> list[dict[str, Any]] | Response:
        """Deliveries, searched by name, sorted, a page at a time: the next page's
        address is in the ``Link: <…>; rel="next"`` header (keyset paging)."""
        descending = order == "desc"
        if format == "csv":
            rows = reports.iter_delivery_list(
                ctx.reader, search=q, sort=sort, descending=descending
            )
            return csv_response(DELIVERY_COLUMNS, rows, "deliveries.csv")
        try:
            page, cursor = await asyncio.to_thread(
                reports.delivery_list,
                ctx.reader,
                search=q,
                sort=sort,
                descending=descending,
                after=after,
                limit=limit,
            )
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        if cursor is not None:
            query = urlencode(
                {"q": q, "sort": sort, "order": order, "limit": limit, "after": cursor}
            )
            response.headers["Link"] = f'</api/deliveries?{query}>; rel="next"'
        return page

    @router.get("/deliveries/{delivery_id}", response_model=None)
    async def dashboard(
        delivery_id: int,
        status: Literal["pending", "in_flight", "sent", "failed", "unknown"] | None = None,
        after: int | None = Query(None, ge=0, lt=MAX_ID),
        limit: int = Query(50, ge=1, le=500),
        format: Format = "json",
    ) -> dict[str, Any] | Response:
        """A delivery's dashboard: state, counts by status, errors by reason, its
        messages (keyset paging with ``after``; the CSV has them all) and tracked URLs."""
        _valid_id(delivery_id)
        result = await asyncio.to_thread(
            reports.delivery_dashboard,
            ctx.reader,
            delivery_id,
            status=status,
            after=after,
            limit=limit,
        )
        if result is None:
            raise HTTPException(404, "no such delivery")
        if format == "csv":
            rows = reports.iter_messages(ctx.reader, delivery_id, status)
            return csv_response(MESSAGE_COLUMNS, rows, f"delivery-{delivery_id}-messages.csv")
        return result

    @router.get("/deliveries/{delivery_id}/tracking", response_model=None)
    async def delivery_tracking(
        delivery_id: int,
        type: Literal["click", "open", "opt-out", "mirror", "web", "transaction"] | None = None,
        before: str | None = Query(None, max_length=100, description="The `next` cursor."),
        limit: int = Query(50, ge=1, le=500),
        format: Format = "json",
    ) -> dict[str, Any] | Response:
        """The delivery's tracking events, newest first, paged with a keyset cursor."""
        _valid_id(delivery_id)
        cursor = None
        if before:
            try:
                cursor = reports.decode_cursor(before)
            except (ValueError, OverflowError):
                raise HTTPException(400, "bad cursor") from None
        result = await asyncio.to_thread(
            reports.delivery_tracking,
            ctx.reader,
            delivery_id,
            event_type=type,
            before=cursor,
            limit=limit,
        )
        if result is None:
            raise HTTPException(404, "no such delivery")
        if format == "csv":
            rows = reports.iter_tracking(ctx.reader, delivery_id, type)
            return csv_response(EVENT_COLUMNS, rows, f"delivery-{delivery_id}-tracking.csv")
        return result

    async def report_answer(
        name: str, delivery_id: int | None, params: ReportParams
    ) -> dict[str, Any] | Response:
        report = find_report(name)
        scope = make_scope(state, delivery_id, params.since, params.until)
        query = params.query()
        data, _ = await run_report(state, report, scope, query)
        if params.format == "csv":
            key, columns, rows = csv_rows(report, data, query)
            prefix = f"delivery-{delivery_id}" if delivery_id else "global"
            return csv_response(columns, rows, f"{prefix}-{name}-{key}.csv")
        return data

    @router.get("/deliveries/{delivery_id}/reports/{report}", response_model=None)
    async def delivery_report(
        delivery_id: int, report: ReportName, params: ReportParams = Depends()
    ) -> dict[str, Any] | Response:
        """One report of a delivery (issue 4's list); ``?format=csv`` exports its main
        table, or the one named by ``table``."""
        return await report_answer(report, delivery_id, params)

    @router.get("/reports/{report}", response_model=None)
    async def global_report(
        report: ReportName, params: ReportParams = Depends()
    ) -> dict[str, Any] | Response:
        """A report across the deliveries started between ``since`` and ``until`` (local
        days, inclusive; the last 30 days by default)."""
        return await report_answer(report, None, params)

    @router.get("/recipients/{email}", response_model=None)
    async def recipient(
        email: str,
        clicks_before: str | None = Query(
            None, max_length=100, description="The cursor of older clicks (clicks_next)."
        ),
        format: Format = "json",
    ) -> dict[str, Any] | Response:
        """A recipient's profile, latest messages and their clicks (its tracking tab),
        100 at a time, newest first; the CSV is every click, streamed."""
        try:
            result = await asyncio.to_thread(
                reports.recipient_profile, ctx.reader, email, clicks_before=clicks_before
            )
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        if result is None:
            raise HTTPException(404, "no such recipient")
        if format == "csv":
            rows = reports.iter_recipient_clicks(ctx.reader, email)
            return csv_response(CLICK_COLUMNS, rows, "recipient-tracking.csv")
        return result

    return router
