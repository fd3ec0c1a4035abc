"""The tracking server's hot path, in process: the HTTP protocol with an in-memory
transport, and the shortcuts it takes (answers built as wire lines, the visitor cookie
patterns, the varint loop, the Location line of a tracked URL) checked against the
straightforward definitions they replace."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgtrack.config import load_settings
from msgtrack.context import Context
from msgtrack.links.sign import (
    KeyRing,
    LinkToken,
    TokenError,
    _get_varint,
    _get_varints,
    _put_varint,
    b64url,
)
from msgtrack.tracking import snapshot
from msgtrack.tracking.app import Response, TrackingApp, _new_visitor_id, _visitor
from msgtrack.tracking.eventlog import EventLog
from msgtrack.tracking.server import HttpProtocol, ServerState
from msgtrack.tracking.urls import make_tracked_url
from tests.helpers import logged_events

DELIVERY, CLICK, PERSONAL, OPEN = 3, 10, 11, 12
DESTINATION = "https://shop.example/spring?utm_source=newsletter"


class Transport:
    """What HttpProtocol calls on a transport; keeps what is written."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.data += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def run_one_turn(loop: asyncio.AbstractEventLoop) -> None:
    """Run the callbacks ready on a loop that is not running (``send_held``)."""
    loop.call_soon(loop.stop)
    loop.run_forever()


@dataclass
class Served:
    app: TrackingApp
    protocol: HttpProtocol
    transport: Transport
    keyring: KeyRing
    home: Path

    def answer(self, request: bytes) -> bytes:
        """The bytes written for ``request`` (answered on the fast path)."""
        before = len(self.transport.data)
        self.protocol.data_received(request)
        run_one_turn(self.protocol.loop)  # held answers leave at the next turn
        return bytes(self.transport.data[before:])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    home = tmp_path / "home"
    settings = load_settings(home)
    keyring = KeyRing.generate()
    keyring.save(settings.keys_file)
    snapshot.publish(
        settings.snapshots_dir,
        DELIVERY,
        [
            snapshot.PublishedUrl(CLICK, DELIVERY, "click", DESTINATION, "spring", True),
            snapshot.PublishedUrl(
                PERSONAL, DELIVERY, "click", "https://shop.example/p/{{ r.id }}", "p", True
            ),
            snapshot.PublishedUrl(OPEN, DELIVERY, "open", "", "", True),
        ],
    )
    ctx = Context(settings)
    event_log = EventLog.from_settings(settings)
    app = TrackingApp(ctx, event_log)
    app.urls.find(DELIVERY, CLICK)  # the first token of a delivery takes the slow path
    loop = asyncio.new_event_loop()
    protocol = HttpProtocol(ServerState(app, loop))
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    try:
        yield Served(app, protocol, transport, keyring, home)
    finally:
        event_log.close()
        loop.close()


def click_path(served: Served, message: int, url: int = CLICK, values: tuple[str, ...] = ()) -> str:
    return "/c/" + served.keyring.sign_link(LinkToken(DELIVERY, message, url, values))


def headers_of(answer: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    head = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    pairs = [line.split(b": ", 1) for line in head[1:]]
    return head[0], [(name, value) for name, value in pairs]


def test_click_answers_with_both_cookies_then_keeps_the_session(served: Served) -> None:
    path = click_path(served, 77).encode()
    first = served.answer(b"GET %s HTTP/1.1\r\nHost: t\r\nUser-Agent: A/1\r\n\r\n" % path)
    status, headers = headers_of(first)
    assert status == b"HTTP/1.1 302 Found"
    names = [name for name, _ in headers]
    assert names[:2] == [b"Date", b"Server"]
    assert names[2:] == [b"Location", b"Cache-Control", b"Set-Cookie", b"Set-Cookie"] + [
        b"Content-Length"
    ]
    assert dict(headers)[b"Location"] == DESTINATION.encode()
    cookies = [value for name, value in headers if name == b"Set-Cookie"]
    visitor = cookies[0].split(b";")[0].removeprefix(b"mt_v=")
    session = cookies[1].split(b";")[0].removeprefix(b"mt_s=")
    assert served.keyring.verify_session(session.decode()) == (DELIVERY, 77)
    assert first.endswith(b"Content-Length: 0\r\n\r\n")  # keep-alive: no Connection line

    again = served.answer(
        b"GET %s HTTP/1.1\r\nHost: t\r\nCookie: mt_v=%s; mt_s=%s\r\n\r\n" % (path, visitor, session)
    )
    _, headers = headers_of(again)
    assert [value for name, value in headers if name == b"Set-Cookie"] == [cookies[0]]
    events = logged_events(served.home)
    assert [(e.kind, e.message_id, e.visitor_id) for e in events] == [
        ("click", 77, visitor.decode()),
        ("click", 77, visitor.decode()),
    ]
    assert events[0].user_agent == "A/1" and events[1].user_agent is None


def test_event_lines_of_a_turn_are_written_together_before_its_answers(
    served: Served,
) -> None:
    """Pipelined clicks answered in one turn: their lines go to the log in one write,
    and no answer leaves before that."""
    seen: list[tuple[int, bytes]] = []  # (lines in the log, answer) at each write
    record = served.transport.write

    def write(data: bytes) -> None:
        seen.append((len(logged_events(served.home)), data))
        record(data)

    served.transport.write = write  # type: ignore[method-assign]
    paths = [click_path(served, m).encode() for m in (1, 2, 3)]
    answer = served.answer(b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p for p in paths))
    assert answer.count(b"HTTP/1.1 302 Found") == 3
    assert [lines for lines, _ in seen] == [3, 3, 3]
    assert [e.message_id for e in logged_events(served.home)] == [1, 2, 3]
    assert served.app.log.stats["written"] == 3


def test_personalized_head_and_bad_clicks(served: Served) -> None:
    personal = click_path(served, 5, PERSONAL, ("a b/é",)).encode()
    answer = served.answer(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % personal)
    assert dict(headers_of(answer)[1])[b"Location"] == b"https://shop.example/p/a%20b%2F%C3%A9"
    head = served.answer(b"HEAD %s HTTP/1.1\r\nHost: t\r\n\r\n" % personal)
    status, headers = headers_of(head)
    assert status == b"HTTP/1.1 302 Found" and b"Set-Cookie" not in dict(headers)
    # values that do not fit the template: 404, never a redirect
    wrong = click_path(served, 5, PERSONAL, ()).encode()
    assert served.answer(b"GET %s HTTP/1.1\r\n\r\n" % wrong).startswith(b"HTTP/1.1 404")
    assert served.app.rejected_tokens == 1
    assert len(logged_events(served.home)) == 1


def test_http10_keep_alive_only_when_asked(served: Served) -> None:
    path = click_path(served, 1).encode()
    asked = served.answer(b"GET %s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % path)
    assert b"\r\nConnection: keep-alive\r\n\r\n" in asked and not served.transport.closed
    plain = served.answer(b"GET %s HTTP/1.1\r\nConnection: keep-alive\r\n\r\n" % path)
    assert b"Connection:" not in plain and not served.transport.closed
    closing = served.answer(b"GET %s HTTP/1.0\r\n\r\n" % path)
    assert b"\r\nConnection: close\r\n\r\n" in closing and served.transport.closed


def test_response_from_wire_lines_gives_its_headers_back() -> None:
    wire = b"Location: https://x.example/\r\nSet-Cookie: a=b; Path=/\r\nContent-Length: 0\r\n"
    response = Response(302, None, b"", wire)
    assert response.headers == (
        (b"Location", b"https://x.example/"),
        (b"Set-Cookie", b"a=b; Path=/"),
    )
    built = Response(302, response.headers)
    assert built.wire_headers() == wire
    assert response.wire(b"Date: x\r\n", b"\r\n", False) == (
        b"HTTP/1.1 302 Found\r\nDate: x\r\n" + wire + b"\r\n"
    )
    page = Response(200, ((b"Content-Type", b"text/plain"),), b"hello")
    assert page.wire(b"", b"\r\n", True).endswith(b"Content-Length: 5\r\n\r\n")
    assert page.wire(b"", b"\r\n", False).endswith(b"\r\n\r\nhello")


def test_location_line_of_a_tracked_url() -> None:
    fixed = make_tracked_url(1, 2, "click", DESTINATION, "")
    assert fixed.location_line(()) == b"Location: " + DESTINATION.encode() + b"\r\n"
    assert fixed.location_line(("x",)) is None
    personal = make_tracked_url(1, 2, "click", "https://a.example/{{ r.id }}?q=é", "")
    assert personal.fixed_location is None
    assert personal.location_line(("7 8",)) == b"Location: https://a.example/7%208?q=%C3%A9\r\n"
    assert personal.location_line(()) is None
    assert make_tracked_url(1, 2, "click", "ftp://a.example/", "").location_line(()) is None


# The visitor cookie, as one pattern: what the two patterns of app._visitor must match.
_ONE_PATTERN = re.compile(r"(?:^|[;,]\s*)mt_v=([A-Za-z0-9_-]{22})(?=\s*(?:[;,]|$))")
VISITOR = "Q2xpY2tpbmdWaXNpdG9yMD"


def _one_pattern(cookie: str) -> str | None:
    match = _ONE_PATTERN.search(cookie)
    return match.group(1) if match else None


@pytest.mark.parametrize(
    "cookie",
    [
        f"mt_v={VISITOR}",
        f"mt_v={VISITOR}; mt_s=1.2.3.x",
        f"a=b; mt_v={VISITOR}",
        f"a=b,mt_v={VISITOR} ;c=d",
        f"a=b;\tmt_v={VISITOR}  ",
        f"xmt_v={VISITOR}",
        f"a=b; xmt_v={VISITOR}; mt_v={VISITOR[::-1]}",
        f"mt_v={VISITOR}x",
        f"mt_v={VISITOR[:-1]}",
        f"mt_v= {VISITOR}",
        "",
    ],
)
def test_visitor_cookie_examples(cookie: str) -> None:
    assert _visitor(cookie) == _one_pattern(cookie)


cookie_parts = st.sampled_from(
    ["mt_v=", VISITOR, "; ", ";", ",", " ", "x", "a=b", "mt_s=1.2.3.abc", "é", "\t", "="]
)


@given(st.lists(cookie_parts, max_size=8).map("".join))
def test_visitor_cookie_is_read_as_the_one_pattern_reads_it(cookie: str) -> None:
    assert _visitor(cookie) == _one_pattern(cookie)


@given(st.binary(max_size=40))
def test_b64url_is_base64url_without_padding(raw: bytes) -> None:
    assert b64url(raw) == base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_new_visitor_ids_are_random_and_read_back_from_the_cookie() -> None:
    ids = {_new_visitor_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(_visitor(f"a=b; mt_v={v}") == v for v in ids)


varint_values = st.one_of(
    st.integers(min_value=0, max_value=0x7F), st.integers(min_value=0, max_value=2**64 - 1)
)


@given(st.lists(varint_values, min_size=1, max_size=5), st.binary(max_size=4))
def test_varint_loop_reads_what_put_varint_writes(numbers: list[int], tail: bytes) -> None:
    data = bytearray(b"\x01")
    for n in numbers:
        _put_varint(data, n)
    end = len(data)
    data += tail
    assert _get_varints(bytes(data), 1, len(numbers)) == (numbers, end)
    assert _get_varint(bytes(data), 1) == (numbers[0], _get_varint(bytes(data[:end]), 1)[1])


@pytest.mark.parametrize(
    "data",
    [
        b"",  # nothing
        b"\x80",  # truncated
        b"\x81\x00",  # non-minimal: a last byte of 0
        b"\xff" * 10 + b"\x01",  # eleven bytes
    ],
)
def test_varint_loop_refuses_truncated_long_and_non_minimal(data: bytes) -> None:
    with pytest.raises(TokenError):
        _get_varints(data, 0, 1)


def test_event_log_stats_are_a_snapshot_of_every_counter(tmp_path: Path) -> None:
    with EventLog(tmp_path, fsync_interval=10, max_bytes=1 << 20, max_age=3600) as event_log:
        assert event_log.append_line(b"x\n")
        stats = event_log.stats
        assert event_log.append_line(b"y\n")
    assert stats["written"] == 1 and stats["bytes"] == 2
    assert set(event_log.stats) == {
        "written", "dropped", "bytes", "segments", "sealed", "fsyncs", "errors",
    }  # fmt: skip
    assert event_log.stats["written"] == 2 and event_log.stats["sealed"] == 1
