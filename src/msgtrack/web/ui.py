"""The web pages: sign-in, deliveries, a delivery's dashboard, tracking tab and
indicators, recipient profiles. Each page shows what its API twin returns."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from msgtrack.reports import deliveries as reports
from msgtrack.reports.indicators import delivery_indicators
from msgtrack.storage.deliveries import set_tracked_url
from msgtrack.storage.users import authenticate
from msgtrack.web.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Session,
    same_token,
)
from msgtrack.web.state import WebState

MAX_FORM_BYTES = 64 * 1024
# The SPEC §6 table, in its order, with the names people read.
INDICATOR_ROWS = (
    ("to_deliver", "To deliver"),
    ("success", "Success"),
    ("errors", "Errors"),
    ("text_only", "Text-only messages"),
    ("recipient_opens", "Recipient opens"),
    ("estimated_recipient_opens", "Estimated recipient opens"),
    ("total_opens", "Total opens"),
    ("estimated_total_opens", "Estimated total opens"),
    ("recipient_clicks", "Recipient clicks"),
    ("person_clicks", "Person clicks"),
    ("forwards", "Forwards"),
    ("total_clicks", "Total clicks"),
    ("raw_reactivity", "Raw reactivity (%)"),
    ("estimated_reactivity", "Estimated reactivity (%)"),
    ("distinct_click_rate", "Distinct click rate (%)"),
    ("cumulated_click_rate", "Cumulated click rate (%)"),
    ("opt_outs", "Opt-outs"),
    ("unsubscriptions", "Unsubscriptions"),
    ("mirror_views", "Mirror page views"),
    ("hard_bounces", "Hard bounces"),
    ("soft_bounces", "Soft bounces"),
    ("complaints", "Complaints"),
    ("new_quarantines", "New quarantines"),
)


class SignInRequired(Exception):
    """Raised by a page when nobody is signed in: the app answers with a redirect."""


async def read_form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "form too large")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


def ui_router(state: WebState) -> APIRouter:
    ctx = state.ctx
    router = APIRouter(include_in_schema=False)

    def session_of(request: Request) -> Session:
        session = state.signer.read(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise SignInRequired()
        return session

    def secure(request: Request) -> bool:
        """Secure cookies when the admin is reached over https (or announced so)."""
        return state.secure_cookies or request.url.scheme == "https"

    def page(name: str, session: Session | None, **values: Any) -> HTMLResponse:
        html = state.templates.get_template(name).render(session=session, **values)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def checked_form(request: Request, session: Session) -> dict[str, str]:
        form = await read_form(request)
        if not same_token(session.csrf, form.get("csrf")):
            raise HTTPException(403, "missing or wrong CSRF token")
        return form

    @router.get("/")
    async def home(request: Request) -> Response:
        session_of(request)
        return RedirectResponse("/deliveries", 303)

    @router.get("/signin")
    async def signin_form(request: Request, error: str = "") -> Response:
        token = secrets.token_urlsafe(24)
        response = page("signin.html", None, csrf=token, error=error == "1")
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            token,
            max_age=3600,
            httponly=True,
            samesite="lax",
            secure=secure(request),
            path="/signin",
        )
        return response

    @router.post("/signin")
    async def signin(request: Request) -> Response:
        form = await read_form(request)
        if not same_token(request.cookies.get(LOGIN_CSRF_COOKIE), form.get("csrf")):
            raise HTTPException(403, "missing or wrong CSRF token")
        name, password = form.get("username", ""), form.get("password", "")

        def check() -> Any:
            with ctx.engine.begin() as conn:
                return authenticate(conn, name, password)

        user = await asyncio.to_thread(check) if name and password else None
        if user is None:
            return RedirectResponse("/signin?error=1", 303)
        cookie, _ = state.signer.issue(user.id, user.name)
        response = RedirectResponse("/deliveries", 303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="lax",
            secure=secure(request),
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/signin")
        return response

    @router.post("/signout")
    async def signout(request: Request) -> Response:
        await checked_form(request, session_of(request))
        response = RedirectResponse("/signin", 303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @router.get("/deliveries")
    async def deliveries(
        request: Request,
        q: str = "",
        sort: str = "id",
        order: str = "desc",
        page_number: int = 1,
    ) -> Response:
        session = session_of(request)
        if sort not in reports.store.DELIVERY_SORTS:
            sort = "id"
        descending = order != "asc"
        page_number = max(1, min(page_number, 1_000_000))
        rows = await asyncio.to_thread(
            reports.delivery_list,
            ctx.reader,
            search=q[:200],
            sort=sort,
            descending=descending,
            page=page_number,
            limit=50,
        )
        query = {"q": q, "sort": sort, "order": "desc" if descending else "asc"}
        return page(
            "deliveries.html",
            session,
            rows=rows,
            q=q,
            sort=sort,
            descending=descending,
            page_number=page_number,
            next_query=urlencode({**query, "page_number": page_number + 1})
            if len(rows) == 50
            else None,
            prev_query=urlencode({**query, "page_number": page_number - 1})
            if page_number > 1
            else None,
            csv_query=urlencode({**query, "format": "csv"}),
        )

    def _id(delivery_id: int) -> int:
        if not 0 < delivery_id < 2**63:
            raise HTTPException(404, "no such delivery")
        return delivery_id

    @router.get("/deliveries/{delivery_id}")
    async def dashboard(
        request: Request, delivery_id: int, status: str = "", after: int | None = None
    ) -> Response:
        session = session_of(request)
        _id(delivery_id)
        status_filter = status if status in reports.MESSAGE_STATUSES else None
        if after is not None and not 0 <= after < 2**63:
            after = None
        data = await asyncio.to_thread(
            reports.delivery_dashboard,
            ctx.reader,
            delivery_id,
            status=status_filter,
            after=after,
        )
        if data is None:
            raise HTTPException(404, "no such delivery")
        return page(
            "delivery.html",
            session,
            d=data,
            tab="dashboard",
            status=status_filter or "",
            statuses=reports.MESSAGE_STATUSES,
            next_query=urlencode({"status": status_filter or "", "after": data["next_after"]})
            if data["next_after"] is not None
            else None,
        )

    @router.post("/deliveries/{delivery_id}/urls/{url_id}")
    async def edit_url(request: Request, delivery_id: int, url_id: int) -> Response:
        session = session_of(request)
        _id(delivery_id)
        form = await checked_form(request, session)
        label = form.get("label")
        tracked = None
        if "tracked" in form:
            tracked = form["tracked"] == "on"

        def save() -> bool:
            with ctx.engine.begin() as conn:
                return set_tracked_url(
                    conn,
                    delivery_id,
                    url_id,
                    label=label[:2000] if label is not None else None,
                    tracked=tracked,
                )

        if not 0 < url_id < 2**63 or not await asyncio.to_thread(save):
            raise HTTPException(409, "this link cannot be changed (sent delivery?)")
        return RedirectResponse(f"/deliveries/{delivery_id}#urls", 303)

    @router.get("/deliveries/{delivery_id}/tracking")
    async def tracking(
        request: Request, delivery_id: int, type: str = "", before: str = ""
    ) -> Response:
        session = session_of(request)
        _id(delivery_id)
        event_type = type if type in reports.EVENT_TYPES else None
        cursor = None
        if before:
            try:
                cursor = reports.decode_cursor(before[:100])
            except (ValueError, OverflowError):
                raise HTTPException(400, "bad cursor") from None
        data = await asyncio.to_thread(
            reports.delivery_tracking, ctx.reader, delivery_id, event_type=event_type, before=cursor
        )
        if data is None:
            raise HTTPException(404, "no such delivery")
        return page(
            "tracking.html",
            session,
            d={"id": delivery_id, "name": data["name"]},
            data=data,
            tab="tracking",
            type=event_type or "",
            types=reports.EVENT_TYPES,
            next_query=urlencode({"type": event_type or "", "before": data["next"]})
            if data["next"]
            else None,
        )

    @router.get("/deliveries/{delivery_id}/reports/indicators")
    async def indicators(request: Request, delivery_id: int) -> Response:
        session = session_of(request)
        _id(delivery_id)
        data = await asyncio.to_thread(delivery_indicators, ctx.reader, delivery_id)
        if data is None:
            raise HTTPException(404, "no such delivery")
        return page(
            "indicators.html",
            session,
            d={"id": delivery_id, "name": data["name"]},
            data=data,
            rows=INDICATOR_ROWS,
            tab="indicators",
        )

    @router.get("/recipients/{email}")
    async def recipient(request: Request, email: str) -> Response:
        session = session_of(request)
        data = await asyncio.to_thread(reports.recipient_profile, ctx.reader, email)
        if data is None:
            raise HTTPException(404, "no such recipient")
        return page("recipient.html", session, r=data)

    return router
