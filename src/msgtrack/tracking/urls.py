"""The tracking server's in-memory cache of tracked URLs.

A click must be answered without the database: the cache is a dict keyed by
(delivery id, tracked URL id), filled the first time a token names a delivery, from
the delivery's snapshot (``tracking.snapshot``, written at send), and from the database
only when there is no snapshot or it does not know the id. A miss re-reads the sources
at most once per ``refresh_seconds`` per delivery, so a flood of signed-but-unknown ids
cannot hammer the disk or the database. ``get`` never blocks; ``find`` may (run it off
the event loop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import Engine

from msgtrack.links.personalize import PersonalizationError, UrlTemplate, parse_url_template
from msgtrack.storage.deliveries import tracked_urls
from msgtrack.tracking import snapshot

log = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0
# Characters a Location header may carry as they are; the rest is percent-encoded.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


def header_safe(url: str) -> str:
    """``url`` with controls, spaces and non-ASCII percent-encoded (UTF-8), so it can
    travel in a header; printable ASCII (``%`` included) is left as written."""
    if url.isascii() and url.isprintable() and " " not in url:
        return url
    return quote(url, safe=_HEADER_SAFE)


@dataclass(frozen=True, slots=True)
class TrackedUrl:
    id: int
    delivery_id: int
    type: str  # click, open, opt-out, mirror
    url: str
    label: str
    # Click URLs only: the parsed template with header-safe literals, or None when the
    # URL cannot be a redirect target (unparseable, or not http/https).
    template: UrlTemplate | None
    # The ``Location: ...`` header line of a click URL without personalization, built
    # once per tracked URL (like a web server's configured redirect), else None.
    fixed_location: bytes | None = None

    def destination(self, values: tuple[str, ...]) -> str | None:
        """Where a click goes, with ``values`` substituted; None if they do not fit."""
        template = self.template
        if template is None or len(values) != len(template.expressions):
            return None
        if not values:
            return template.literals[0]
        return template.resolve(values)

    def location_line(self, values: tuple[str, ...]) -> bytes | None:
        """The ``Location`` header line of a click with ``values``; None if they do not fit."""
        if not values and self.fixed_location is not None:
            return self.fixed_location
        destination = self.destination(values)
        # ASCII only: the literals are header-safe and the values percent-encoded.
        return None if destination is None else _location_line(destination)


def _location_line(destination: str) -> bytes:
    return b"Location: %s\r\n" % destination.encode("ascii")


def make_tracked_url(id: int, delivery_id: int, type: str, url: str, label: str) -> TrackedUrl:
    template: UrlTemplate | None = None
    if type == "click":
        try:
            parsed = parse_url_template(url)
        except PersonalizationError:
            log.warning("tracked URL %s of delivery %s cannot be parsed: %r", id, delivery_id, url)
        else:
            if parsed.literals[0][:8].lower().startswith(("http://", "https://")):
                literals = tuple(header_safe(part) for part in parsed.literals)
                template = UrlTemplate(parsed.url, literals, parsed.expressions)
            else:
                log.warning("tracked URL %s of delivery %s is not http(s)", id, delivery_id)
    fixed = None
    if template is not None and not template.expressions:
        fixed = _location_line(template.literals[0])
    return TrackedUrl(id, delivery_id, type, url, label, template, fixed)


class TrackedUrlCache:
    def __init__(
        self,
        snapshots_dir: Path,
        engine: Callable[[], Engine] | None,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        self.snapshots_dir = snapshots_dir
        self._engine = engine
        self.refresh_seconds = refresh_seconds
        # (delivery id, tracked URL id) -> URL; ``get`` is this dict's get (the hot path
        # reads the dict itself, without a method call)
        self.cached: dict[tuple[int, int], TrackedUrl] = {}
        self._checked_at: dict[int, float] = {}  # delivery -> last time its sources were read
        self._locks: dict[int, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self.stats = {"snapshot_loads": 0, "db_loads": 0, "load_errors": 0}

    def get(self, delivery_id: int, url_id: int) -> TrackedUrl | None:
        """The cached URL, without touching disk or database."""
        return self.cached.get((delivery_id, url_id))

    def should_load(self, delivery_id: int) -> bool:
        """Would ``find`` read the sources again for this delivery now?"""
        checked = self._checked_at.get(delivery_id)
        return checked is None or time.monotonic() - checked >= self.refresh_seconds

    def find(self, delivery_id: int, url_id: int) -> TrackedUrl | None:
        """The URL, reading the snapshot (then the database) on a miss; blocking."""
        key = (delivery_id, url_id)
        url = self.cached.get(key)
        if url is not None:
            return url
        # One reader per delivery: concurrent first clicks wait for its result
        # instead of seeing a miss (or reading the same file ten times).
        with self._lock_for(delivery_id):
            url = self.cached.get(key)
            if url is None and self.should_load(delivery_id):
                self._load(delivery_id, url_id)
                url = self.cached.get(key)
        return url

    def _lock_for(self, delivery_id: int) -> threading.Lock:
        with self._locks_lock:
            lock = self._locks.get(delivery_id)
            if lock is None:
                lock = self._locks[delivery_id] = threading.Lock()
            return lock

    def _load(self, delivery_id: int, url_id: int) -> None:
        try:
            published = snapshot.load(self.snapshots_dir, delivery_id)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("snapshot of delivery %s unreadable: %s", delivery_id, exc)
            self.stats["load_errors"] += 1
            published = None
        if published is not None:
            self.stats["snapshot_loads"] += 1
            self._merge(delivery_id, ((u.id, u.type, u.url, u.label) for u in published))
        if (delivery_id, url_id) not in self.cached and self._engine is not None:
            try:
                with self._engine().connect() as conn:
                    rows = tracked_urls(conn, delivery_id)
            except Exception as exc:  # noqa: BLE001 - a database outage is a miss, not a crash
                log.warning("tracked URLs of delivery %s unreadable: %s", delivery_id, exc)
                self.stats["load_errors"] += 1
            else:
                self.stats["db_loads"] += 1
                self._merge(delivery_id, ((r["id"], r["type"], r["url"], r["label"]) for r in rows))
        self._checked_at[delivery_id] = time.monotonic()

    def _merge(self, delivery_id: int, urls: Iterable[tuple[int, str, str, str]]) -> None:
        for id_, type_, url, label in urls:
            key = (delivery_id, id_)
            if key not in self.cached:
                self.cached[key] = make_tracked_url(id_, delivery_id, type_, url, label)
