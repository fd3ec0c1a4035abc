"""Small helpers shared by tests that drive real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


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
def running(env: dict[str, str], *args: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``msgtrack ARGS`` and wait until ``/health`` answers; SIGTERM at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "msgtrack", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    try:
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(f"msgtrack {' '.join(args)} exited {proc.returncode}:\n{out}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"msgtrack {' '.join(args)} did not answer /health")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
