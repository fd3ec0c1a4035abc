"""What the tracking server answers, independent of the HTTP layer.

``TrackingApp.handle_fast`` answers clicks, opens, opt-out visits and ``/health``
synchronously (verify the token, one dict lookup, one log write): that is the hot path,
called straight from the hand-written HTTP protocol (``tracking.server``). It returns
None when a request needs the slow path, ``await handle(request)``: the first token of
a delivery not cached yet, mirror pages (rendered in a thread), and unsubscriptions
(fsynced in a thread). ``tracking.asgi`` adapts the same app to ASGI.

Rules (SPEC §4): only GET requests are events; HEAD is answered like GET and logs and
counts nothing; a bad token answers a plain 404, never a redirect, and is counted in
``rejected_tokens``; every event is written to the log before its answer leaves (at
once, or held and written by the HTTP layer just before the answers: ``hold_log_lines``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgtrack
from msgtrack.links.addresses import PATHS, SESSION_COOKIE, VISITOR_COOKIE
from msgtrack.links.sign import KeyRing, LinkToken, TokenError, b64url
from msgtrack.tracking import pages
from msgtrack.tracking.eventlog import EventLog
from msgtrack.tracking.events import Event, encode_hit
from msgtrack.tracking.urls import TrackedUrl, TrackedUrlCache

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from msgtrack.context import Context

log = logging.getLogger(__name__)

HEALTH_PATH = "/health"
# The path prefixes the tracking server owns (the ASGI adapter routes these to it).
TOKEN_PREFIXES: tuple[str, ...] = tuple(PATHS.values())
TRACKING_PREFIXES: tuple[str, ...] = (*TOKEN_PREFIXES, HEALTH_PATH)
KIND_BY_PREFIX: dict[str, str] = {prefix: kind for kind, prefix in PATHS.items()}
OPT_OUT_PREFIX = PATHS["opt-out"]

VISITOR_MAX_AGE = 400 * 24 * 3600  # browsers cap cookie lifetimes at 400 days
USER_AGENT_MAX = 1024
MIRROR_RENDERERS_CACHED = 64
# The visitor cookie first in the header, or after a separator: two patterns rather than
# one starting with (?:^|[;,]\s*), which the regex engine has to try at every position.
_VISITOR_VALUE = "=([A-Za-z0-9_-]{22})(?=\\s*(?:[;,]|$))"
_VISITOR_FIRST = re.compile(VISITOR_COOKIE + _VISITOR_VALUE)
_VISITOR_LATER = re.compile(r"[;,]\s*" + VISITOR_COOKIE + _VISITOR_VALUE)

Headers = tuple[tuple[bytes, bytes], ...]


def owns_path(path: str) -> bool:
    """Is ``path`` one of the tracking server's?"""
    return path == HEALTH_PATH or path.startswith(TOKEN_PREFIXES)


def _visitor(cookie: str | None) -> str | None:
    """The visitor id the browser already carries, when well-formed."""
    if not cookie:
        return None
    match = _VISITOR_FIRST.match(cookie) or _VISITOR_LATER.search(cookie)
    return match.group(1) if match else None


def _new_visitor_id() -> str:
    """22 base64url characters of 16 random bytes (what ``secrets.token_urlsafe(16)``
    gives, without its Python-level base64 wrappers)."""
    return b64url(os.urandom(16))


class Request:
    """The parts of an HTTP request the tracking server looks at."""

    __slots__ = ("method", "path", "client", "user_agent", "cookie", "content_type", "body")

    def __init__(
        self,
        method: str,
        path: str,
        client: str | None = None,
        user_agent: str | None = None,
        cookie: str | None = None,
        content_type: str | None = None,
        body: bytes = b"",
    ) -> None:
        self.method = method  # upper case
        self.path = path  # without the query string
        self.client = client  # peer address
        self.user_agent = user_agent
        self.cookie = cookie
        self.content_type = content_type
        self.body = body


_REASONS = {
    200: b"OK",
    204: b"No Content",
    302: b"Found",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()}


class Response:
    """Status, headers (names in canonical case) and body. The HTTP layer adds
    Content-Length (of ``body``, also for HEAD), Date and Connection.

    The click path builds its answer from the wire lines instead (``headers`` None,
    ``wire`` the header lines ending with Content-Length): one join instead of header
    pairs formatted line by line; ``headers`` parses them back for the ASGI adapter."""

    __slots__ = ("status", "_headers", "body", "_wire")

    def __init__(
        self,
        status: int,
        headers: Headers | None = (),
        body: bytes = b"",
        wire: bytes | None = None,
    ) -> None:
        self.status = status
        self._headers = headers
        self.body = body
        self._wire = wire

    @property
    def headers(self) -> Headers:
        """(name, value) pairs, without Content-Length."""
        headers = self._headers
        if headers is None:
            pairs = (line.split(b": ", 1) for line in self.wire_headers().splitlines())
            headers = self._headers = tuple(
                (name, value) for name, value in pairs if name != b"Content-Length"
            )
        return headers

    def wire_status(self) -> bytes:
        """The HTTP/1.1 status line."""
        return _STATUS_LINES.get(self.status) or b"HTTP/1.1 %d Status\r\n" % self.status

    def wire(self, extra: bytes, last: bytes, head: bool) -> bytes:
        """The whole answer: status line, ``extra`` header lines (the HTTP layer's Date,
        Server), the headers with Content-Length, ``last`` (the Connection line and the
        blank line), and the body unless answering HEAD."""
        wire = self._wire
        if wire is None:
            wire = self.wire_headers()
        status = _STATUS_LINES.get(self.status) or self.wire_status()
        return b"".join((status, extra, wire, last, b"" if head else self.body))

    def wire_headers(self) -> bytes:
        """``Name: value`` lines of the headers and Content-Length, built once."""
        wire = self._wire
        if wire is None:
            lines = [b"%s: %s\r\n" % (name, value) for name, value in self.headers]
            lines.append(b"Content-Length: %d\r\n" % len(self.body))
            wire = self._wire = b"".join(lines)
        return wire


# -- fixed answers ------------------------------------------------------------------------

TRANSPARENT_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_NO_CACHE: Headers = (
    (b"Cache-Control", b"no-store, no-cache, must-revalidate, max-age=0"),
    (b"Pragma", b"no-cache"),
    (b"Expires", b"Thu, 01 Jan 1970 00:00:00 GMT"),
)
_HTML = (b"Content-Type", b"text/html; charset=utf-8")
_PAGE_HEADERS: Headers = (
    _HTML,
    (b"Cache-Control", b"no-store"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Frame-Options", b"DENY"),
    (b"Referrer-Policy", b"no-referrer"),
    (
        b"Content-Security-Policy",
        b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    ),
)


def _page(status: int, body: bytes, extra: Headers = ()) -> Response:
    return Response(status, _PAGE_HEADERS + extra, body)


OPEN_GIF = Response(200, ((b"Content-Type", b"image/gif"), *_NO_CACHE), TRANSPARENT_GIF)
NOT_FOUND = _page(404, pages.NOT_FOUND)
BAD_REQUEST = _page(400, pages.BAD_REQUEST)
TOO_LARGE = _page(413, pages.TOO_LARGE)
HEADERS_TOO_LARGE = _page(431, pages.HEADERS_TOO_LARGE)
SERVER_ERROR = _page(500, pages.SERVER_ERROR)
UNAVAILABLE = _page(503, pages.UNAVAILABLE, ((b"Retry-After", b"60"),))
UNSUBSCRIBED = _page(200, pages.UNSUBSCRIBED)
NOTHING_TO_CONFIRM = _page(400, pages.NOTHING_TO_CONFIRM)
_TEXT_HEADERS: Headers = (
    (b"Content-Type", b"text/plain; charset=utf-8"),
    (b"Cache-Control", b"no-store"),
)
ONE_CLICK_DONE = Response(200, _TEXT_HEADERS, pages.ONE_CLICK_DONE)
GET_ONLY = _page(405, pages.METHOD_NOT_ALLOWED, ((b"Allow", b"GET, HEAD"),))
GET_OR_POST = _page(405, pages.METHOD_NOT_ALLOWED, ((b"Allow", b"GET, HEAD, POST"),))
MIRROR_HEADERS: Headers = (
    _HTML,
    (b"Content-Security-Policy", b"sandbox"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Cache-Control", b"private, no-store"),
    (b"Referrer-Policy", b"no-referrer"),
)
# A click's answer as header lines (``Response`` with ``wire``): Location, these, cookies.
_NO_STORE_LINE = b"Cache-Control: no-store\r\n"
_NO_BODY_LINE = b"Content-Length: 0\r\n"
_REDIRECT_TAIL = _NO_STORE_LINE + _NO_BODY_LINE
_JSON_HEADERS: Headers = ((b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store"))


KEYS_CHECK_SECONDS = 1.0


class TrackingApp:
    def __init__(self, ctx: Context, log: EventLog) -> None:
        self.ctx = ctx
        self.log = log
        # log.append_line, or log.hold_line (see hold_log_lines)
        self._write_line: Callable[[bytes], object] = log.append_line
        self._use_keyring(ctx.keyring)
        self._keys_file = ctx.settings.keys_file
        self._keys_stamp = self._stamp()
        self._keys_checked = time.monotonic()
        settings = ctx.settings
        self._db: Engine | None = None
        self._db_lock = threading.Lock()  # lookups of two deliveries may start together
        self.urls = TrackedUrlCache(settings.snapshots_dir, self._db_reader)
        self.rejected_tokens = 0
        secure = b"; Secure" if settings.is_https else b""
        attributes = b"; Path=/; HttpOnly; SameSite=Lax" + secure
        # "Set-Cookie: name=" + value + "; attributes" lines: the value comes per click
        self._visitor_head = b"Set-Cookie: %s=" % VISITOR_COOKIE.encode()
        self._visitor_tail = b"; Max-Age=%d%s\r\n" % (VISITOR_MAX_AGE, attributes)
        self._session_head = b"Set-Cookie: %s=" % SESSION_COOKIE.encode()
        self._session_tail = attributes + b"\r\n"
        self._renderers: OrderedDict[int, _MirrorRenderer] = OrderedDict()
        self._renderers_lock = threading.Lock()

    def _db_reader(self) -> Engine:
        """The engine for the fallback lookups (blocking, run in a thread): on PostgreSQL a
        bounded one, so an unreachable or hung database costs a lookup at most
        ``tracking_db_timeout`` seconds and never holds up shutdown for long."""
        with self._db_lock:
            if self._db is None:
                self._db = self._make_db_reader()
            return self._db

    def _make_db_reader(self) -> Engine:
        settings = self.ctx.settings
        if not settings.db_url.startswith(("postgresql:", "postgres:")):
            return self.ctx.reader  # SQLite readers never wait on the write lock
        from msgtrack.storage.db import make_engine, read_only

        timeout = settings.tracking_db_timeout
        return read_only(
            make_engine(
                settings.db_url,
                pool_timeout=timeout,
                connect_args={
                    "connect_timeout": max(2, math.ceil(timeout)),  # libpq's least
                    "options": f"-c statement_timeout={int(timeout * 1000)}",
                },
            )
        )

    def hold_log_lines(self) -> None:
        """Hold event lines for ``log.write_held()`` instead of writing each at once:
        for an HTTP layer that calls ``write_held`` before any answer leaves (the
        hand-written server, once per turn of its event loop)."""
        self._write_line = self.log.hold_line

    # -- signing keys ------------------------------------------------------------------

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._keys_file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _use_keyring(self, keyring: KeyRing) -> None:
        self.keyring = keyring
        # what a session cookie of the active key starts with (see _click)
        self._session_prefix = f"{SESSION_COOKIE}={keyring.active}."

    def refresh_keys(self, force: bool = False) -> bool:
        """Reload the signing keys when ``keys.json`` changed (``keys rotate`` /
        ``keys retire`` from another process), looking at most once a second; a
        retired key then stops verifying in the running server. True when reloaded."""
        now = time.monotonic()
        if not force and now - self._keys_checked < KEYS_CHECK_SECONDS:
            return False
        self._keys_checked = now
        stamp = self._stamp()
        if stamp is None or stamp == self._keys_stamp:
            return False
        try:
            keyring = self.ctx.reload_keyring()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # keys.json is replaced atomically, so this is a broken file: keep the keys
            # we have and look again later.
            log.error("signing keys not reloaded: %s", exc)
            return False
        self._use_keyring(keyring)
        self._keys_stamp = stamp
        log.info("signing keys reloaded: %s", ", ".join(map(str, sorted(keyring.keys))))
        return True

    # -- fast path ---------------------------------------------------------------------

    def handle_fast(self, req: Request) -> Response | None:
        """The answer, or None when the request needs ``await handle(req)``."""
        method = req.method
        path = req.path
        if method == "GET":
            head = False
        elif method == "HEAD":
            head = True
        else:
            if method == "POST" and path.startswith(OPT_OUT_PREFIX):
                return None
            if path.startswith(OPT_OUT_PREFIX):
                return GET_OR_POST
            return GET_ONLY if owns_path(path) else NOT_FOUND
        kind = KIND_BY_PREFIX.get(path[:3])
        if kind is None:
            return self.health(head) if path == HEALTH_PATH else NOT_FOUND
        try:
            token = self.keyring.verify_link(path[3:])
        except TokenError:
            return self._reject(head)
        url = self.urls.cached.get((token.delivery_id, token.url_id))
        if url is None:
            if self.urls.should_load(token.delivery_id):
                return None
            return self._reject(head)
        if kind == "mirror":
            return None
        return self._answer(kind, url, token, req, head)

    def _verify(self, text: str, head: bool) -> LinkToken | None:
        try:
            return self.keyring.verify_link(text)
        except TokenError:
            if not head:
                self.rejected_tokens += 1
            return None

    def _reject(self, head: bool) -> Response:
        if not head:
            self.rejected_tokens += 1
        return NOT_FOUND

    def _answer(
        self, kind: str, url: TrackedUrl, token: LinkToken, req: Request, head: bool
    ) -> Response:
        if url.type != kind:
            return self._reject(head)
        if kind == "click":
            location = url.location_line(token.values)
            if location is None:
                return self._reject(head)
            return self._click(token, location, req, head)
        if kind == "open":
            if not head:
                self._log_hit("open", token, req, _visitor(req.cookie))
            return OPEN_GIF
        # opt-out visit: a page with the confirming form
        if not head:
            self._log_hit("opt-out", token, req, _visitor(req.cookie))
        return _page(200, pages.opt_out_confirmation(req.path))

    def _click(self, token: LinkToken, location: bytes, req: Request, head: bool) -> Response:
        """A 302 to ``location`` (a ``Location: ...`` line) setting the cookies; its
        header lines are joined once (``Response`` with ``wire``)."""
        if head:
            return Response(302, None, b"", location + _REDIRECT_TAIL)
        cookie = req.cookie
        visitor = _visitor(cookie) or _new_visitor_id()
        # a line that cannot be written is dropped and counted: the person still goes on
        self._log_hit("click", token, req, visitor, token.values)
        # A returning visitor already holding this message's session cookie (signed by
        # the active key) keeps it: it is verified where it is read, so there is
        # nothing to gain from signing it again on every click.
        delivery_id, message_id = token.delivery_id, token.message_id
        if cookie is not None and f"{self._session_prefix}{delivery_id}.{message_id}." in cookie:
            session = b""
        else:
            signed = self.keyring.sign_session(delivery_id, message_id).encode()
            session = b"".join((self._session_head, signed, self._session_tail))
        wire = (
            location,
            _NO_STORE_LINE,
            self._visitor_head,
            visitor.encode(),
            self._visitor_tail,
            session,
            _NO_BODY_LINE,
        )
        return Response(302, None, b"", b"".join(wire))

    def _log_hit(
        self,
        kind: str,
        token: LinkToken,
        req: Request,
        visitor: str | None,
        values: tuple[str, ...] = (),
    ) -> None:
        """Log a click/open/opt-out/mirror event (the same line ``_event`` +
        ``encode_event`` give, built directly)."""
        ua = req.user_agent
        delivery_id, message_id, url_id, _ = token
        self._write_line(
            encode_hit(
                time.time(),
                kind,
                delivery_id,
                message_id,
                url_id,
                visitor,
                req.client,
                ua[:USER_AGENT_MAX] if ua else None,
                values,
            )
        )

    def _event(
        self,
        kind: str,
        token: LinkToken,
        req: Request,
        visitor: str | None = None,
        values: tuple[str, ...] = (),
        source: str | None = None,
    ) -> Event:
        ua = req.user_agent
        return Event(
            t=time.time(),
            kind=kind,
            delivery_id=token.delivery_id,
            message_id=token.message_id,
            url_id=token.url_id,
            visitor_id=visitor if visitor is not None else _visitor(req.cookie),
            ip=req.client,
            user_agent=ua[:USER_AGENT_MAX] if ua else None,
            values=values,
            source=source,
        )

    def health(self, head: bool = False) -> Response:
        event_log = self.log
        stats = event_log.stats
        failing = event_log.failing
        body = json.dumps(
            {
                # degraded: events are being dropped right now (the log cannot be
                # written); people are still redirected, unsubscriptions refused
                "status": "degraded" if failing else "ok",
                "version": msgtrack.__version__,
                "events_written": stats["written"],
                "events_dropped": stats["dropped"],
                "event_log_failing": failing,
                "event_log_error": event_log.last_error if failing else None,
                "rejected_tokens": self.rejected_tokens,
            }
        ).encode()
        return Response(200, _JSON_HEADERS, body)

    # -- slow path ---------------------------------------------------------------------

    async def handle(self, req: Request) -> Response:
        """Answer any request (the fast path first, then what needs waiting)."""
        response = self.handle_fast(req)
        if response is not None:
            return response
        try:
            return await self._handle_slow(req)
        except Exception:
            log.exception("tracking request %s %s failed", req.method, req.path)
            return SERVER_ERROR

    async def _handle_slow(self, req: Request) -> Response:
        head = req.method == "HEAD"
        post = req.method == "POST"
        kind = "unsubscribe" if post else KIND_BY_PREFIX[req.path[:3]]
        token = self._verify(req.path[3:], head)
        if token is None:
            return NOT_FOUND
        loop = asyncio.get_running_loop()
        url = self.urls.get(token.delivery_id, token.url_id)
        if url is None:
            url = await loop.run_in_executor(None, self.urls.find, token.delivery_id, token.url_id)
            if url is None:
                return self._reject(head)
        if post:
            if url.type != "opt-out":
                return self._reject(head)
            return await self._unsubscribe(token, req)
        if kind == "mirror":
            if url.type != "mirror":
                return self._reject(head)
            return await self._mirror(token, req, head)
        return self._answer(kind, url, token, req, head)

    async def _unsubscribe(self, token: LinkToken, req: Request) -> Response:
        source = unsubscribe_source(req.content_type, req.body)
        if source is None:
            return NOTHING_TO_CONFIRM
        event = self._event("unsubscribe", token, req, source=source)
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.log.append_durable, event)
        except OSError:
            return UNAVAILABLE  # never acknowledged unless it is on disk
        return ONE_CLICK_DONE if source == "one-click" else UNSUBSCRIBED

    async def _mirror(self, token: LinkToken, req: Request, head: bool) -> Response:
        loop = asyncio.get_running_loop()
        try:
            html = await loop.run_in_executor(
                None, self._render_mirror, token.delivery_id, token.message_id
            )
        except ImportError:
            log.error("mirror pages need msgtrack.delivery.render, which is not installed")
            return UNAVAILABLE
        if html is None:
            return NOT_FOUND
        if not head:
            self._log_hit("mirror", token, req, _visitor(req.cookie))
        return Response(200, MIRROR_HEADERS, html.encode("utf-8"))

    def _render_mirror(self, delivery_id: int, message_id: int) -> str | None:
        """The message as its recipient saw it (blocking: runs in a thread)."""
        with self._renderers_lock:
            entry = self._renderers.get(delivery_id)
            if entry is None:
                entry = self._renderers[delivery_id] = _MirrorRenderer()
                while len(self._renderers) > MIRROR_RENDERERS_CACHED:
                    self._renderers.popitem(last=False)
            else:
                self._renderers.move_to_end(delivery_id)
        # A renderer is not thread-safe: one render at a time per delivery.
        with entry.lock:
            if entry.renderer is None:
                from msgtrack.delivery.render import MessageRenderer

                try:
                    entry.renderer = MessageRenderer(self.ctx, delivery_id)
                except LookupError:
                    return None
            result: str | None = entry.renderer.render_mirror(message_id)
        return result


class _MirrorRenderer:
    __slots__ = ("lock", "renderer")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.renderer: Any = None


def unsubscribe_source(content_type: str | None, body: bytes) -> str | None:
    """'one-click' for an RFC 8058 POST (``List-Unsubscribe=One-Click``), 'form' for
    the confirmation form's POST (``confirm=yes``), None for anything else."""
    fields = _form_fields(content_type or "", body)
    if fields.get("list-unsubscribe", "").strip().lower() == "one-click":
        return "one-click"
    if fields.get("confirm", "").strip().lower() == "yes":
        return "form"
    return None


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """Form fields (names lower-cased, first value wins) from a urlencoded or
    multipart body (RFC 8058 allows both)."""
    fields: dict[str, str] = {}
    if content_type.lower().startswith("multipart/form-data"):
        match = re.search(r'boundary="?([^";]+)"?', content_type, re.I)
        if not match:
            return fields
        boundary = b"--" + match.group(1).encode("latin-1")
        for part in body.split(boundary)[1:]:
            head, sep, value = part.partition(b"\r\n\r\n")
            named = re.search(rb'\bname="([^"]*)"', head)
            if sep and named:
                text = value.removesuffix(b"\r\n").decode("utf-8", "replace")
                fields.setdefault(named.group(1).decode("utf-8", "replace").lower(), text)
        return fields
    try:
        text = body.decode("utf-8", "replace")
        parsed = parse_qs(text, keep_blank_values=True, max_num_fields=20)
    except ValueError:
        return fields
    for name, values in parsed.items():
        fields.setdefault(name.lower(), values[0])
    return fields
