"""The JSON API, behind an API token (``Authorization: Bearer …``).

FastAPI is used here for its OpenAPI schema (served at ``/api/openapi.json``); the
admin side is not on the tracking hot path, so a framework costs nothing that matters.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from msgtrack import __version__
from msgtrack.context import Context
from msgtrack.reports.indicators import delivery_indicators
from msgtrack.reports.recipients import recipient_tracking
from msgtrack.storage.auth import api_token_exists

bearer = HTTPBearer(auto_error=False)


def create_api(ctx: Context) -> FastAPI:
    app = FastAPI(
        title="msgtrack",
        version=__version__,
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )

    def _check_token(token: str) -> bool:
        with ctx.reader.connect() as conn:
            return api_token_exists(conn, token)

    async def require_token(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> None:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, "missing API token", headers={"WWW-Authenticate": "Bearer"})
        if not await asyncio.to_thread(_check_token, credentials.credentials):
            raise HTTPException(401, "invalid API token", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/api/deliveries/{delivery_id}/indicators", dependencies=[Depends(require_token)])
    async def indicators(delivery_id: int) -> dict[str, Any]:
        """Tracking indicators of one delivery (SPEC §6), with the per-domain table."""
        if not 0 < delivery_id < 2**63:
            raise HTTPException(404, "no such delivery")
        result = await asyncio.to_thread(delivery_indicators, ctx.reader, delivery_id)
        if result is None:
            raise HTTPException(404, "no such delivery")
        return result

    @app.get("/api/recipients/{email}/tracking", dependencies=[Depends(require_token)])
    async def tracking(email: str) -> list[dict[str, Any]]:
        """Every click of one recipient across deliveries, newest first."""
        result = await asyncio.to_thread(recipient_tracking, ctx.reader, email)
        if result is None:
            raise HTTPException(404, "no such recipient")
        return result

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home(request: Request) -> str:
        return (
            "<!doctype html><meta charset=utf-8><title>msgtrack</title>"
            f"<h1>msgtrack {__version__}</h1><p>The tracking server and the API are running. "
            '<a href="/api/docs">API documentation</a>.</p>'
        )

    return app
