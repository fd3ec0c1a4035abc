"""Instructions per request of the tracking server's HTTP protocol, without the network.

    python benchmarks/profile_tracking.py [--requests 2000] [--kind returning]
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        python benchmarks/profile_tracking.py --kind returning --requests 2001
    valgrind --tool=callgrind ... --requests 1        # the fixed cost, to subtract
    valgrind --tool=callgrind --instr-atstart=no \
        python benchmarks/profile_tracking.py --kind open --requests 2000 --callgrind

Why: wall-clock numbers on a shared 2-core machine move with the neighbours; the
instruction count of the same requests through ``HttpProtocol`` (httptools, the app,
the event log's ``write()``) with an in-memory transport does not. The difference
between two runs (N+1 and 1 requests) divided by N is the cost of one request. Quicker:
``--callgrind`` under ``--instr-atstart=no`` has only the request loop instrumented
(``callgrind_control -i on`` / ``off`` around it), so the instructions valgrind reports
("Collected") divided by N are the cost of one request, without running the start-up
under the instrumentation.

The server answers a turn of its event loop at once (one log write for the turn's
events, then the answers): ``--batch`` requests make one turn here.

Like the wrk benchmark, the requests rotate through ``--tokens`` distinct signed click
tokens (different message ids, each with its own session cookie), so no per-token
shortcut could make them cheaper than real traffic.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tracking import USER_AGENT, VISITOR_ID, Visit, make_home  # noqa: E402

from msgtrack.context import Context  # noqa: E402
from msgtrack.links.addresses import SESSION_COOKIE, VISITOR_COOKIE  # noqa: E402
from msgtrack.tracking.app import TrackingApp  # noqa: E402
from msgtrack.tracking.eventlog import EventLog  # noqa: E402
from msgtrack.tracking.server import HttpProtocol, ServerState, _new_loop  # noqa: E402


class MemoryTransport:
    """What ``HttpProtocol`` calls on a transport, keeping only a byte count."""

    def __init__(self) -> None:
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def raw_requests(visits: list[Visit], kind: str) -> list[bytes]:
    """One request per message, as ``bench_tracking.rotating_script`` sends them."""
    out = []
    for visit in visits:
        target = {"open": visit.open, "404": "/nothing"}.get(kind, visit.click)
        head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {USER_AGENT}\r\n"
        if kind == "returning":
            head += f"Cookie: {VISITOR_COOKIE}={VISITOR_ID}; {SESSION_COOKIE}={visit.session}\r\n"
        out.append((head + "\r\n").encode())
    return out


def _instrument(state: str) -> None:
    """Turn callgrind's instrumentation of this process on or off."""
    subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument(
        "--batch",
        type=int,
        default=32,
        help="requests answered per turn of the event loop (one log write for them; "
        "under wrk -c64 at full load the server averages ~38)",
    )
    parser.add_argument(
        "--kind", choices=("returning", "first", "open", "404"), default="returning"
    )
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="turn callgrind's instrumentation on only for the request loop",
    )
    args = parser.parse_args()
    env, visits = make_home(Path(tempfile.mkdtemp(prefix="msgtrack-profile-")), args.tokens)
    os.environ.update(MSGTRACK_HOME=env["MSGTRACK_HOME"], MSGTRACK_DB=env["MSGTRACK_DB"])
    requests = raw_requests(visits, args.kind)
    ctx = Context()
    event_log = EventLog.from_settings(ctx.settings)
    app = TrackingApp(ctx, event_log)
    loop = _new_loop()  # uvloop, as the server runs
    state = ServerState(app, loop)
    protocol = HttpProtocol(state)
    transport = MemoryTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    # warm the URL cache (the first token of a delivery takes the slow path)
    app.urls.find(1, 10)
    app.urls.find(1, 12)
    n = len(requests)
    if args.callgrind:
        _instrument("on")
    start = time.perf_counter()
    batch = max(args.batch, 1)
    for i in range(args.requests):
        protocol.data_received(requests[i % n])
        if i % batch == batch - 1:
            state.send_held()  # the turn ends: its event lines, then its answers
    state.send_held()
    elapsed = time.perf_counter() - start
    if args.callgrind:
        _instrument("off")
    event_log.close()
    loop.close()
    print(
        f"{args.kind}: {args.requests} requests, {elapsed / max(args.requests, 1) * 1e6:.2f} µs "
        f"each, {transport.written} bytes answered, {event_log.stats['written']} events",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
