"""Hostile requests against the tracking server: odd methods, huge and malformed
targets, path traversal, header injection through the Location, slow clients, tokens of
a retired key; and a hypothesis fuzz run against the token codec and the HTTP layer.

Real server processes for the behaviour over the wire; the fuzz run drives the same
``HttpProtocol`` in-process (with a transport that records what is written), which is
what lets it try hundreds of requests in a second or two.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgtrack.config import load_settings
from msgtrack.context import Context
from msgtrack.links.sign import MAC_BYTES, PURPOSE_LINK, KeyRing, LinkToken, TokenError
from msgtrack.tracking.app import TrackingApp
from msgtrack.tracking.eventlog import EventLog
from msgtrack.tracking.server import HttpProtocol, ServerState
from tests.helpers import msgtrack
from tests.test_tokens import b64
from tests.test_tracking_crash import (
    CLICK,
    DELIVERY,
    OPEN,
    OPT_OUT,
    logged,
    make_home,
    tracking_server,
)
from tests.test_tracking_faults import server
from tests.test_tracking_server import raw_http

DESTINATION = "https://shop.example/item/"


def statuses(answer: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


def header_lines(answer: bytes) -> list[bytes]:
    return answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]


# -- hostile requests over the wire ---------------------------------------------------------


def test_hostile_requests_get_plain_refusals_and_no_events(tmp_path: Path) -> None:
    env, keyring = make_home(tmp_path)
    click = keyring.sign_link(LinkToken(DELIVERY, 1, CLICK, ("42",)))
    injected = keyring.sign_link(
        LinkToken(DELIVERY, 1, CLICK, ("42\r\nSet-Cookie: evil=1\r\nX-Evil: 1",))
    )
    beacon = keyring.sign_link(LinkToken(DELIVERY, 1, OPEN))
    with tracking_server(env) as (_, base), httpx.Client(base_url=base) as client:
        port = int(base.rsplit(":", 1)[1])

        def get(target: bytes, *, extra: bytes = b"") -> bytes:
            return raw_http(
                port, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                + extra + b"\r\n"
            )  # fmt: skip

        # OPTIONS and other methods: 405 with Allow, never a redirect
        for target in (f"/c/{click}", "*", "/health"):
            answer = raw_http(
                port, f"OPTIONS {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
            )
            assert statuses(answer)[0] in (404, 405) and b"Location" not in answer
        options = client.request("OPTIONS", f"/c/{click}")
        assert options.status_code == 405 and options.headers["allow"] == "GET, HEAD"
        # HEAD: the same redirect, no cookies, no event
        head = client.head(f"/c/{click}")
        assert head.status_code == 302 and "set-cookie" not in head.headers

        # the query string is not ours: ignored, however long, odd or repeated
        for query in (
            "?x=1&x=2&x=3&u=https://evil.example/",
            "?" + "a=b&" * 1500,  # 6 KB: under the 8 KiB limit
            "?next=%0d%0aLocation:%20https://evil.example/",
        ):
            response = client.get(f"/c/{click}{query}")
            assert response.status_code == 302
            assert response.headers["location"] == DESTINATION + "42"
        assert statuses(get(f"/c/{click}?{'a' * 9000}".encode()))[0] == 431
        assert statuses(get(f"/c/{click}?v=%ff%fe%c3%28".encode()))[0] == 302
        # raw bytes that are not ASCII (invalid UTF-8 or not) in the target: not HTTP
        for target in (
            f"/c/{click}?v=\xff\xfe\xc3\x28".encode("latin-1"),
            b"/c/\xff\xfe\xfd" + click.encode(),
            b"/c/" + click.encode()[:-2] + b"\xc3\x28",
            b"/c/" + click.encode() + b"\xe2\x80\xa8",
        ):
            answer = get(target)
            assert statuses(answer)[0] in (400, 404) and b"Location" not in answer

        # an absolute-form target or a Host header never picks the destination
        answer = get(f"http://evil.example/c/{click}".encode(), extra=b"X-Forwarded-Host: e\r\n")
        assert statuses(answer) == [302]
        assert f"Location: {DESTINATION}42\r\n".encode() in answer

        # CR/LF in a personalization value: percent-encoded inside the one Location
        answer = get(f"/c/{injected}".encode())
        assert statuses(answer) == [302]
        lines = header_lines(answer)
        locations = [line for line in lines if line.startswith(b"Location: ")]
        assert locations == [
            b"Location: https://shop.example/item/42%0D%0ASet-Cookie%3A%20evil%3D1%0D%0AX-Evil%3A%201"
        ]
        assert not any(line.startswith((b"X-Evil", b"Set-Cookie: evil")) for line in lines)

        rejected = [
            # path traversal, plain and encoded, around and instead of a token
            b"/c/../../etc/passwd",
            b"/c/..%2f..%2fetc%2fpasswd",
            b"/c/%2e%2e/%2e%2e/etc/passwd",
            b"/c/" + click.encode() + b"/../../../etc/passwd",
            b"/c/" + click.encode() + b"%2f..%2f..%2fetc%2fpasswd",
            b"/o/....//....//etc/passwd",
            # CR/LF and invalid UTF-8, percent-encoded, in the token
            b"/c/" + click.encode() + b"%0d%0aSet-Cookie:%20evil=1",
            b"/c/" + click.encode() + b"%0D%0A",
            b"/c/%ff%fe%fd" + click.encode(),
            b"/c/" + click.encode()[:-2] + b"%c3%28",
        ]
        for target in rejected:
            answer = get(target)
            assert statuses(answer) == [404], target
            assert b"Location" not in answer and b"Set-Cookie" not in answer
            assert b"root:" not in answer
        for target in (b"/../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd", b"//etc/passwd"):
            assert statuses(get(target)) == [404]  # not ours: not even a rejected token
        # a raw CR or LF inside the request line ends it or breaks it: refused either way
        for bad in (b"/c/a\rb", b"/c/a\nSet-Cookie: x=1"):
            answer = raw_http(port, b"GET " + bad + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            assert statuses(answer)[0] in (400, 404), bad
            assert b"Location" not in answer and b"Set-Cookie" not in answer

        assert client.get(f"/o/{beacon}").status_code == 200
        stats = client.get("/health").json()
    assert stats["rejected_tokens"] >= len(rejected)  # (+ what the lenient parser let in)
    events = logged(env)
    # the redirects of ignored queries, the odd query, the absolute form, the injection, the open
    assert [e.kind for e in events] == ["click"] * 6 + ["open"]


def test_slow_clients_are_cut_off_and_others_still_served(tmp_path: Path) -> None:
    env, _ = make_home(tmp_path)
    timeouts = {"MSGTRACK_TRACKING_REQUEST_TIMEOUT": "1", "MSGTRACK_TRACKING_IDLE_TIMEOUT": "1"}
    with server(env, **timeouts) as (_, base), httpx.Client(base_url=base) as client:
        port = int(base.rsplit(":", 1)[1])
        slow = []
        for _ in range(20):  # slowloris: a header line trickled byte by byte, never ended
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            slow.append(s)
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)  # says nothing
        started = time.monotonic()
        closed: set[int] = set()
        while len(closed) < len(slow) and time.monotonic() - started < 8:
            assert client.get("/health").status_code == 200  # others are served meanwhile
            for i, s in enumerate(slow):
                if i in closed:
                    continue
                try:
                    s.sendall(b"a")
                    s.settimeout(0.01)
                    if s.recv(1) == b"":
                        closed.add(i)
                except TimeoutError:
                    pass
                except OSError:  # reset by the server
                    closed.add(i)
            time.sleep(0.2)
        # cut after the request timeout (checked once a second), not after the 8 s
        assert len(closed) == len(slow)
        assert time.monotonic() - started < 6
        idle.settimeout(5)
        try:
            assert idle.recv(1) == b""
        except ConnectionResetError:
            pass
        for s in [*slow, idle]:
            s.close()
        assert client.get("/health").status_code == 200


def test_old_tokens_work_after_rotate_and_404_once_their_key_is_retired(tmp_path: Path) -> None:
    env, keyring = make_home(tmp_path)
    old = f"/c/{keyring.sign_link(LinkToken(DELIVERY, 1, CLICK, ('7',)))}"
    with tracking_server(env) as (_, base), httpx.Client(base_url=base) as client:
        assert client.get(old).status_code == 302
        msgtrack(env, "keys", "rotate")
        ring = KeyRing.load(load_settings(env["MSGTRACK_HOME"]).keys_file)
        assert ring.active != 1
        new = f"/c/{ring.sign_link(LinkToken(DELIVERY, 1, CLICK, ('7',)))}"
        # the running server picks the new key up (keys.json is checked once a second)
        deadline = time.monotonic() + 10
        while client.get(new).status_code != 302:
            assert time.monotonic() < deadline, "the new key was never loaded"
            time.sleep(0.1)
        assert client.get(old).status_code == 302  # replayed old token: still valid
        msgtrack(env, "keys", "retire", "1")
        deadline = time.monotonic() + 10
        while (response := client.get(old)).status_code != 404:
            assert time.monotonic() < deadline, "the retired key still verifies"
            time.sleep(0.1)
        assert "location" not in response.headers
        assert client.get(new).status_code == 302
        stats = client.get("/health").json()
    assert stats["rejected_tokens"] >= 1


# -- fuzzing --------------------------------------------------------------------------------

FUZZ_RING = KeyRing.generate()


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=48))
def test_fuzz_any_genuinely_signed_body_is_canonical_or_refused(body: bytes) -> None:
    """Even with a genuine MAC (which an attacker cannot make), a body is accepted only
    when it is exactly what ``sign_link`` writes for the token it decodes to."""
    key = FUZZ_RING.keys[FUZZ_RING.active]
    text = b64(
        bytes([FUZZ_RING.active])
        + body
        + key.mac(PURPOSE_LINK, bytes([FUZZ_RING.active]) + body, MAC_BYTES)
    )
    try:
        token = FUZZ_RING.verify_link(text)
    except TokenError:
        return
    assert FUZZ_RING.sign_link(token) == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_any_text_is_refused_with_token_error(text: str) -> None:
    with pytest.raises(TokenError):
        FUZZ_RING.verify_link(text)


class RecordingTransport:
    """What ``HttpProtocol`` writes, and whether it closed the connection."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def close(self) -> None:
        self.closed = True

    abort = close

    def write_eof(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.fixture(scope="module")
def fuzz_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerState]:
    env, keyring = make_home(tmp_path_factory.mktemp("fuzz"))
    settings = load_settings(env["MSGTRACK_HOME"])
    ctx = Context(settings)
    event_log = EventLog.from_settings(settings)
    app = TrackingApp(ctx, event_log)
    for url_id in (CLICK, OPEN, OPT_OUT):
        app.urls.find(DELIVERY, url_id)  # cached: the fuzz run never waits on a loader
    loop = asyncio.new_event_loop()
    state = ServerState(app, loop)
    state.fuzz_tokens = [  # type: ignore[attr-defined]
        keyring.sign_link(LinkToken(DELIVERY, 1, CLICK, ("42",))),
        keyring.sign_link(LinkToken(DELIVERY, 2, OPEN)),
    ]
    yield state
    for task in state.tasks:  # slow-path answers never run here: the loop is not running
        task.cancel()
    if state.tasks:
        loop.run_until_complete(asyncio.gather(*state.tasks, return_exceptions=True))
    loop.close()
    event_log.close()
    ctx.close()


PIECES = [
    b"GET ", b"HEAD ", b"POST ", b"OPTIONS ", b"/c/", b"/o/", b"/u/", b"/health", b"?",
    b"&x=", b"%0d%0a", b"%2e%2e/", b"../", b" HTTP/1.1\r\n", b" HTTP/1.0\r\n",
    b"Host: t\r\n", b"Cookie: mt_v=AAAAAAAAAAAAAAAAAAAAAA; mt_s=1.2.3.x\r\n",
    b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n",
    b"Expect: 100-continue\r\n", b"\r\n", b"\r", b"\n", b"\xff\xfe", b"\x00", b":", b" ",
    b"0\r\n\r\n", b"TOKEN0", b"TOKEN1",
]  # fmt: skip
HEADERS = [p for p in PIECES if p.endswith(b"\r\n") and b": " in p]
# mostly plausible requests (so most examples reach the app), with noise in between
REQUEST = st.tuples(
    st.sampled_from([b"GET ", b"GET ", b"GET ", b"HEAD ", b"POST ", b"PUT "]),
    st.sampled_from([b"/c/TOKEN0", b"/o/TOKEN1", b"/u/TOKEN0", b"/health", b"/c/", b"/x"]),
    st.one_of(
        st.sampled_from([b"", b"?x=1&x=2", b"?u=%0d%0aX:%201"]),
        st.sampled_from([b"", b"?x=1&x=2", b"?u=%0d%0aX:%201"]),
        st.sampled_from(PIECES),
        st.binary(max_size=6),
    ),
    st.sampled_from([b" HTTP/1.1\r\n", b" HTTP/1.0\r\n"]),
    st.lists(st.sampled_from(HEADERS), max_size=4),
).map(lambda r: b"".join([r[0], r[1], r[2], r[3], *r[4], b"\r\n"]))
CHUNKS = st.one_of(REQUEST, REQUEST, st.sampled_from(PIECES), st.binary(max_size=12))
STATUS_LINE = re.compile(rb"HTTP/1\.1 (100|200|302|400|404|405|413|431|500|503) [A-Za-z ]+\r\n")


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.tuples(REQUEST, st.lists(CHUNKS, max_size=8)).map(lambda t: [t[0], *t[1]]),
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8),
)
def test_fuzz_http_layer_answers_only_well_formed_responses(
    fuzz_state: ServerState, pieces: list[bytes], cuts: list[int]
) -> None:
    tokens: list[str] = fuzz_state.fuzz_tokens  # type: ignore[attr-defined]
    data = b"".join(pieces)
    data = data.replace(b"TOKEN0", tokens[0].encode()).replace(b"TOKEN1", tokens[1].encode())
    protocol = HttpProtocol(fuzz_state)
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    pos = 0
    for cut in cuts * (len(data) // max(1, sum(cuts)) + 1):  # fed in arbitrary pieces
        if pos >= len(data):
            break
        protocol.data_received(data[pos : pos + cut])
        pos += cut
    protocol.eof_received()
    protocol.connection_lost(None)
    fuzz_state.connections.discard(protocol)
    out = bytes(transport.data)
    # whatever came in, every answer is a whole, well-formed response
    while out:
        status = STATUS_LINE.match(out)
        assert status, out[:200]
        head, sep, rest = out.partition(b"\r\n\r\n")
        assert sep
        names = []
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, colon, value = line.partition(b": ")
            assert colon and re.fullmatch(rb"[A-Za-z-]+", name), line
            assert b"\r" not in value and b"\n" not in value
            names.append(name)
            if name == b"Content-Length":
                length = int(value)
            if name == b"Location":
                assert value == DESTINATION.encode() + b"42"
        if status.group(1) == b"100":
            out = rest
            continue
        assert b"Content-Length" in names
        # HEAD answers carry the length but no body; we cannot tell which here, so
        # accept either as long as what follows is again a response or nothing
        if rest[:length] and not rest.startswith(b"HTTP/1.1 "):
            rest = rest[length:]
        out = rest
