"""Faults the tracking server must live through, on a real server process:

- the event log's disk fills up: clicks still redirect and the beacon still loads, the
  events that could not be written are counted and reported on ``/health``, an
  unsubscription is refused with 503, and writing resumes by itself once there is
  room again (a file size limit raised from outside; a real full tmpfs when we may
  mount one);
- SIGTERM: stop accepting, finish the request in flight, then fsync and seal the log;
- the database hangs: clicks of a delivery with a published snapshot are answered
  while a lookup that needs the database is still waiting on it.

The server answers from the published snapshot (see ``test_tracking_crash.make_home``).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from msgtrack.links.sign import KeyRing, LinkToken
from msgtrack.tracking.eventlog import is_sealed
from tests.helpers import free_port, serving
from tests.test_tracking_crash import CLICK, DELIVERY, OPEN, OPT_OUT, logged, make_home

# A file size limit on the server: writes past it fail with EFBIG, as on a full disk
# (Python ignores SIGXFSZ). Only the soft limit is set, so the test can lift it from
# outside with prlimit(2): the "disk" gets room again while the server runs.
SOFT_LIMITED = (
    "import resource, runpy, sys; "
    "resource.setrlimit(resource.RLIMIT_FSIZE, "
    "(int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
    "sys.argv = ['server'] + sys.argv[2:]; "
    "runpy.run_module('msgtrack.tracking.server', run_name='__main__')"
)


@contextmanager
def server(
    env: dict[str, str], *, file_size_limit: int | None = None, **extra: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    args = ["--host", "127.0.0.1", "--port", str(port)]
    if file_size_limit is None:
        command = [sys.executable, "-m", "msgtrack.tracking.server", *args]
    else:
        command = [sys.executable, "-c", SOFT_LIMITED, str(file_size_limit), *args]
    with serving(command, {**env, **extra}, port) as proc:
        yield proc, f"http://127.0.0.1:{port}"


def links(keyring: KeyRing) -> tuple[str, str, str]:
    beacon = f"/o/{keyring.sign_link(LinkToken(DELIVERY, 1, OPEN))}"
    click = f"/c/{keyring.sign_link(LinkToken(DELIVERY, 1, CLICK, ('42',)))}"
    opt_out = f"/u/{keyring.sign_link(LinkToken(DELIVERY, 1, OPT_OUT))}"
    return beacon, click, opt_out


def fill_until_dropping(client: httpx.Client, beacon: str) -> dict[str, Any]:
    for _ in range(200):
        response = client.get(beacon)
        assert response.status_code == 200 and response.headers["content-type"] == "image/gif"
        stats: dict[str, Any] = client.get("/health").json()
        if stats["events_dropped"]:
            return stats
    raise AssertionError("the log never filled up")


def check_degraded_but_answering(client: httpx.Client, click: str, opt_out: str) -> None:
    """While the log cannot be written: people get through, nothing is acknowledged."""
    stats = client.get("/health").json()
    assert stats["status"] == "degraded" and stats["event_log_failing"] is True
    assert stats["event_log_error"]
    response = client.get(click)
    assert response.status_code == 302
    assert response.headers["location"] == "https://shop.example/item/42"
    one_click = client.post(opt_out, data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 503 and one_click.headers["retry-after"]


def check_recovered(client: httpx.Client, beacon: str, opt_out: str, dropped: int) -> None:
    """Room again: the next events are written without any restart."""
    before = client.get("/health").json()["events_written"]
    assert client.get(beacon).status_code == 200
    stats = client.get("/health").json()
    assert stats["status"] == "ok" and stats["event_log_failing"] is False
    assert stats["events_written"] == before + 1 and stats["events_dropped"] == dropped
    assert client.post(opt_out, data={"List-Unsubscribe": "One-Click"}).status_code == 200


def test_full_disk_keeps_answering_and_recovers_when_space_returns(tmp_path: Path) -> None:
    env, keyring = make_home(tmp_path)
    beacon, click, opt_out = links(keyring)
    with (
        server(env, file_size_limit=2048) as (proc, base),
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        first = fill_until_dropping(client, beacon)
        assert first["events_written"] > 0
        check_degraded_but_answering(client, click, opt_out)
        dropped = client.get("/health").json()["events_dropped"]
        assert dropped == first["events_dropped"] + 2  # the click and the unsubscription
        unlimited = resource.RLIM_INFINITY
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (unlimited, unlimited))
        check_recovered(client, beacon, opt_out, dropped)
        final = client.get("/health").json()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    events = logged(env)  # whole lines only
    assert len(events) == final["events_written"]
    assert [e.kind for e in events].count("unsubscribe") == 1
    assert [e.kind for e in events][-1] == "unsubscribe"


def _can_mount_tmpfs(target: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128k,mode=0755", "tmpfs", str(target)],
        capture_output=True,
    )
    return result.returncode == 0


def test_really_full_tmpfs_keeps_answering_and_recovers(tmp_path: Path) -> None:
    """The same on a real file system with no space left (ENOSPC), freed by deleting a file."""
    env, keyring = make_home(tmp_path)
    events_dir = Path(env["MSGTRACK_HOME"]) / "events"
    if not _can_mount_tmpfs(events_dir):
        pytest.skip("needs root and permission to mount a tmpfs")
    beacon, click, opt_out = links(keyring)
    try:
        with (
            server(env) as (proc, base),
            httpx.Client(base_url=base, timeout=10) as client,
        ):
            assert client.get(beacon).status_code == 200  # the segment exists
            filler = events_dir / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:  # take every block that is left
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
            first = fill_until_dropping(client, beacon)
            check_degraded_but_answering(client, click, opt_out)
            dropped = client.get("/health").json()["events_dropped"]
            assert dropped == first["events_dropped"] + 2
            filler.unlink()
            check_recovered(client, beacon, opt_out, dropped)
            final = client.get("/health").json()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        events = logged(env)
        assert len(events) == final["events_written"]
    finally:
        subprocess.run(["umount", "-l", str(events_dir)], check=False)


# -- SIGTERM -------------------------------------------------------------------------------


def read_response(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_sigterm_finishes_the_request_in_flight_then_flushes_and_seals(tmp_path: Path) -> None:
    env, keyring = make_home(tmp_path)
    beacon, click, opt_out = links(keyring)
    body = b"List-Unsubscribe=One-Click"
    # a long group-fsync interval: what is on disk at the end is the shutdown's doing
    with server(env, MSGTRACK_FSYNC_INTERVAL="30") as (proc, base):
        port = int(base.rsplit(":", 1)[1])
        with httpx.Client(base_url=base) as client:
            assert client.get(click).status_code == 302
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        busy = socket.create_connection(("127.0.0.1", port), timeout=10)
        head = (
            f"POST {opt_out} HTTP/1.1\r\nHost: t\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        busy.sendall(head + body[:10])  # the request is in flight: half its body is here
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        # no new connections, the idle one is closed, the busy one is waited for
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                break
            assert time.monotonic() < deadline, "still accepting after SIGTERM"
            time.sleep(0.05)
        assert idle.recv(1) == b""
        assert proc.poll() is None
        busy.sendall(body[10:])
        answer = read_response(busy)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b"\r\nConnection: close\r\n" in answer
        assert proc.wait(timeout=30) == 0
        idle.close()
        busy.close()
    events = logged(env)
    assert [e.kind for e in events] == ["click", "unsubscribe"]
    segments = sorted((Path(env["MSGTRACK_HOME"]) / "events").glob("*.log"))
    assert segments and all(is_sealed(p) for p in segments)


# -- the database down --------------------------------------------------------------------


@contextmanager
def silent_database() -> Iterator[int]:
    """A port that accepts connections and never says a word (a hung PostgreSQL)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def test_a_hung_database_never_holds_up_published_clicks(tmp_path: Path) -> None:
    env, keyring = make_home(tmp_path)
    beacon, click, _ = links(keyring)
    unpublished = f"/c/{keyring.sign_link(LinkToken(DELIVERY + 1, 1, CLICK))}"
    with silent_database() as db_port:
        env["MSGTRACK_DB"] = f"postgresql://postgres@127.0.0.1:{db_port}/msgtrack"
        # started through the CLI: it must not need the database to start either
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "msgtrack", "tracking-server", "--port", str(port)],
            env={**env, "MSGTRACK_TRACKING_DB_TIMEOUT": "5"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, "the tracking server did not start"
                try:
                    httpx.get(f"{base}/health", timeout=1)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            waiting: list[int] = []
            lookup = threading.Thread(
                target=lambda: waiting.append(httpx.get(base + unpublished, timeout=30).status_code)
            )
            lookup.start()
            time.sleep(0.3)  # the lookup is now stuck on the database
            with httpx.Client(base_url=base, timeout=10) as client:
                for _ in range(50):
                    response = client.get(click)
                    assert response.status_code == 302
                    assert client.get(beacon).status_code == 200
            # all answered while the database lookup was still waiting
            assert lookup.is_alive() and not waiting
            lookup.join(timeout=30)
            assert waiting == [404]  # gave up on the database: unknown, not a crash
            assert httpx.get(f"{base}/health").json()["events_written"] == 100
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                assert proc.wait(timeout=30) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
