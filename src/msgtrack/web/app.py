"""The admin web app: the JSON API under ``/api`` and the pages, one FastAPI app mounted
behind the tracking routes (``tracking.asgi``), which stay public and unchanged."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from msgtrack import __version__
from msgtrack.context import Context
from msgtrack.web.admin import admin_router
from msgtrack.web.admin_api import admin_api_router
from msgtrack.web.api import api_router
from msgtrack.web.state import HERE, WebState
from msgtrack.web.ui import SignInRequired, ui_router

# No inline script or style, nothing from elsewhere: injected markup could not run.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def create_app(ctx: Context) -> FastAPI:
    state = WebState.create(ctx)
    app = FastAPI(
        title="msgtrack",
        version=__version__,
        openapi_url="/api/openapi.json",
        docs_url=None,  # the Swagger page loads scripts from a CDN: not for an offline admin
        redoc_url=None,
    )

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(SignInRequired)
    async def sign_in(request: Request, exc: SignInRequired) -> Response:
        return RedirectResponse("/signin", 303)

    app.include_router(api_router(state))
    app.include_router(ui_router(state))
    app.include_router(admin_api_router(state))  # rules, failure texts, quarantine
    app.include_router(admin_router(state))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app


def create_api(ctx: Context) -> FastAPI:
    """Former name, kept for callers of the first API."""
    return create_app(ctx)
