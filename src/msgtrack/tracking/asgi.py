"""The tracking app as ASGI, for ``msgtrack serve`` under uvicorn.

Same ``TrackingApp`` as the fast server (``tracking.server``), so both answer alike;
paths the tracking server does not own go to ``fallback`` (the admin API/UI).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from msgtrack.tracking.app import (
    HEADERS_TOO_LARGE,
    NOT_FOUND,
    TOO_LARGE,
    TRACKING_PREFIXES,
    Request,
    Response,
    TrackingApp,
    owns_path,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 8 * 1024
MAX_HEAD_BYTES = 8 * 1024

__all__ = ["ASGIApp", "TRACKING_PREFIXES", "tracking_asgi"]


def tracking_asgi(app: TrackingApp, fallback: ASGIApp | None = None) -> ASGIApp:
    """An ASGI app: tracking paths to ``app``, the rest to ``fallback`` (else 404)."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and owns_path(scope["path"]):
            await _handle(app, scope, receive, send)
        elif fallback is not None:
            await fallback(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "http":
            await _send(send, NOT_FOUND, scope["method"] == "HEAD")

    return asgi


async def _handle(app: TrackingApp, scope: Scope, receive: Receive, send: Send) -> None:
    app.refresh_keys()  # a retired key stops verifying here too (checked once a second)
    method: str = scope["method"]
    head = method == "HEAD"
    cookie: list[str] = []
    user_agent = content_type = None
    head_bytes = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    for name, value in scope["headers"]:
        head_bytes += len(name) + len(value) + 4
        if name == b"cookie":
            cookie.append(value.decode("latin-1"))
        elif name == b"user-agent":
            user_agent = value.decode("latin-1")
        elif name == b"content-type":
            content_type = value.decode("latin-1")
    if head_bytes > MAX_HEAD_BYTES:
        await _send(send, HEADERS_TOO_LARGE, head)
        return
    body = b""
    if method not in ("GET", "HEAD"):
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _send(send, TOO_LARGE, head)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
    raw_path = scope.get("raw_path")
    path = raw_path.split(b"?", 1)[0].decode("latin-1") if raw_path else scope["path"]
    client = scope.get("client")
    request = Request(
        method,
        path,
        client[0] if client else None,
        user_agent,
        "; ".join(cookie) if cookie else None,
        content_type,
        body,
    )
    response = app.handle_fast(request)
    if response is None:
        response = await app.handle(request)
    await _send(send, response, head)


async def _send(send: Send, response: Response, head: bool) -> None:
    headers = [(name.lower(), value) for name, value in response.headers]
    headers.append((b"content-length", b"%d" % len(response.body)))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else response.body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
