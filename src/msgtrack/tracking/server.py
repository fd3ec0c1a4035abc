"""The public tracking server's HTTP layer: an asyncio Protocol over httptools on uvloop.

Why hand-written: this is the hot path (a later issue asks for 20k+ signed clicks/s
per core), and NOTES.md measured this design at ~2.5x a bare ASGI callable on uvicorn
and ~9x a framework route. So no framework here: httptools parses, the protocol keeps
only the few headers the app reads, fast answers are written straight from the parser
callback, and only requests that must wait (first token of an uncached delivery, mirror
pages, unsubscriptions) become tasks.

HTTP/1.1 with keep-alive and pipelining (answers leave in request order), bounded
requests (8 KiB of request line + headers -> 431, 8 KiB of body -> 413, at most 64
headers), idle and slow-client timeouts, 400 on anything httptools cannot parse. The
client address is the peer address. The socket has SO_REUSEPORT so several worker
processes can share the port. SIGTERM/SIGINT: stop accepting, let requests in flight
finish, then close (fsync and seal) the event log.

Answers leave in groups: the fast answers of one turn of the event loop are held, and a
callback at the start of the next turn writes their event lines with one ``write()``,
then the answers (``ServerState.send_held``). One log write for many clicks, and the
answers go out together, so the client side is woken once for the lot rather than once
per answer; measured +36 % returning clicks/s on one core (benchmarks/RESULTS.md). Any
other write or close on a connection sends what is held first, so answers stay in
request order and an event line always precedes its answer.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from typing import Any, cast

import httptools

from msgtrack.context import Context
from msgtrack.tracking.app import (
    BAD_REQUEST,
    HEADERS_TOO_LARGE,
    SERVER_ERROR,
    TOO_LARGE,
    Request,
    Response,
    TrackingApp,
)
from msgtrack.tracking.eventlog import EventLog

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 8 * 1024  # request line + headers
MAX_BODY_BYTES = 8 * 1024
MAX_HEADERS = 64
MAX_PIPELINED = 32  # answers waiting on one connection before we stop reading it
# Timeouts are settings: tracking_idle_timeout for a keep-alive connection with nothing
# to do, tracking_request_timeout from a request's first byte to its last (slowloris).
SHUTDOWN_GRACE = 10.0
LINGER_SECONDS = 2.0  # reading (and discarding) after an error answer, before closing
BACKLOG = 2048


_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "OPTIONS", "PUT", "DELETE")}
# The request headers the protocol looks at (lower case); the others are only counted.
_WANTED_HEADERS = frozenset(
    (b"cookie", b"user-agent", b"content-type", b"content-length", b"expect", b"connection")
)
_CONNECTION_LINES = (b"Connection: close\r\n\r\n", b"\r\n", b"Connection: keep-alive\r\n\r\n")


class _Reject(Exception):
    """Raised from a parser callback to answer ``response`` and close."""

    def __init__(self, response: Response) -> None:
        self.response = response


class ServerState:
    """What the connections of one server share."""

    def __init__(self, app: TrackingApp, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        settings = app.ctx.settings
        self.request_timeout = settings.tracking_request_timeout
        self.idle_timeout = settings.tracking_idle_timeout
        self.date_server = b""
        self.tick_date()
        # fast answers waiting for their event lines to be written (send_held)
        self.held: list[tuple[HttpProtocol, bytes]] = []
        app.hold_log_lines()

    def hold(self, conn: HttpProtocol, data: bytes) -> None:
        """Send ``data`` to ``conn`` with the rest of this turn's answers."""
        held = self.held
        if not held:
            self.loop.call_soon(self.send_held)
        held.append((conn, data))

    def send_held(self) -> None:
        """Write the held event lines (one ``write()``), then the held answers."""
        self.app.log.write_held()
        held = self.held
        if held:
            self.held = []
            for conn, data in held:
                transport = conn.transport
                if transport is not None:  # None: the client went away
                    try:
                        transport.write(data)
                    except Exception:  # one broken connection must not stop the others
                        log.exception("tracking server: answer not written")

    def tick_date(self) -> None:
        self.date_server = b"Date: %s\r\nServer: msgtrack\r\n" % formatdate(usegmt=True).encode()

    def tick(self) -> None:
        """Once a second: refresh the Date header, notice changed signing keys, drop
        idle and too-slow clients."""
        self.tick_date()
        try:
            self.app.refresh_keys()
        except Exception:  # never let the ticker die
            log.exception("signing keys check failed")
        now = self.loop.time()
        for conn in list(self.connections):
            if conn.deadline < now:
                conn.timed_out()

    def shutdown(self) -> None:
        self.stopping = True
        for conn in list(self.connections):
            conn.shutdown()


class HttpProtocol(asyncio.Protocol):
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.app = state.app
        self.loop = state.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: str | None = None
        # Answers in request order: [bytes or None while being computed, keep_alive].
        self.queue: deque[list[Any]] = deque()
        self.deadline = math.inf
        self.closing = False
        self.failed = False
        self.linger = False
        self.reading_paused = False
        self.writing_paused = False
        # the request being received
        self.in_message = False
        self.in_head = False
        self.received_in_head = 0
        self.url = b""
        self.head_bytes = 0
        self.header_count = 0
        self.cookie: bytes | None = None
        self.user_agent: bytes | None = None
        self.content_type: bytes | None = None
        self.expect_continue = False
        self.connection_header = False  # a Connection header came (HTTP/1.0 keep-alive)
        self.body: list[bytes] | None = None
        self.body_bytes = 0

    # -- connection --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) and peer else None
        self.state.connections.add(self)
        self.deadline = self.loop.time() + self.state.idle_timeout
        if self.state.stopping:
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self.closing = True
        self.queue.clear()
        self.transport = None

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests.
        self.writing_paused = True
        self.deadline = self.loop.time() + self.state.idle_timeout
        if self.transport is not None and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._maybe_resume_reading()

    def eof_received(self) -> bool | None:
        # The client is done sending; answers still owed go out, then we close.
        if self.closing:
            return None  # lingering after an error answer: done
        self._finish()
        return True

    def timed_out(self) -> None:
        if self.queue and not self.in_message and not self.writing_paused:
            self.deadline = math.inf  # waiting on our own slow work, not on the client
            return
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """Stop: close now if idle, else after the answers in flight."""
        if not self.closing and not self.queue and not self.in_message:
            self._close()

    def _close(self) -> None:
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        self.state.send_held()  # the answers held for this connection go first
        if self.linger and transport.can_write_eof():
            # After an error answer the client may still be sending: closing now would
            # reset the connection and could destroy the answer before it is read. Send
            # FIN, discard what still comes, close at EOF or after LINGER_SECONDS.
            transport.write_eof()
            self.deadline = self.loop.time() + LINGER_SECONDS
            if self.reading_paused:
                transport.resume_reading()
                self.reading_paused = False
        else:
            transport.close()

    # -- receiving ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing or self.failed:
            return
        if self.in_head:
            # httptools buffers a header until its end: bound what one may cost us.
            self.received_in_head += len(data)
            if self.received_in_head > 4 * MAX_HEAD_BYTES:
                self._fail(HEADERS_TOO_LARGE)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            rejected = exc.__context__
            if isinstance(rejected, _Reject):
                self._fail(rejected.response)
            else:
                log.error("tracking server parser callback failed", exc_info=rejected)
                self._fail(SERVER_ERROR)
        except httptools.HttpParserUpgrade:
            # We never switch protocols. The request itself was answered like any
            # other; the parser cannot go on past it, so close after what is owed.
            if self.in_message:
                self._fail(BAD_REQUEST)
            else:
                self._finish()
        except httptools.HttpParserError:
            self._fail(BAD_REQUEST)

    def on_message_begin(self) -> None:
        self.in_message = True
        self.in_head = True
        self.received_in_head = self.head_bytes = self.header_count = 0
        self.url = b""
        self.cookie = self.user_agent = self.content_type = None
        self.expect_continue = self.connection_header = False
        self.body = None
        self.deadline = self.loop.time() + self.state.request_timeout

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _Reject(HEADERS_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self.head_bytes + len(name) + len(value) + 4
        self.head_bytes = size
        count = self.header_count = self.header_count + 1
        if size > MAX_HEAD_BYTES or count > MAX_HEADERS:
            raise _Reject(HEADERS_TOO_LARGE)
        key = name.lower()
        if key not in _WANTED_HEADERS:  # Host, Accept, ...: one set lookup each
            return
        if key == b"cookie":
            self.cookie = value if self.cookie is None else self.cookie + b"; " + value
        elif key == b"user-agent":
            self.user_agent = value
        elif key == b"content-type":
            self.content_type = value
        elif key == b"content-length":
            if value.strip().isdigit() and int(value) > MAX_BODY_BYTES:
                raise _Reject(TOO_LARGE)
        elif key == b"expect":
            if value.strip().lower() == b"100-continue":
                self.expect_continue = True
        elif key == b"connection":
            self.connection_header = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.expect_continue and not self.queue and self.transport is not None:
            self.state.send_held()  # after the answers before it
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.body is None:
            self.body = [body]
            self.body_bytes = len(body)
        else:
            self.body.append(body)
            self.body_bytes += len(body)
        if self.body_bytes > MAX_BODY_BYTES:
            raise _Reject(TOO_LARGE)

    def on_message_complete(self) -> None:
        self.in_message = False
        parser = self.parser
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii", "replace")
        keep_alive = parser.should_keep_alive() and not self.state.stopping
        # 0: close, 1: keep-alive (HTTP/1.1), 2: keep-alive an HTTP/1.0 client asked for
        # with a Connection header (so the version is only looked up then)
        connection = 0
        if keep_alive:
            connection = 1
            if self.connection_header and parser.get_http_version() == "1.0":
                connection = 2
        url = self.url
        if url[:1] != b"/":  # absolute-form target: keep only the path
            scheme = url.find(b"://")
            slash = url.find(b"/", scheme + 3) if scheme > 0 else -1
            url = url[slash:] if slash > 0 else b""
        query = url.find(b"?")
        path = (url[:query] if query >= 0 else url).decode("latin-1")
        ua, cookie, ctype, body = self.user_agent, self.cookie, self.content_type, self.body
        request = Request(
            method,
            path,
            self.client,
            ua.decode("latin-1") if ua is not None else None,
            cookie.decode("latin-1") if cookie is not None else None,
            ctype.decode("latin-1") if ctype is not None else None,
            b"".join(body) if body else b"",
        )
        head = method == "HEAD"
        try:
            response = self.app.handle_fast(request)
        except Exception:
            log.exception("tracking request %s %s failed", method, path)
            response = SERVER_ERROR
        if response is not None:
            data = response.wire(self.state.date_server, _CONNECTION_LINES[connection], head)
            transport = self.transport
            if self.queue:
                self.queue.append([data, keep_alive])
            elif keep_alive and not self.writing_paused and transport is not None:
                # _write's common case inline, held for this turn's group (send_held):
                # answered, the connection waits for more
                if not self.closing:
                    self.state.hold(self, data)
                    self.deadline = self.loop.time() + self.state.idle_timeout
            else:
                self._write(data, keep_alive)
            return
        slot: list[Any] = [None, keep_alive]
        self.queue.append(slot)
        self.deadline = math.inf
        task = self.loop.create_task(self._answer_slow(request, slot, head, connection == 2))
        self.state.tasks.add(task)
        task.add_done_callback(self.state.tasks.discard)
        if len(self.queue) > MAX_PIPELINED and not self.reading_paused and self.transport:
            self.transport.pause_reading()
            self.reading_paused = True

    async def _answer_slow(
        self, request: Request, slot: list[Any], head: bool, http10: bool
    ) -> None:
        try:
            response = await self.app.handle(request)
        except Exception:
            log.exception("tracking request %s %s failed", request.method, request.path)
            response = SERVER_ERROR
        slot[0] = self._serialize(response, head, (2 if http10 else 1) if slot[1] else 0)
        self._flush()

    # -- answering ---------------------------------------------------------------------

    def _serialize(self, response: Response, head: bool, connection: int) -> bytes:
        """The answer's bytes; ``connection`` as in ``on_message_complete`` (0: close).
        The response's own header lines are built once per Response (the fixed answers
        are module constants)."""
        return response.wire(self.state.date_server, _CONNECTION_LINES[connection], head)

    def _write(self, data: bytes, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        self.state.send_held()  # event lines and earlier answers first
        transport.write(data)
        if not keep_alive:
            self._close()
        elif not self.in_message and not self.queue:
            if self.state.stopping:
                self._close()
            elif not self.writing_paused:
                self.deadline = self.loop.time() + self.state.idle_timeout

    def _flush(self) -> None:
        queue = self.queue
        while queue and queue[0][0] is not None:
            data, keep_alive = queue.popleft()
            if keep_alive and self.failed and not queue:
                keep_alive = False
            self._write(data, keep_alive)
            if self.closing:
                queue.clear()
                return
        if queue:
            self.deadline = math.inf
        self._maybe_resume_reading()

    def _maybe_resume_reading(self) -> None:
        if (
            self.reading_paused
            and not self.writing_paused
            and not self.failed
            and len(self.queue) <= MAX_PIPELINED // 2
            and self.transport is not None
        ):
            self.transport.resume_reading()
            self.reading_paused = False

    def _finish(self) -> None:
        """Read no more; close once the answers owed are written."""
        self.failed = True
        if self.queue:
            self.queue[-1][1] = False
        else:
            self._close()

    def _fail(self, response: Response) -> None:
        """Answer an unusable request (after the answers owed before it) and close."""
        self.failed = True
        self.linger = True
        self.in_message = self.in_head = False
        if self.transport is not None and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        self.queue.append([self._serialize(response, False, 0), False])
        self._flush()


# -- running ------------------------------------------------------------------------------


Ready = Callable[[str, int], None]


async def serve(ctx: Context, host: str, port: int, *, ready: Ready | None = None) -> None:
    """Serve until SIGTERM/SIGINT; ``ready(host, port)`` is called once listening."""
    event_log = EventLog.from_settings(ctx.settings)
    try:
        app = TrackingApp(ctx, event_log)
        await _serve_app(app, host, port, ready)
    finally:
        event_log.close()
        stats = event_log.stats
        log.info("event log closed: %d written, %d dropped", stats["written"], stats["dropped"])


async def _serve_app(app: TrackingApp, host: str, port: int, ready: Ready | None) -> None:
    loop = asyncio.get_running_loop()
    state = ServerState(app, loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(
        lambda: HttpProtocol(state), host, port, reuse_port=True, backlog=BACKLOG
    )
    bound = server.sockets[0].getsockname()
    if ready is not None:
        ready(bound[0], bound[1])

    async def ticker() -> None:
        while True:
            await asyncio.sleep(1.0)
            state.tick()

    tick_task = loop.create_task(ticker())
    try:
        await stop.wait()
    finally:
        # Stop accepting; let what is in flight finish; then the caller closes the log.
        server.close()
        state.shutdown()
        deadline = loop.time() + SHUTDOWN_GRACE
        while (state.connections or state.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(state.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if state.tasks:
            await asyncio.wait(set(state.tasks), timeout=SHUTDOWN_GRACE)
        tick_task.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # e.g. Windows: plain asyncio still works, slower
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def ensure_keys(ctx: Context) -> None:
    """Signing keys under the home, made on first start (the database is not needed)."""
    keys_file = ctx.settings.keys_file
    if not keys_file.exists():
        from msgtrack.links.sign import KeyRing

        KeyRing.generate().save(keys_file)
        ctx.reload_keyring()


def run_tracking_server(ctx: Context, host: str, port: int, workers: int = 1) -> None:
    """Run the public tracking server until SIGTERM/SIGINT (blocks).

    ``workers`` > 1 forks that many processes sharing the port (SO_REUSEPORT: the
    kernel spreads connections over them), each with its own event log; the parent only
    watches them, passes SIGTERM/SIGINT on, and restarts one that dies unasked.
    """
    if workers <= 1:
        _run_worker(ctx, host, port, announce=True)
        return
    if port == 0:
        raise ValueError("several workers need a fixed port to share")
    _supervise(ctx, host, port, workers)


def _run_worker(ctx: Context, host: str, port: int, *, announce: bool) -> None:
    def ready(bound_host: str, bound_port: int) -> None:
        if announce:
            print(
                f"msgtrack tracking server listening on http://{bound_host}:{bound_port}",
                flush=True,
            )

    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(serve(ctx, host, port, ready=ready))


RESTART_DELAY = 1.0


def _supervise(ctx: Context, host: str, port: int, workers: int) -> None:
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def spawn() -> int:
        pid = os.fork()
        if pid == 0:  # the worker: its own loop, log, database connections
            code = 0
            try:
                if "engine" in ctx.__dict__:
                    ctx.engine.dispose(close=False)  # never share the parent's connections
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _run_worker(ctx, host, port, announce=False)
            except BaseException:
                log.exception("tracking worker %d failed", os.getpid())
                code = 1
            finally:
                os._exit(code)
        return pid

    children: set[int] = set()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        children.add(spawn())
    print(
        f"msgtrack tracking server listening on http://{host}:{port} ({workers} workers)",
        flush=True,
    )
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        children.discard(pid)
        if not stopping:
            log.error("tracking worker %d ended (status %d): restarting", pid, status)
            time.sleep(RESTART_DELAY)
            if not stopping:
                children.add(spawn())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m msgtrack.tracking.server", description="The public tracking server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx = Context()
    try:
        run_tracking_server(ctx, args.host, args.port, args.workers)
    finally:
        ctx.close()


if __name__ == "__main__":
    main()
