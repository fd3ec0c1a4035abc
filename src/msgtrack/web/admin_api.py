"""The API twins of the admin pages: qualification rules, the failure text list and
the quarantine, with manual release.

Same access as the rest of the API (an API token, or a signed-in session). A POST
made with the session cookie must also carry the session's CSRF token in the
``X-CSRF-Token`` header: a cookie alone proves nothing about who wrote the request.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from fastapi.responses import Response

from msgtrack.delivery.bounces.rulefile import COLUMNS as RULE_COLUMNS
from msgtrack.delivery.bounces.rulefile import RuleSet, live_rules, read_ruleset
from msgtrack.delivery.bounces.rules import REASONS
from msgtrack.reports import failures
from msgtrack.reports import quarantine as quarantines
from msgtrack.web.auth import api_access
from msgtrack.web.csv import csv_response
from msgtrack.web.state import WebState

Format = Literal["json", "csv"]
Kind = Literal["quarantine", "denylist"]
MAX_ADDRESS = 320
FAILURE_COLUMNS = (*failures.COLUMNS, "now_reason", "now_type")


def ruleset_json(rules: RuleSet) -> dict[str, Any]:
    return {
        "origin": rules.origin,
        "path": str(rules.path) if rules.path else None,
        "version": rules.version,
        "editable": rules.editable,
        "rules": [{"position": i, **r.as_dict()} for i, r in enumerate(rules.rows, start=1)],
    }


def check_address(address: str) -> str:
    if not address or len(address) > MAX_ADDRESS:
        raise HTTPException(404, "no such address")
    return address


def admin_api_router(state: WebState) -> APIRouter:
    ctx = state.ctx
    rules_now = live_rules(ctx.settings)

    require_access = api_access(state.sessions, state.ctx.reader)
    router = APIRouter(prefix="/api", dependencies=[Depends(require_access)])

    @router.get("/settings/bounce-rules", response_model=None)
    async def bounce_rules(format: Format = "json") -> dict[str, Any] | Response:
        """The qualification rules in force, in order (the first match wins), and where
        they come from: ``env`` (MSGTRACK_BOUNCE_RULES), ``home`` (saved from the UI) or
        ``default`` (shipped)."""
        result = ruleset_json(await asyncio.to_thread(read_ruleset, ctx.settings))
        if format == "csv":
            return csv_response(("position", *RULE_COLUMNS), result["rules"], "bounce-rules.csv")
        return result

    @router.get("/settings/failure-texts", response_model=None)
    async def failure_texts(format: Format = "json") -> list[dict[str, Any]] | Response:
        """The delivery log qualification list: failure texts grouped after replacing
        their variable parts, with a count, the first text seen, what it was qualified
        to, and what the rules in force now make of it (``now_reason``, ``now_type``)."""

        def load() -> list[dict[str, Any]]:
            groups = failures.failure_text_groups(ctx.reader)
            return failures.with_current_rules(groups, rules_now)

        result = await asyncio.to_thread(load)
        if format == "csv":
            return csv_response(FAILURE_COLUMNS, result, "failure-texts.csv")
        return result

    @router.get("/quarantine", response_model=None)
    async def quarantine_list(
        kind: Kind | None = None,
        reason: Literal[REASONS] | None = None,  # type: ignore[valid-type]
        q: str = Query("", max_length=200, description="Part of the address."),
        after: str | None = Query(None, max_length=MAX_ADDRESS, description="The `next`."),
        limit: int = Query(50, ge=1, le=500),
        format: Format = "json",
    ) -> dict[str, Any] | Response:
        """Addresses excluded from deliveries now (quarantined or denylisted), by
        address, each with its history; keyset paging with ``after`` (the CSV has them
        all, without history)."""
        if format == "csv":
            rows = quarantines.iter_quarantine(ctx.reader, kind=kind, reason=reason, search=q)
            return csv_response(quarantines.COLUMNS, rows, "quarantine.csv")
        return await asyncio.to_thread(
            quarantines.quarantine_list,
            ctx.reader,
            kind=kind,
            reason=reason,
            search=q,
            after=after,
            limit=limit,
        )

    @router.get("/quarantine/{address}")
    async def quarantine_address(address: str) -> dict[str, Any]:
        """An address's quarantine state (``active``: excluded now) and its history."""
        check_address(address)
        result = await asyncio.to_thread(quarantines.quarantine_detail, ctx.reader, address)
        if result is None:
            raise HTTPException(404, "no such address")
        return result

    @router.post("/quarantine/{address}/release")
    async def release(
        address: str,
        note: str | None = Body(None, embed=True, max_length=500),
    ) -> dict[str, Any]:
        """Release a quarantined or denylisted address by hand (kept in its history);
        409 when it is not excluded."""
        check_address(address)
        done = await asyncio.to_thread(
            quarantines.release_address, ctx.engine, address, note or "released through the API"
        )
        if not done:
            raise HTTPException(409, "this address is not quarantined")
        result = await asyncio.to_thread(quarantines.quarantine_detail, ctx.reader, address)
        assert result is not None
        return result

    return router
