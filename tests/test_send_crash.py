"""At most once, with real processes: a send run killed with SIGKILL mid-DATA and then
resumed, and two send runs of one delivery started at the same moment."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from msgtrack.context import Context
from msgtrack.delivery.send import AlreadySending, send_delivery
from msgtrack.delivery.transports import SmtpTransport
from tests.test_send import make_delivery, rows
from tests.test_transports import Mailbox, smtp_server

pytestmark = pytest.mark.slow

# A send run in its own process. It says "ready" once imported, waits for the file
# named by argv[3] to exist (so two of them can start together), then sends.
SEND_SCRIPT = """
import json, os, sys, time
from msgtrack.context import Context
from msgtrack.delivery.send import AlreadySending, send_delivery
from msgtrack.delivery.transports import SmtpTransport

delivery_id, port, go = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = Context()
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
try:
    transport = SmtpTransport("127.0.0.1", port, concurrency=2, timeout=30)
    report = send_delivery(ctx, delivery_id, transport)
except AlreadySending as exc:
    print("already-sending", exc, flush=True)
    sys.exit(3)
print("report", json.dumps(report.as_dict()), flush=True)
"""


def start_run(env: dict[str, str], delivery_id: int, port: int, go: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SEND_SCRIPT, str(delivery_id), str(port), str(go)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    return proc


def test_killed_send_resumes_without_sending_anything_twice(
    ctx: Context, env: dict[str, str], tmp_path: Path
) -> None:
    emails = [f"p{i:02d}@example.com" for i in range(16)]
    held = "p05@example.com"
    delivery_id = make_delivery(ctx, tmp_path, emails)
    # A slow relay; p05 is accepted but its 250 never reaches the run, killed meanwhile.
    mailbox = Mailbox(data_delay=0.05, hold=held)
    env = {**env, "MSGTRACK_SEND_LEASE": "1"}
    ctx.settings = dataclasses.replace(ctx.settings, send_lease_seconds=1.0)
    go = tmp_path / "go"
    go.touch()
    with smtp_server(mailbox) as server:
        proc = start_run(env, delivery_id, server.port, go)
        try:
            assert mailbox.held.wait(60), "the send run never reached the held DATA"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            mailbox.release.set()
        assert proc.returncode == -signal.SIGKILL
        stopped = rows(ctx, delivery_id)
        assert stopped[held]["status"] == "in_flight"
        in_flight = {e for e, r in stopped.items() if r["status"] == "in_flight"}
        assert {r["status"] for r in stopped.values()} <= {"sent", "pending", "in_flight"}

        # Resume; while the killed run's lease lasts, the delivery is still held.
        deadline = time.monotonic() + 30
        while True:
            try:
                report = send_delivery(
                    ctx, delivery_id, SmtpTransport("127.0.0.1", server.port, timeout=30)
                )
                break
            except AlreadySending:
                assert time.monotonic() < deadline
                time.sleep(0.2)

    final = rows(ctx, delivery_id)
    unknown = {e for e, r in final.items() if r["status"] == "unknown"}
    assert unknown == in_flight and held in unknown
    assert report.state == "sent" and report.newly_unknown == len(unknown) == report.unknown
    assert {e for e, r in final.items() if r["status"] == "sent"} == set(emails) - unknown
    # No recipient got the message twice; every sent one got it, and the held one too
    # (accepted by the relay, unknown to msgtrack, and not sent again).
    received = Counter(mailbox.recipients())
    assert max(received.values()) == 1
    assert set(received) >= set(emails) - unknown
    assert held in received


def test_two_runs_started_together_only_one_sends(
    ctx: Context, env: dict[str, str], tmp_path: Path
) -> None:
    emails = [f"q{i:02d}@example.com" for i in range(20)]
    delivery_id = make_delivery(ctx, tmp_path, emails)
    mailbox = Mailbox(data_delay=0.1)  # about a second of sending: the runs overlap
    go = tmp_path / "go"
    with smtp_server(mailbox) as server:
        procs = [start_run(env, delivery_id, server.port, go) for _ in range(2)]
        go.touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outputs
    (winner,) = [out for (out, _), p in zip(outputs, procs, strict=True) if p.returncode == 0]
    report = json.loads(winner.split("report ", 1)[1])
    assert (report["state"], report["sent_now"]) == ("sent", 20)
    assert sorted(mailbox.recipients()) == sorted(emails)  # each exactly once
