"""The web pages: sign-in, deliveries, a delivery's dashboard, tracking tab and
indicators, recipient profiles. Each page shows what its API twin returns."""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from msgtrack.reports import deliveries as reports
from msgtrack.reports.registry import ReportQuery
from msgtrack.storage.deliveries import set_tracked_url
from msgtrack.storage.users import authenticate
from msgtrack.web.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Session,
    same_token,
)
from msgtrack.web.reporting import ReportParams, find_report, make_scope, run_report
from msgtrack.web.state import WebState

MAX_FORM_BYTES = 64 * 1024
# The hot clicks content: the message's own inline styles, nothing that runs or leaves.
HOT_CLICKS_CONTENT_POLICY = (
    "sandbox; default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
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
        session = state.sessions.read(request.cookies.get(SESSION_COOKIE))
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
        address = request.client.host if request.client else ""
        wait = state.throttle.wait_seconds(name, address)
        if wait:
            return HTMLResponse(
                f"Too many failed sign-ins: try again in {wait} seconds.",
                429,
                headers={"Retry-After": str(wait), "Cache-Control": "no-store"},
            )

        def check() -> Any:
            with ctx.engine.begin() as conn:
                return authenticate(conn, name, password)

        user = await asyncio.to_thread(check) if name and password else None
        if user is None:
            if name:
                state.throttle.failed(name, address)
            return RedirectResponse("/signin?error=1", 303)
        state.throttle.succeeded(name)
        cookie, _ = await asyncio.to_thread(state.sessions.issue, user.id)
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
        await asyncio.to_thread(state.sessions.end, request.cookies.get(SESSION_COOKIE, ""))
        response = RedirectResponse("/signin", 303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @router.get("/deliveries")
    async def deliveries(
        request: Request, q: str = "", sort: str = "id", order: str = "desc", after: str = ""
    ) -> Response:
        session = session_of(request)
        if sort not in reports.store.DELIVERY_SORTS:
            sort = "id"
        descending = order != "asc"
        try:
            rows, cursor = await asyncio.to_thread(
                reports.delivery_list,
                ctx.reader,
                search=q[:200],
                sort=sort,
                descending=descending,
                after=after[:1000] or None,
                limit=50,
            )
        except ValueError:
            raise HTTPException(400, "this page's address is not one of ours") from None
        query = {"q": q, "sort": sort, "order": "desc" if descending else "asc"}
        return page(
            "deliveries.html",
            session,
            rows=rows,
            q=q,
            sort=sort,
            descending=descending,
            next_query=urlencode({**query, "after": cursor}) if cursor else None,
            first_query=urlencode(query) if after else None,
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

    async def report_page(
        request: Request, name: str, delivery_id: int | None, options: ReportParams
    ) -> Response:
        session = session_of(request)
        report = find_report(name)
        scope = make_scope(state, delivery_id, options.since, options.until)
        query = options.query()
        data, delivery_name = await run_report(state, report, scope, query)
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "format"]
        first_day = scope.since.astimezone(state.zone).date() if scope.since else None
        last_day = (
            (scope.until.astimezone(state.zone) - timedelta(days=1)).date() if scope.until else None
        )
        dates = [("since", str(first_day or "")), ("until", str(last_day or ""))]
        return page(
            f"reports/{report.name}.html",
            session,
            d={"id": delivery_id, "name": delivery_name} if delivery_id else None,
            data=data,
            report=report,
            scope=scope,
            query=query,
            tab=report.name,
            base_path=request.url.path,
            query_string=urlencode(params),
            export_url=f"/api{request.url.path}?" + urlencode([*params, ("format", "csv")]),
            scope_since=first_day or "",
            scope_until=last_day or "",
            range_query=urlencode(dates) if delivery_id is None else "",
            keep_params=[(k, v) for k, v in params if k not in ("since", "until")],
            query_with=lambda field, value: urlencode(
                [(k, v) for k, v in params if k != field] + [(field, value)]
            ),
        )

    @router.get("/deliveries/{delivery_id}/reports/hot-clicks/content")
    async def hot_clicks_content(request: Request, delivery_id: int) -> Response:
        """The HTML part with its share badges, for the hot clicks page's iframe. A
        document of its own so that it can keep the message's inline styles while
        running nothing: sandboxed by its CSP (no script, no form, opaque origin), its
        images limited to this server, framable only by the admin's own pages."""
        session_of(request)
        scope = make_scope(state, delivery_id, None, None)
        data, _ = await run_report(state, find_report("hot-clicks"), scope, ReportQuery())
        if data["html"] is None:
            raise HTTPException(404, "this delivery has no HTML part")
        return HTMLResponse(
            data["html"],
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": HOT_CLICKS_CONTENT_POLICY,
                "X-Frame-Options": "SAMEORIGIN",
            },
        )

    @router.get("/deliveries/{delivery_id}/reports/{name}")
    async def delivery_report(
        request: Request, delivery_id: int, name: str, params: ReportParams = Depends()
    ) -> Response:
        return await report_page(request, name, delivery_id, params)

    @router.get("/reports/{name}")
    async def global_report(
        request: Request, name: str, params: ReportParams = Depends()
    ) -> Response:
        return await report_page(request, name, None, params)

    @router.get("/reports")
    async def reports_home(request: Request) -> Response:
        session_of(request)
        return RedirectResponse("/reports/indicators", 303)

    @router.get("/recipients/{email}")
    async def recipient(request: Request, email: str, before: str = "") -> Response:
        session = session_of(request)
        try:
            data = await asyncio.to_thread(
                reports.recipient_profile, ctx.reader, email, clicks_before=before[:100] or None
            )
        except ValueError:
            raise HTTPException(400, "this page's address is not one of ours") from None
        if data is None:
            raise HTTPException(404, "no such recipient")
        return page("recipient.html", session, r=data, older=bool(before))

    return router
