"""The public tracking server over real HTTP: a real server process
(``python -m msgtrack.tracking.server``), real clients with their own cookie jars, and
the event log it writes, read back with ``decode_event``. On SQLite and PostgreSQL."""

from __future__ import annotations

import importlib.util
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from msgtrack.context import Context
from msgtrack.links.addresses import MIRROR_ORDINAL, OPEN_ORDINAL, OPT_OUT_ORDINAL
from msgtrack.links.sign import KeyRing, LinkToken
from msgtrack.storage.schema import deliveries, messages, recipients, tracked_urls
from msgtrack.storage.types import utcnow
from msgtrack.tracking import snapshot
from msgtrack.tracking.eventlog import SEGMENT_NAME, is_sealed
from tests.helpers import free_port, logged_events, serving

PLAIN_URL = "https://shop.example/a?x=1&y=2"
PERSONAL_URL = "https://shop.example/p/{{ recipient.id }}?n={{ recipient.first_name }}"

# -- a delivery, inserted as the delivery side would leave it -----------------------------


@dataclass
class Sent:
    delivery_id: int
    urls: dict[str, int]  # plain, personal, open, opt-out, mirror -> tracked URL id
    message_ids: list[int] = field(default_factory=list)


def add_delivery(ctx: Context, *, publish: bool = True, name: str = "Spring") -> Sent:
    """A sent delivery with two links, the open/opt-out/mirror URLs and two messages."""
    now = utcnow()
    with ctx.engine.begin() as conn:
        delivery_id = conn.execute(
            insert(deliveries).values(
                name=name,
                subject="Hello",
                from_addr="news@shop.example",
                html='<html><body><p>Hello {{ recipient.first_name }}</p><a href="https://shop.example/a?x=1&amp;y=2">Shop</a></body></html>',
                text="Hello",
                html_template=(
                    '<html><body><img src="{{ _msgtrack_beacon() }}" width="1" height="1" alt="">'
                    "<p>Hello {{ recipient.first_name }}</p>"
                    '<a href="{{ _msgtrack_link(1) }}">Shop</a></body></html>'
                ),
                text_template="Hello {{ recipient.first_name }} {{ _msgtrack_link(1) }}",
                state="sent",
                created_at=now,
                sent_at=now,
            )
        ).inserted_primary_key[0]
        rows = [
            ("plain", 1, PLAIN_URL, "click"),
            ("personal", 2, PERSONAL_URL, "click"),
            ("open", OPEN_ORDINAL, "", "open"),
            ("opt-out", OPT_OUT_ORDINAL, "", "opt-out"),
            ("mirror", MIRROR_ORDINAL, "", "mirror"),
        ]
        urls = {
            key: conn.execute(
                insert(tracked_urls).values(
                    delivery_id=delivery_id, ordinal=ordinal, url=url, type=type_, label=key
                )
            ).inserted_primary_key[0]
            for key, ordinal, url, type_ in rows
        }
        message_ids = []
        for first in ("Ann", "Bob"):
            email = f"{first.lower()}-{delivery_id}@mail.example"
            recipient_id = conn.execute(
                insert(recipients).values(
                    email=email, email_key=email, first_name=first, created_at=now, updated_at=now
                )
            ).inserted_primary_key[0]
            message_ids.append(
                conn.execute(
                    insert(messages).values(
                        delivery_id=delivery_id,
                        recipient_id=recipient_id,
                        email=email,
                        domain="mail.example",
                        status="sent",
                        sent_at=now,
                    )
                ).inserted_primary_key[0]
            )
    if publish:
        snapshot.publish(
            ctx.settings.snapshots_dir,
            delivery_id,
            [snapshot.PublishedUrl(urls[k], delivery_id, t, u, k, True) for k, _, u, t in rows],
        )
    return Sent(delivery_id, urls, message_ids)


def token(
    ctx: Context, sent: Sent, key: str, message: int = 0, values: tuple[str, ...] = ()
) -> str:
    return ctx.keyring.sign_link(
        LinkToken(sent.delivery_id, sent.message_ids[message], sent.urls[key], values)
    )


# -- the server process ---------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    home: Path
    output: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@contextmanager
def tracking_server(env: dict[str, str], **extra: str) -> Iterator[Server]:
    port = free_port()
    home = Path(env["MSGTRACK_HOME"])
    output = home / f"server-{port}.out"
    command = [sys.executable, "-m", "msgtrack.tracking.server", "--host", "127.0.0.1"]
    with serving([*command, "--port", str(port)], {**env, **extra}, port, output=output) as proc:
        yield Server(proc, port, home, output)


logged = logged_events


def health(server: Server) -> dict[str, Any]:
    return httpx.get(f"{server.base}/health").json()  # type: ignore[no-any-return]


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Set-Cookie headers by cookie name."""
    return {v.split("=", 1)[0]: v for v in response.headers.get_list("set-cookie")}


def raw_http(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


# -- clicks ---------------------------------------------------------------------------------


def test_click_redirects_sets_cookies_and_logs(ctx: Context, env: dict[str, str]) -> None:
    sent = add_delivery(ctx)
    plain = token(ctx, sent, "plain")
    values = ("7", "Zoé & co/?#")
    personal = token(ctx, sent, "personal", message=1, values=values)
    with (
        tracking_server(env) as server,
        httpx.Client(base_url=server.base) as alice,
        httpx.Client(base_url=server.base) as bob,
    ):
        first = alice.get(f"/c/{plain}", headers={"User-Agent": "Alice/1.0"})
        assert first.status_code == 302
        assert first.headers["location"] == PLAIN_URL
        assert first.headers["cache-control"] == "no-store"
        cookies = set_cookies(first)
        visitor_cookie, session_cookie = cookies["mt_v"], cookies["mt_s"]
        for cookie in (visitor_cookie, session_cookie):
            attributes = [a.strip() for a in cookie.split(";")[1:]]
            assert {"Path=/", "HttpOnly", "SameSite=Lax"} <= set(attributes)
            assert "Secure" not in attributes  # served over http
        visitor = first.cookies["mt_v"]
        assert len(visitor) == 22
        assert ctx.keyring.verify_session(first.cookies["mt_s"]) == (
            sent.delivery_id,
            sent.message_ids[0],
        )

        # the same browser keeps its visitor id; another browser gets its own
        again = alice.get(f"/c/{plain}")
        assert again.cookies["mt_v"] == visitor
        # ... and the session cookie of this message it holds: not signed again
        assert "mt_s" not in set_cookies(again)
        other = bob.get(f"/c/{personal}")
        assert other.status_code == 302
        assert (
            other.headers["location"] == "https://shop.example/p/7?n=Zo%C3%A9%20%26%20co%2F%3F%23"
        )
        assert other.cookies["mt_v"] != visitor
        assert ctx.keyring.verify_session(other.cookies["mt_s"]) == (
            sent.delivery_id,
            sent.message_ids[1],
        )

        # a malformed visitor cookie is replaced, not logged
        odd = httpx.get(f"{server.base}/c/{plain}", headers={"Cookie": "mt_v=not-a-visitor-id"})
        assert odd.status_code == 302 and odd.cookies["mt_v"] != "not-a-visitor-id"
        # the session cookie of another message is replaced by this one's
        other_message = httpx.get(
            f"{server.base}/c/{plain}",
            headers={"Cookie": f"mt_v={visitor}; mt_s={ctx.keyring.sign_session(1, 999)}"},
        )
        assert ctx.keyring.verify_session(other_message.cookies["mt_s"]) == (
            sent.delivery_id,
            sent.message_ids[0],
        )
        assert health(server)["events_written"] == 5

    events = logged(server.home)
    assert [e.kind for e in events] == ["click"] * 5
    assert [(e.delivery_id, e.message_id, e.url_id) for e in events[:3]] == [
        (sent.delivery_id, sent.message_ids[0], sent.urls["plain"]),
        (sent.delivery_id, sent.message_ids[0], sent.urls["plain"]),
        (sent.delivery_id, sent.message_ids[1], sent.urls["personal"]),
    ]
    assert events[0].visitor_id == events[1].visitor_id == visitor
    assert events[0].user_agent == "Alice/1.0" and events[0].ip == "127.0.0.1"
    assert events[2].values == values and events[0].values == ()
    assert events[3].visitor_id == odd.cookies["mt_v"]
    assert events[4].visitor_id == visitor


def test_cookies_are_secure_when_tracking_over_https(ctx: Context, env: dict[str, str]) -> None:
    sent = add_delivery(ctx)
    with tracking_server(env, MSGTRACK_TRACKING_URL="https://track.example") as server:
        response = httpx.get(f"{server.base}/c/{token(ctx, sent, 'plain')}")
    assert response.status_code == 302
    for cookie in set_cookies(response).values():
        assert "Secure" in [a.strip() for a in cookie.split(";")]


def test_click_without_snapshot_falls_back_to_the_database(
    ctx: Context, env: dict[str, str]
) -> None:
    sent = add_delivery(ctx, publish=False)
    assert not snapshot.snapshot_path(ctx.settings.snapshots_dir, sent.delivery_id).exists()
    with tracking_server(env) as server:
        click = httpx.get(f"{server.base}/c/{token(ctx, sent, 'personal', values=('1', 'a b'))}")
        assert click.status_code == 302
        assert click.headers["location"] == "https://shop.example/p/1?n=a%20b"
        assert httpx.get(f"{server.base}/o/{token(ctx, sent, 'open')}").status_code == 200
        # an id the database does not know either: 404
        unknown = ctx.keyring.sign_link(LinkToken(sent.delivery_id, sent.message_ids[0], 999_999))
        assert httpx.get(f"{server.base}/c/{unknown}").status_code == 404
    assert [e.kind for e in logged(server.home)] == ["click", "open"]


# -- open, opt-out, unsubscribe ----------------------------------------------------------


def test_open_beacon_is_an_uncacheable_gif(ctx: Context, env: dict[str, str]) -> None:
    sent = add_delivery(ctx)
    with tracking_server(env) as server:
        response = httpx.get(
            f"{server.base}/o/{token(ctx, sent, 'open')}", headers={"Cookie": "mt_v=" + "A" * 22}
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.content.startswith(b"GIF89a") and len(response.content) < 64
    assert (
        "no-store" in response.headers["cache-control"]
        and "no-cache" in response.headers["cache-control"]
    )
    assert response.headers["pragma"] == "no-cache"
    assert "set-cookie" not in response.headers
    (event,) = logged(server.home)
    assert (event.kind, event.url_id, event.visitor_id) == ("open", sent.urls["open"], "A" * 22)


def test_opt_out_page_form_and_one_click(ctx: Context, env: dict[str, str]) -> None:
    sent = add_delivery(ctx)
    opt_out = token(ctx, sent, "opt-out")
    path = f"/u/{opt_out}"
    with tracking_server(env) as server, httpx.Client(base_url=server.base) as browser:
        page = browser.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert f'<form method="post" action="{path}">' in page.text
        assert '<input type="hidden" name="confirm" value="yes">' in page.text
        assert "set-cookie" not in page.headers

        # the form's POST
        form = browser.post(path, data={"confirm": "yes"})
        assert form.status_code == 200 and "unsubscribed" in form.text.lower()
        assert "set-cookie" not in form.headers and "location" not in form.headers

        # RFC 8058 one-click, as a mail provider sends it: no cookie, no redirect, no CSRF
        one_click = httpx.post(
            f"{server.base}{path}",
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert one_click.status_code == 200
        assert "set-cookie" not in one_click.headers and "location" not in one_click.headers
        assert one_click.text.strip()
        # ... also multipart/form-data, which RFC 8058 allows
        multipart = httpx.post(
            f"{server.base}{path}", files={"List-Unsubscribe": (None, "One-Click")}
        )
        assert multipart.status_code == 200

        # a POST that confirms nothing records nothing
        assert httpx.post(f"{server.base}{path}", data={"x": "1"}).status_code == 400
        # a bad token on POST: 404 like any other
        assert (
            httpx.post(f"{server.base}/u/{opt_out[:-2]}", data={"confirm": "yes"}).status_code
            == 404
        )

    events = logged(server.home)
    assert [(e.kind, e.source) for e in events] == [
        ("opt-out", None),
        ("unsubscribe", "form"),
        ("unsubscribe", "one-click"),
        ("unsubscribe", "one-click"),
    ]
    assert {e.url_id for e in events} == {sent.urls["opt-out"]}


# -- what is not an event ----------------------------------------------------------------


def test_head_is_answered_and_counted_nowhere(ctx: Context, env: dict[str, str]) -> None:
    sent = add_delivery(ctx)
    with tracking_server(env) as server:
        click = httpx.head(f"{server.base}/c/{token(ctx, sent, 'plain')}")
        assert click.status_code == 302 and click.headers["location"] == PLAIN_URL
        assert "set-cookie" not in click.headers
        beacon = httpx.head(f"{server.base}/o/{token(ctx, sent, 'open')}")
        assert beacon.status_code == 200 and beacon.content == b""
        assert beacon.headers["content-type"] == "image/gif"
        assert httpx.head(f"{server.base}/u/{token(ctx, sent, 'opt-out')}").status_code == 200
        assert httpx.head(f"{server.base}/c/forged").status_code == 404
        assert httpx.head(f"{server.base}/health").status_code == 200
        stats = health(server)
    assert stats["events_written"] == 0 and stats["rejected_tokens"] == 0
    assert logged(server.home) == []


def test_bad_tokens_answer_404_and_are_only_counted(ctx: Context, env: dict[str, str]) -> None:
    sent = add_delivery(ctx)
    other = add_delivery(ctx, name="Other")
    good = token(ctx, sent, "plain")
    tampered = good[:5] + ("A" if good[5] != "A" else "B") + good[6:]
    stranger = KeyRing.generate().sign_link(
        LinkToken(sent.delivery_id, sent.message_ids[0], sent.urls["plain"])
    )
    foreign = ctx.keyring.sign_link(
        LinkToken(sent.delivery_id, sent.message_ids[0], other.urls["plain"])
    )
    bad_paths = [
        "/c/AAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # forged
        f"/c/{good[:-3]}",  # truncated
        f"/c/{tampered}",
        f"/c/{good}=",  # not canonical
        f"/c/{stranger}",  # signed with another key
        "/c/",
        f"/c/{foreign}",  # a URL id of another delivery
        f"/o/{good}",  # a click token on the open path
        f"/c/{token(ctx, sent, 'open')}",  # an open token on the click path
        f"/m/{token(ctx, sent, 'opt-out')}",
        f"/c/{token(ctx, sent, 'personal', values=('only one',))}",  # values do not fit
        f"/c/{token(ctx, sent, 'plain', values=('extra',))}",
    ]
    with tracking_server(env) as server:
        for path in bad_paths:
            response = httpx.get(f"{server.base}{path}")
            assert response.status_code == 404, path
            assert "location" not in response.headers and "set-cookie" not in response.headers
            assert response.headers["content-type"].startswith("text/html")
        stats = health(server)
        # not tracking paths at all: 404, but no token was rejected
        assert httpx.get(f"{server.base}/favicon.ico").status_code == 404
        assert health(server)["rejected_tokens"] == len(bad_paths)
    assert stats["rejected_tokens"] == len(bad_paths)
    assert stats["events_written"] == 0
    assert logged(server.home) == []


def test_other_methods_are_refused(ctx: Context, env: dict[str, str]) -> None:
    sent = add_delivery(ctx)
    click = token(ctx, sent, "plain")
    with tracking_server(env) as server:
        post = httpx.post(f"{server.base}/c/{click}", data={"a": "b"})
        assert post.status_code == 405 and "location" not in post.headers
        assert post.headers["allow"] == "GET, HEAD"
        assert httpx.put(f"{server.base}/u/{token(ctx, sent, 'opt-out')}").status_code == 405
        assert httpx.delete(f"{server.base}/health").status_code == 405
        assert health(server)["events_written"] == 0
    assert logged(server.home) == []


def test_health(ctx: Context, env: dict[str, str]) -> None:
    import msgtrack

    with tracking_server(env) as server:
        response = httpx.get(f"{server.base}/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "status": "ok",
        "version": msgtrack.__version__,
        "events_written": 0,
        "events_dropped": 0,
        "event_log_failing": False,
        "event_log_error": None,
        "rejected_tokens": 0,
    }


# -- mirror page ---------------------------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("msgtrack.delivery.render") is None,
    reason="msgtrack.delivery.render (MessageRenderer.render_mirror) is not written yet",
)
def test_mirror_page_is_sandboxed_and_has_no_beacon(ctx: Context, env: dict[str, str]) -> None:
    sent = add_delivery(ctx)
    with tracking_server(env) as server:
        response = httpx.get(f"{server.base}/m/{token(ctx, sent, 'mirror', message=0)}")
        assert response.status_code == 200, response.text
        assert response.headers["content-security-policy"] == "sandbox"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-type"].startswith("text/html")
        assert "Hello Ann" in response.text
        assert "/o/" not in response.text  # no beacon: viewing the mirror is not an open
        head = httpx.head(f"{server.base}/m/{token(ctx, sent, 'mirror', message=0)}")
        assert head.status_code == 200 and head.content == b""
    (event,) = logged(server.home)
    assert (event.kind, event.message_id, event.url_id) == (
        "mirror",
        sent.message_ids[0],
        sent.urls["mirror"],
    )


# -- the HTTP layer ------------------------------------------------------------------------


def test_oversize_and_malformed_requests(ctx: Context, env: dict[str, str]) -> None:
    sent = add_delivery(ctx)
    opt_out = token(ctx, sent, "opt-out")
    with tracking_server(env) as server:
        big_header = httpx.get(f"{server.base}/health", headers={"X-Big": "x" * 10_000})
        assert big_header.status_code == 431
        many = {f"X-H{i}": "1" for i in range(100)}
        assert httpx.get(f"{server.base}/health", headers=many).status_code == 431
        long_url = raw_http(server.port, b"GET /c/" + b"A" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        assert long_url.startswith(b"HTTP/1.1 431 ")
        big_body = httpx.post(
            f"{server.base}/u/{opt_out}",
            content=b"confirm=yes&" + b"x" * 9000,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert big_body.status_code == 413
        # a chunked body has no Content-Length to refuse early: still 413
        chunked = raw_http(
            server.port,
            f"POST /u/{opt_out} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + b"".join(b"1000\r\n" + b"x" * 4096 + b"\r\n" for _ in range(3))
            + b"0\r\n\r\n",
        )
        assert chunked.startswith(b"HTTP/1.1 413 ")
        assert raw_http(server.port, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        # an Upgrade we do not do is ignored: the request is answered, then the connection closed
        upgrade = raw_http(
            server.port,
            b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", upgrade) == [b"200"]
        assert health(server)["events_written"] == 0
    assert logged(server.home) == []


def test_keep_alive_and_pipelining_answer_in_order(ctx: Context, env: dict[str, str]) -> None:
    sent = add_delivery(ctx)
    click, beacon = token(ctx, sent, "plain"), token(ctx, sent, "open")
    with tracking_server(env) as server:
        # the click is the delivery's first token (read from its snapshot off the event
        # loop): the fast answers behind it must still come out after it
        requests = (
            f"GET /c/{click} HTTP/1.1\r\nHost: t\r\n\r\n"
            f"GET /o/{beacon} HTTP/1.1\r\nHost: t\r\n\r\n"
            "HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n"
            "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ).encode()
        answer = raw_http(server.port, requests)
        with httpx.Client(base_url=server.base) as client:  # one connection, many requests
            for _ in range(20):
                assert client.get(f"/o/{beacon}").status_code == 200
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"302", b"200", b"200", b"200"]
    assert answer.index(b"Location: " + PLAIN_URL.encode()) < answer.index(b"image/gif")
    assert answer.rstrip().endswith(b'"rejected_tokens": 0}')
    assert len(logged(server.home)) == 22


def test_held_fast_answers_go_out_before_a_slow_one_behind_them(
    ctx: Context, env: dict[str, str]
) -> None:
    """Fast answers wait for the rest of their event-loop turn (one log write for the
    group); a slow answer on the same connection still comes after them."""
    first, second = add_delivery(ctx), add_delivery(ctx, name="Autumn")
    beacon, click = token(ctx, first, "open"), token(ctx, second, "plain")
    with tracking_server(env) as server:
        assert httpx.get(f"{server.base}/o/{beacon}").status_code == 200  # first: cached
        requests = (
            f"GET /o/{beacon} HTTP/1.1\r\nHost: t\r\n\r\n"
            f"GET /o/{beacon} HTTP/1.1\r\nHost: t\r\n\r\n"
            f"GET /c/{click} HTTP/1.1\r\nHost: t\r\n\r\n"  # second's first token: slow
            f"GET /o/{beacon} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ).encode()
        answer = raw_http(server.port, requests)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"200", b"200", b"302", b"200"]
    location = answer.index(b"Location: " + PLAIN_URL.encode())
    assert answer.index(b"image/gif") < location < answer.rindex(b"image/gif")
    # logged as answered: the open behind the slow click is logged before the click
    assert sorted(e.kind for e in logged(server.home)) == ["click"] + ["open"] * 4


def test_segments_rotate_and_are_sealed_on_sigterm(ctx: Context, env: dict[str, str]) -> None:
    sent = add_delivery(ctx)
    beacon = token(ctx, sent, "open")
    with tracking_server(env, MSGTRACK_SEGMENT_MAX_BYTES="700", MSGTRACK_NODE="edge-1") as server:
        with httpx.Client(base_url=server.base) as client:
            for _ in range(12):
                assert client.get(f"/o/{beacon}").status_code == 200
        events_dir = server.home / "events"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            names = sorted(events_dir.glob("*.log"))
            if len(names) > 1 and all(is_sealed(p) for p in names[:-1]):
                break
            time.sleep(0.02)
        assert len(names) > 1 and all(is_sealed(p) for p in names[:-1])
        assert not is_sealed(names[-1])
        assert server.stop() == 0
    names = sorted(events_dir.glob("*.log"))
    assert all(is_sealed(p) for p in names)
    matches = [SEGMENT_NAME.match(p.name) for p in names]
    assert all(matches)
    assert {m["node"] for m in matches if m} == {"edge_1"}
    assert len({m["run"] for m in matches if m}) == 1
    assert all(p.stat().st_size <= 700 for p in names)
    assert len(logged(server.home)) == 12


# -- the tracked URL cache -----------------------------------------------------------------


def test_tracked_url_cache_reads_sources_at_most_once_per_interval(ctx: Context) -> None:
    from msgtrack.tracking.urls import TrackedUrlCache

    sent = add_delivery(ctx, publish=False)
    cache = TrackedUrlCache(ctx.settings.snapshots_dir, lambda: ctx.engine, refresh_seconds=3600)
    found = cache.find(sent.delivery_id, sent.urls["plain"])
    assert found is not None and found.destination(()) == PLAIN_URL
    assert cache.stats["db_loads"] == 1
    # every URL of the delivery came with the first read
    assert cache.get(sent.delivery_id, sent.urls["open"]) is not None
    # a URL added later is not seen until the interval has passed: misses cost nothing
    with ctx.engine.begin() as conn:
        late = conn.execute(
            insert(tracked_urls).values(
                delivery_id=sent.delivery_id, ordinal=3, url="https://late.example/"
            )
        ).inserted_primary_key[0]
    for _ in range(50):
        assert cache.find(sent.delivery_id, late) is None
    assert cache.stats["db_loads"] == 1 and not cache.should_load(sent.delivery_id)
    cache.refresh_seconds = 0
    assert cache.find(sent.delivery_id, late) is not None
    assert cache.stats["db_loads"] == 2


# -- the ASGI adapter (msgtrack serve) -----------------------------------------------------


def test_asgi_adapter_answers_like_the_server(
    ctx: Context, env: dict[str, str], tmp_path: Path
) -> None:
    import uvicorn

    from msgtrack.tracking.app import TrackingApp
    from msgtrack.tracking.asgi import tracking_asgi
    from msgtrack.tracking.eventlog import EventLog

    async def fallback(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"admin " + scope["path"].encode()})

    sent = add_delivery(ctx)
    event_log = EventLog(
        ctx.settings.events_dir, fsync_interval=0.05, max_bytes=1 << 20, max_age=3600
    )
    app = tracking_asgi(TrackingApp(ctx, event_log), fallback=fallback)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        click = httpx.get(f"{base}/c/{token(ctx, sent, 'plain')}")
        assert click.status_code == 302 and click.headers["location"] == PLAIN_URL
        assert {"mt_v", "mt_s"} <= set(set_cookies(click))
        assert httpx.head(f"{base}/o/{token(ctx, sent, 'open')}").status_code == 200
        assert httpx.get(f"{base}/c/forged").status_code == 404
        one_click = httpx.post(
            f"{base}/u/{token(ctx, sent, 'opt-out')}", data={"List-Unsubscribe": "One-Click"}
        )
        assert one_click.status_code == 200 and "set-cookie" not in one_click.headers
        assert httpx.get(f"{base}/health").json()["events_written"] == 2
        admin = httpx.get(f"{base}/api/deliveries")
        assert admin.status_code == 200 and admin.text == "admin /api/deliveries"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        event_log.close()
    assert [(e.kind, e.source) for e in logged(Path(env["MSGTRACK_HOME"]))] == [
        ("click", None),
        ("unsubscribe", "one-click"),
    ]
