"""One ingestion at a time: the ``serve`` loop, a cron ``msgtrack ingest`` and
``msgtrack recompute`` must never move the counters concurrently.

Two locks, because ingestions can run on one machine or on several sharing a database:
an ``flock`` on ``locks_dir/ingest.lock`` (released by the kernel when the process dies,
however it dies) and, on PostgreSQL, a session-level advisory lock held by the very
connection that does the work (released when that session ends).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from sqlalchemy.engine import Connection

from msgtrack.context import Context
from msgtrack.storage import tracking as store

# pg advisory lock key: b"msgtrack" as a signed 64-bit integer.
ADVISORY_KEY = int.from_bytes(b"msgtrack", "big", signed=True)
RETRY_SECONDS = 0.1


class IngestBusy(Exception):
    """Another ingestion (or recompute) holds the lock."""


@contextmanager
def ingest_lock(ctx: Context, *, wait: float = 0.0) -> Iterator[Connection]:
    """Hold the ingestion lock; yields the connection to do all the work on.

    Raises IngestBusy when someone else holds it, at once or after trying for ``wait``
    seconds.
    """
    deadline = time.monotonic() + wait
    while True:
        stack = ExitStack()
        try:
            conn = stack.enter_context(_locked(ctx))
        except IngestBusy:
            if time.monotonic() >= deadline:
                raise
            time.sleep(RETRY_SECONDS)
            continue
        with stack:
            yield conn
        return


@contextmanager
def _locked(ctx: Context) -> Iterator[Connection]:
    locks_dir = ctx.settings.locks_dir
    locks_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks_dir / "ingest.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise IngestBusy("another ingestion is running on this machine") from exc
        with ctx.engine.connect() as conn:
            if conn.dialect.name != "postgresql":
                yield conn
                return
            taken = store.try_advisory_lock(conn, ADVISORY_KEY)
            conn.commit()
            if not taken:
                raise IngestBusy("another ingestion is running against this database")
            try:
                yield conn
            finally:
                try:
                    if conn.in_transaction():
                        conn.rollback()
                    store.advisory_unlock(conn, ADVISORY_KEY)
                    conn.commit()
                except Exception:
                    # A session we cannot unlock must not go back to the pool holding it.
                    conn.invalidate()
                    raise
    finally:
        os.close(fd)  # releases the flock
