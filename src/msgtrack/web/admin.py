"""The admin pages: qualification rules (edited here, applied by every process),
the delivery log qualification list, and the quarantine with manual release.

Every change is a POST form carrying the session's CSRF token; rule edits also carry
the version of the table they were made on, so an edit made on a stale page is refused
instead of landing on the wrong row. A refused edit saves nothing and shows why.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from msgtrack.delivery.bounces import rulefile
from msgtrack.delivery.bounces.rulefile import ReadOnlyRules, RuleRow, StaleRules
from msgtrack.delivery.bounces.rules import REASONS, RULE_TYPES, RuleError
from msgtrack.reports import failures
from msgtrack.reports import quarantine as quarantines
from msgtrack.web.admin_api import MAX_ADDRESS
from msgtrack.web.auth import SESSION_COOKIE, Session, same_token
from msgtrack.web.state import WebState
from msgtrack.web.ui import SignInRequired, read_form

PAGE = 50
MAX_TEXT_GROUPS = 1000  # shown on the page; the CSV export has them all
RULES_URL = "/settings/bounce-rules"


def _row_of(form: dict[str, str]) -> RuleRow:
    return RuleRow(**{c: form.get(c, "") for c in rulefile.COLUMNS})


def _position(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def admin_router(state: WebState) -> APIRouter:
    ctx = state.ctx
    settings = ctx.settings
    rules_now = rulefile.live_rules(settings)
    router = APIRouter(include_in_schema=False)

    def session_of(request: Request) -> Session:
        session = state.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise SignInRequired()
        return session

    def page(name: str, session: Session, status: int = 200, **values: Any) -> HTMLResponse:
        html = state.templates.get_template(name).render(session=session, **values)
        return HTMLResponse(html, status, headers={"Cache-Control": "no-store"})

    async def checked_form(request: Request, session: Session) -> dict[str, str]:
        form = await read_form(request)
        if not same_token(session.csrf, form.get("csrf")):
            raise HTTPException(403, "missing or wrong CSRF token")
        return form

    # -- qualification rules ----------------------------------------------------------

    async def rules_page(
        session: Session,
        *,
        status: int = 200,
        error: str = "",
        draft: RuleRow | None = None,
        position: int | None = None,
        saved: bool = False,
    ) -> HTMLResponse:
        rules = await asyncio.to_thread(rulefile.read_ruleset, settings)
        return page(
            "admin/bounce_rules.html",
            session,
            status,
            rules=rules,
            reasons=REASONS,
            types=RULE_TYPES,
            error=error,
            draft=draft or RuleRow(),
            position=position if position is not None else len(rules.rows) + 1,
            saved=saved,
        )

    async def apply(
        form: dict[str, str], action: str, index: int, row: RuleRow | None = None
    ) -> str:
        """The edit done (empty string) or why it was refused."""
        try:
            await asyncio.to_thread(
                rulefile.edit_rules, settings, form.get("version", ""), action, index, row
            )
        except (RuleError, StaleRules, ReadOnlyRules) as exc:
            return str(exc)
        return ""

    @router.get(RULES_URL)
    async def bounce_rules(request: Request, saved: str = "") -> Response:
        return await rules_page(session_of(request), saved=saved == "1")

    @router.post(RULES_URL + "/add")
    async def add_rule(request: Request) -> Response:
        session = session_of(request)
        form = await checked_form(request, session)
        row = _row_of(form)
        position = _position(form.get("position", ""), 1_000_000)
        error = await apply(form, "add", position - 1, row)
        if error:
            return await rules_page(session, status=400, error=error, draft=row, position=position)
        return RedirectResponse(f"{RULES_URL}?saved=1#rules", 303)

    @router.get(RULES_URL + "/{position:int}/edit")
    async def edit_rule_form(request: Request, position: int) -> Response:
        session = session_of(request)
        rules = await asyncio.to_thread(rulefile.read_ruleset, settings)
        if not 0 < position <= len(rules.rows):
            raise HTTPException(404, "no such rule")
        return page(
            "admin/rule_edit.html",
            session,
            rules=rules,
            position=position,
            row=rules.rows[position - 1],
            reasons=REASONS,
            types=RULE_TYPES,
            error="",
        )

    @router.post(RULES_URL + "/{position:int}")
    async def change_rule(request: Request, position: int) -> Response:
        session = session_of(request)
        form = await checked_form(request, session)
        action = form.get("action", "")
        if action not in ("update", "delete", "up", "down"):
            raise HTTPException(400, "unknown action")
        row = _row_of(form) if action == "update" else None
        error = await apply(form, action, position - 1, row)
        if error and action == "update":
            rules = await asyncio.to_thread(rulefile.read_ruleset, settings)
            return page(
                "admin/rule_edit.html",
                session,
                400,
                rules=rules,
                position=position,
                row=row,
                reasons=REASONS,
                types=RULE_TYPES,
                error=error,
            )
        if error:
            return await rules_page(session, status=409, error=error)
        return RedirectResponse(f"{RULES_URL}?saved=1#rules", 303)

    @router.post(RULES_URL + "/reset")
    async def reset_rules(request: Request) -> Response:
        session = session_of(request)
        form = await checked_form(request, session)
        try:
            await asyncio.to_thread(rulefile.reset_rules, settings, form.get("version", ""))
        except (StaleRules, ReadOnlyRules) as exc:
            return await rules_page(session, status=409, error=str(exc))
        return RedirectResponse(f"{RULES_URL}?saved=1", 303)

    # -- the delivery log qualification list -------------------------------------------

    @router.get("/settings/failure-texts")
    async def failure_texts(request: Request) -> Response:
        session = session_of(request)

        def load() -> list[dict[str, Any]]:
            groups = failures.failure_text_groups(ctx.reader)
            return failures.with_current_rules(groups[:MAX_TEXT_GROUPS], rules_now)

        groups = await asyncio.to_thread(load)
        return page("admin/failure_texts.html", session, groups=groups, limit=MAX_TEXT_GROUPS)

    # -- quarantine --------------------------------------------------------------------

    @router.get("/quarantine")
    async def quarantine(
        request: Request, kind: str = "", reason: str = "", q: str = "", after: str = ""
    ) -> Response:
        session = session_of(request)
        kind = kind if kind in quarantines.KINDS else ""
        reason = reason if reason in REASONS else ""
        data = await asyncio.to_thread(
            quarantines.quarantine_list,
            ctx.reader,
            kind=kind or None,
            reason=reason or None,
            search=q[:200],
            after=after[:MAX_ADDRESS] or None,
            limit=PAGE,
        )
        query = {"kind": kind, "reason": reason, "q": q[:200]}
        return page(
            "admin/quarantine.html",
            session,
            data=data,
            kind=kind,
            reason=reason,
            q=q[:200],
            kinds=quarantines.KINDS,
            reasons=REASONS,
            first_query=urlencode(query) if after else None,
            next_query=urlencode({**query, "after": data["next"]}) if data["next"] else None,
            csv_query=urlencode({**query, "format": "csv"}),
        )

    @router.get("/quarantine/{address}")
    async def quarantine_address(request: Request, address: str, released: str = "") -> Response:
        session = session_of(request)
        if not address or len(address) > MAX_ADDRESS:
            raise HTTPException(404, "no such address")
        data = await asyncio.to_thread(quarantines.quarantine_detail, ctx.reader, address)
        if data is None:
            raise HTTPException(404, "no such address")
        return page("admin/quarantine_address.html", session, a=data, released=released == "1")

    @router.post("/quarantine/{address}/release")
    async def release(request: Request, address: str) -> Response:
        session = session_of(request)
        form = await checked_form(request, session)
        if not address or len(address) > MAX_ADDRESS:
            raise HTTPException(404, "no such address")
        note = " ".join(form.get("note", "").split())[:500]
        by = f"released by {session.user_name} in the web UI"
        note = f"{note} ({by})" if note else by
        done = await asyncio.to_thread(quarantines.release_address, ctx.engine, address, note)
        if not done:
            raise HTTPException(409, "this address is not quarantined")
        return RedirectResponse(f"/quarantine/{quote(address, safe='@')}?released=1", 303)

    return router
