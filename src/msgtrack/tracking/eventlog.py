"""The tracking server's event log: append-only segment files, one line per event.

Why it looks like this:

- Every event line (``events.encode_event``) is written with ``os.write()`` *before*
  its answer goes out, so a killed process loses nothing it answered: the line is in
  the kernel's page cache the moment ``write`` returns. ``append`` writes one line;
  the tracking server instead holds the lines of one turn of its event loop
  (``hold_line``) and writes them with one ``write()`` (``write_held``) just before
  the answers of that turn leave: a group commit to the page cache, one system call for
  many clicks.
- fsync happens in groups, off the request path: a thread syncs every
  ``fsync_interval`` seconds when something was written, so a power loss loses at most
  that interval. Unsubscriptions use ``append_durable`` (write + fsync before the
  answer).
- Segment files are named ``{node}-{runid}-{seq:06d}.log`` and created with
  ``O_CREAT|O_EXCL|O_APPEND``: the random run id keeps two processes (or a restarted
  one that got the same pid in a container) from ever sharing a file.
- A finished segment (rotated by size or age, or closed cleanly) gets an empty
  ``{segment}.sealed`` marker beside it (``x.log`` -> ``x.log.sealed``), written after
  the segment's last fsync: ingestion knows such a segment will get no more lines.
- A failed write (disk full, file size limit) never breaks the answer: the event is
  counted in ``stats["dropped"]`` and a partial line is cut off again, so a segment only
  ever holds whole lines.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path

from msgtrack.config import Settings
from msgtrack.tracking.events import Event, encode_event

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".log"
SEALED_SUFFIX = ".sealed"
SEGMENT_NAME = re.compile(
    r"^(?P<node>[A-Za-z0-9_.]+)-(?P<run>[0-9a-f]{12})-(?P<seq>[0-9]{6,})\.log$"
)

# A segment that could not be rotated (e.g. no inode left) is retried at most this often.
ROTATE_RETRY_SECONDS = 1.0


def sealed_marker(segment: Path) -> Path:
    """The marker that says ``segment`` is finished: ``x.log`` -> ``x.log.sealed``."""
    return segment.with_name(segment.name + SEALED_SUFFIX)


def is_sealed(segment: Path) -> bool:
    return sealed_marker(segment).exists()


def node_name(node: str | None = None) -> str:
    """``node``, else ``MSGTRACK_NODE``, else the host name; safe for a file name.

    Anything but letters, digits, ``_`` and ``.`` becomes ``_`` (so ``-`` only ever
    separates the parts of a segment name).
    """
    raw = node or os.environ.get("MSGTRACK_NODE") or socket.gethostname() or "node"
    return re.sub(r"[^A-Za-z0-9_.]", "_", raw)[:40].strip(".") or "node"


class _ShortWrite(OSError):
    """The disk took only part of a write: ``kept`` whole lines are in the segment."""

    def __init__(self, kept: int) -> None:
        super().__init__(errno.ENOSPC, "short write to the event log")
        self.kept = kept


class EventLog:
    """The event log of one process. Thread-safe; ``append`` is cheap enough for the
    request path (one encode, one lock, one ``write``)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> EventLog:
        """The log under ``MSGTRACK_HOME/events`` with the configured fsync and rotation."""
        return cls(
            settings.events_dir,
            fsync_interval=settings.fsync_interval,
            max_bytes=settings.segment_max_bytes,
            max_age=settings.segment_max_age,
        )

    def __init__(
        self,
        directory: Path,
        *,
        fsync_interval: float,
        max_bytes: int,
        max_age: float,
        node: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.node = node_name(node)
        self.run_id = secrets.token_hex(6)
        self.fsync_interval = max(float(fsync_interval), 0.005)
        self.max_bytes = max(int(max_bytes), 1)
        self.max_age = float(max_age)
        # lines appended and their bytes: attributes, one increment per event (``stats``)
        self._written = 0
        self._bytes = 0
        self._counts: dict[str, int] = {
            "dropped": 0,  # events that could not be written
            "segments": 0,  # segment files created
            "sealed": 0,  # segments finished with a .sealed marker
            "fsyncs": 0,
            "errors": 0,  # failed writes, fsyncs, rotations, seals
        }
        self.last_error: str | None = None
        self.failing = False  # the last write failed (disk full, ...): cleared by the next good one
        self._lock = threading.Lock()
        self._held: list[bytes] = []  # lines for the next write_held (one thread's)
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._opened_at = 0.0
        self._seq = 0
        self._dirty = False
        self._dir_dirty = False
        self._retired: list[tuple[int, Path]] = []
        self._unsealed: list[Path] = []  # markers that could not be created yet
        self._rotate_retry_at = 0.0
        self._closed = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="msgtrack-eventlog", daemon=True)
        self._thread.start()

    # -- appending (request path) ------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Counters: written (lines appended), dropped (events that could not be
        written), bytes, segments (created), sealed, fsyncs, errors (failed writes,
        fsyncs, rotations, seals). A snapshot."""
        return {"written": self._written, "bytes": self._bytes, **self._counts}

    @property
    def segment(self) -> Path | None:
        """The segment being written, if any."""
        return self._path

    def append(self, event: Event) -> bool:
        """Write one event line; False (and counted as dropped) if it could not be written."""
        return self.append_line(encode_event(event))

    def append_line(self, line: bytes) -> bool:
        """``append`` for a line already encoded (``events.encode_hit``)."""
        with self._lock:
            try:
                self._write(line)
            except OSError as exc:
                self._dropped(exc)
                return False
        return True

    def hold_line(self, line: bytes) -> None:
        """Keep an encoded line for the next ``write_held``. Only for a caller that calls
        ``write_held`` before any answer for it leaves, from the same thread (the
        tracking server's event loop)."""
        self._held.append(line)

    def write_held(self) -> int:
        """Write the held lines with one ``write()``; returns how many could not be
        written (counted as dropped, like ``append``'s)."""
        held = self._held
        if not held:
            return 0
        self._held = []
        count = len(held)
        with self._lock:
            try:
                self._write(held[0] if count == 1 else b"".join(held), count)
            except _ShortWrite as short:
                self._dropped(short, count - short.kept)
                return count - short.kept
            except OSError as exc:
                self._dropped(exc, count)
                return count
        return 0

    def append_durable(self, event: Event) -> None:
        """Write one event line and fsync it before returning; raises OSError when it
        cannot (the caller must then not acknowledge it)."""
        line = encode_event(event)
        with self._lock:
            try:
                fd = os.dup(self._write(line))  # the flusher may close the original
            except OSError as exc:
                self._dropped(exc)
                raise
            sync_dir, self._dir_dirty = self._dir_dirty, False
        try:
            os.fsync(fd)
            if sync_dir:
                self._fsync_directory()
        except OSError as exc:
            self._error(exc)
            raise
        finally:
            os.close(fd)

    def _write(self, data: bytes, lines: int = 1) -> int:
        """Append ``data`` (``lines`` whole lines) to the current segment (lock held);
        returns the fd used. A short write keeps the whole lines that fit and raises
        ``_ShortWrite``."""
        fd = self._fd
        if fd is None:
            if self._closed:  # close() leaves no segment open
                raise OSError(errno.EBADF, "event log closed")
            fd = self._open_segment()
        elif self._size and self._size + len(data) > self.max_bytes:
            fd = self._rotate()  # by size here; by age in the flusher (_sync_once)
        written = os.write(fd, data)
        if written != len(data):
            keep = data.rfind(b"\n", 0, written) + 1  # the whole lines that fit
            kept = data.count(b"\n", 0, keep)
            self._wrote(keep, kept)
            if keep != written:
                self._cut_torn_line(fd, self._size)
            raise _ShortWrite(kept)
        self._wrote(written, lines)
        self.failing = False
        return fd

    def _wrote(self, size: int, lines: int) -> None:
        if lines:
            self._size += size
            self._dirty = True
            self._written += lines
            self._bytes += size

    def _cut_torn_line(self, fd: int, size: int) -> None:
        # Keep whole lines only: drop the partial tail, or if even that fails, finish
        # this segment so the next line never lands glued to a torn one.
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            self._error(exc)
            self._retire_current()

    def _open_segment(self) -> int:
        for _ in range(100):
            self._seq += 1
            path = self.directory / f"{self.node}-{self.run_id}-{self._seq:06d}{SEGMENT_SUFFIX}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
            try:
                fd = os.open(path, flags, 0o644)
            except FileExistsError:
                continue
            self._fd, self._path, self._size = fd, path, 0
            self._opened_at = time.monotonic()
            self._dir_dirty = True
            self._counts["segments"] += 1
            return fd
        raise OSError(errno.EEXIST, "no free segment name")

    def _rotate(self) -> int:
        """Start a new segment; if that fails, keep writing the old one for a while."""
        assert self._fd is not None
        now = time.monotonic()
        if now < self._rotate_retry_at:
            return self._fd
        old = (self._fd, self._path)
        try:
            fd = self._open_segment()
        except OSError as exc:
            self._error(exc)
            self._rotate_retry_at = now + ROTATE_RETRY_SECONDS
            return old[0]
        assert old[1] is not None
        self._retired.append((old[0], old[1]))
        self._wake.set()
        return fd

    def _retire_current(self) -> None:
        if self._fd is not None and self._path is not None:
            self._retired.append((self._fd, self._path))
            self._wake.set()
        self._fd, self._path, self._size = None, None, 0

    def _dropped(self, exc: OSError, count: int = 1) -> None:
        self._counts["dropped"] += count
        self.failing = True
        self._error(exc)

    def _error(self, exc: OSError) -> None:
        self._counts["errors"] += 1
        message = f"{exc.__class__.__name__}: {exc}"
        if message != self.last_error:  # log a failure once, not once per event
            log.error("event log: %s", message)
        self.last_error = message

    # -- group fsync, sealing (background thread) ---------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.fsync_interval)
            self._wake.clear()
            try:
                self._sync_once()
            except Exception:  # never let the flusher die
                log.exception("event log flusher")

    def _sync_once(self) -> None:
        with self._lock:
            fd = self._fd if self._dirty else None
            self._dirty = False
            if (
                self._fd is not None
                and self._size > 0
                and time.monotonic() - self._opened_at > self.max_age
            ):
                self._retire_current()  # idle and old: finish it; the next event opens a new one
            retired, self._retired = self._retired, []
            sync_dir, self._dir_dirty = self._dir_dirty, False
        # Only this thread (or close(), after joining it) closes fds, so ``fd`` stays open.
        if fd is not None:
            try:
                os.fsync(fd)
                self._counts["fsyncs"] += 1
            except OSError as exc:
                self._error(exc)
        if sync_dir:
            self._fsync_directory()
        for old_fd, path in retired:
            self._seal(old_fd, path)
        if self._unsealed:
            pending, self._unsealed = self._unsealed, []
            for path in pending:
                self._mark_sealed(path)

    def _seal(self, fd: int, path: Path) -> None:
        try:
            os.fsync(fd)
            self._counts["fsyncs"] += 1
        except OSError as exc:
            self._error(exc)
        finally:
            os.close(fd)
        self._mark_sealed(path)

    def _mark_sealed(self, path: Path) -> None:
        try:
            fd = os.open(sealed_marker(path), os.O_WRONLY | os.O_CREAT, 0o644)
            os.close(fd)
            self._fsync_directory()
        except OSError as exc:
            self._error(exc)
            self._unsealed.append(path)  # retried on the next round
            return
        self._counts["sealed"] += 1

    def _fsync_directory(self) -> None:
        try:
            dfd = os.open(self.directory, os.O_RDONLY)
        except OSError as exc:
            self._error(exc)
            return
        try:
            os.fsync(dfd)
        except OSError as exc:
            self._error(exc)
        finally:
            os.close(dfd)

    # -- shutdown ----------------------------------------------------------------------

    def close(self) -> None:
        """Write the held lines, fsync and seal the current segment; later appends are
        dropped."""
        self.write_held()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._dirty = False
            self._retire_current()
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._sync_once()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
