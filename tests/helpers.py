"""Small helpers shared by tests that drive real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from msgtrack.tracking.events import Event, decode_event


def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> bool:
    """Whether ``predicate`` came true within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def msgtrack(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real ``msgtrack`` command in a subprocess."""
    result = subprocess.run(
        [sys.executable, "-m", "msgtrack", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        command = " ".join(args)
        raise AssertionError(
            f"msgtrack {command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


@contextmanager
def serving(
    command: list[str], env: dict[str, str], port: int, *, output: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server process, wait until ``/health`` answers on ``port``, and stop it
    with SIGTERM at the end (SIGKILL if it does not exit). ``output`` collects its
    stdout and stderr (shown if it dies while starting)."""
    sink = open(output, "wb") if output else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    finally:
        if output:
            sink.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    try:
        while True:
            if proc.poll() is not None:
                said = output.read_text(errors="replace") if output else ""
                raise AssertionError(f"{' '.join(command)} exited {proc.returncode}:\n{said}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{' '.join(command)} did not answer /health")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def running(
    env: dict[str, str], *args: str, port: int, output: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``msgtrack ARGS`` as a server, ready when ``/health`` answers on ``port``."""
    with serving([sys.executable, "-m", "msgtrack", *args], env, port, output=output) as proc:
        yield proc


def logged_events(home: Path) -> list[Event]:
    """Every event in the home's log segments, checking each segment ends with a line."""
    events = []
    for path in sorted((home / "events").glob("*.log")):
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path.name} ends inside a line"
        events += [decode_event(line) for line in data.splitlines()]
    return events
