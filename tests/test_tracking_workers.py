"""``msgtrack tracking-server --workers N``: N processes share the port (SO_REUSEPORT),
each with its own event log; SIGTERM stops them all cleanly; a worker that dies is
replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from msgtrack.links.sign import LinkToken
from msgtrack.tracking.eventlog import SEGMENT_NAME, is_sealed
from tests.test_tracking_crash import CLICK, DELIVERY, OPEN, free_port, logged, make_home


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found |= {int(p) for p in text}
    return found


def test_workers_share_the_port_each_with_its_own_log(tmp_path: Path) -> None:
    env, keyring = make_home(tmp_path)
    click = f"/c/{keyring.sign_link(LinkToken(DELIVERY, 1, CLICK, ('5',)))}"
    beacon = f"/o/{keyring.sign_link(LinkToken(DELIVERY, 1, OPEN))}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "msgtrack",
            "tracking-server",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while len(children(proc.pid)) < 2 or not _answers(base):
            assert proc.poll() is None, "the supervisor exited"
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        workers = children(proc.pid)
        assert len(workers) == 2
        for i in range(40):  # a new connection each: the kernel spreads them
            path = click if i % 2 else beacon
            assert httpx.get(base + path).status_code in (200, 302)
        # a worker that dies is replaced; the port keeps answering meanwhile
        os.kill(sorted(workers)[0], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while len(children(proc.pid) - workers) < 1:
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            assert httpx.get(base + beacon).status_code == 200
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    segments = sorted((Path(env["MSGTRACK_HOME"]) / "events").glob("*.log"))
    runs = {m["run"] for p in segments if (m := SEGMENT_NAME.match(p.name))}
    assert len(runs) >= 2  # one log per worker process (3 with the replacement)
    events = logged(env)
    assert len(events) >= 40  # + the beacons fetched while waiting for the replacement
    # the killed worker's segment is not sealed; every other one is
    unsealed = [p for p in segments if not is_sealed(p)]
    assert len(unsealed) <= 1


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
