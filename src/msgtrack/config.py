"""Settings, read from the environment.

Everything msgtrack keeps on disk lives under ``MSGTRACK_HOME`` (default
``./msgtrack-data``) so that ``msgtrack ingest`` run with the same home finds what
``msgtrack tracking-server`` wrote. The database defaults to a SQLite file there;
``MSGTRACK_DB`` takes a ``postgresql://user:password@host:port/dbname`` URL instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``3d``, ``12h``, ``90m``, ``30s``, ``1w`` or a bare number of seconds;
    ValueError otherwise (or when not positive)."""
    value = text.strip().lower()
    unit = DURATION_UNITS.get(value[-1:]) if value else None
    try:
        seconds = float(value[:-1]) * unit if unit else float(value)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (e.g. 3d, 12h, 90m, 3600)") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{text!r}: a duration must be positive")
    return seconds


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str
    tracking_url: str
    mail_domain: str
    default_from: str
    bounce_domain: str
    unsubscribe_mailbox: str | None
    exclude_urls: tuple[str, ...]
    # Event log: fsync group interval and segment rotation.
    fsync_interval: float = 0.2
    segment_max_bytes: int = 64 * 1024 * 1024
    segment_max_age: float = 3600.0
    # Sending.
    send_lease_seconds: float = 30.0
    retry_delays: tuple[float, ...] = (60.0, 300.0, 900.0, 3600.0)
    # Soft failures are retried until a delivery's send start + its validity period.
    delivery_validity: float = 5 * 86400.0
    max_message_bytes: int = 10 * 1024 * 1024
    max_render_seconds: float = 2.0
    ingest_interval: float = 3.0
    # Tracking server: slow clients (slowloris) and idle keep-alive connections are cut
    # after these; its database fallback gives up after tracking_db_timeout.
    tracking_request_timeout: float = 10.0
    tracking_idle_timeout: float = 15.0
    tracking_db_timeout: float = 2.0
    # Bounces and quarantine.
    bounce_rules: str | None = None  # a rules CSV replacing the shipped defaults
    imap_cafile: str | None = None  # CA certificates trusted for the IMAP or POP3 bounce mailbox
    # The bounce mailbox `msgtrack serve` reads by itself (a maildir, imaps:// or pop3s://
    # URL; None: only `bounces process` reads one), and how often.
    bounce_mailbox: str | None = None
    bounce_scan_interval: float = 300.0
    quarantine_soft_errors: int = 5  # soft errors that quarantine an address
    quarantine_soft_interval: float = 86400.0  # least seconds between counted errors
    quarantine_mailbox_full_days: float = 30.0  # a mailbox-full quarantine expires after
    # The IANA zone in which the web UI shows days and hours (events are stored in UTC).
    timezone: str = "UTC"
    extra: dict[str, str] = field(default_factory=dict)

    # Paths under the home, one place so every process agrees.
    @property
    def keys_file(self) -> Path:
        return self.home / "keys.json"

    @property
    def events_dir(self) -> Path:
        return self.home / "events"

    @property
    def rejects_dir(self) -> Path:
        return self.home / "rejects"

    @property
    def snapshots_dir(self) -> Path:
        return self.home / "urls"

    @property
    def locks_dir(self) -> Path:
        return self.home / "locks"

    @property
    def outbox_dir(self) -> Path:
        return self.home / "outbox"

    @property
    def is_https(self) -> bool:
        return self.tracking_url.lower().startswith("https://")


def load_settings(home: str | os.PathLike[str] | None = None) -> Settings:
    """Read settings from the environment (``home`` overrides ``MSGTRACK_HOME``)."""
    home_path = Path(home or os.environ.get("MSGTRACK_HOME") or "msgtrack-data").absolute()
    db_url = os.environ.get("MSGTRACK_DB") or f"sqlite:///{home_path / 'msgtrack.db'}"
    tracking_url = (os.environ.get("MSGTRACK_TRACKING_URL") or "http://127.0.0.1:8080").rstrip("/")
    mail_domain = os.environ.get("MSGTRACK_MAIL_DOMAIN") or "msgtrack.localhost"
    retry = os.environ.get("MSGTRACK_RETRY_DELAYS")
    return Settings(
        home=home_path,
        db_url=db_url,
        tracking_url=tracking_url,
        mail_domain=mail_domain,
        default_from=os.environ.get("MSGTRACK_FROM") or f"msgtrack@{mail_domain}",
        bounce_domain=os.environ.get("MSGTRACK_BOUNCE_DOMAIN") or mail_domain,
        unsubscribe_mailbox=os.environ.get("MSGTRACK_UNSUBSCRIBE_MAILBOX") or None,
        exclude_urls=tuple((os.environ.get("MSGTRACK_EXCLUDE_URLS") or "").split()),
        fsync_interval=_float("MSGTRACK_FSYNC_INTERVAL", 0.2),
        segment_max_bytes=_int("MSGTRACK_SEGMENT_MAX_BYTES", 64 * 1024 * 1024),
        segment_max_age=_float("MSGTRACK_SEGMENT_MAX_AGE", 3600.0),
        send_lease_seconds=_float("MSGTRACK_SEND_LEASE", 30.0),
        retry_delays=tuple(float(x) for x in retry.split(","))
        if retry
        else (60.0, 300.0, 900.0, 3600.0),
        delivery_validity=parse_duration(os.environ.get("MSGTRACK_DELIVERY_VALIDITY") or "5d"),
        max_message_bytes=_int("MSGTRACK_MAX_MESSAGE_BYTES", 10 * 1024 * 1024),
        max_render_seconds=_float("MSGTRACK_MAX_RENDER_SECONDS", 2.0),
        ingest_interval=_float("MSGTRACK_INGEST_INTERVAL", 3.0),
        tracking_request_timeout=_float("MSGTRACK_TRACKING_REQUEST_TIMEOUT", 10.0),
        tracking_idle_timeout=_float("MSGTRACK_TRACKING_IDLE_TIMEOUT", 15.0),
        tracking_db_timeout=_float("MSGTRACK_TRACKING_DB_TIMEOUT", 2.0),
        bounce_rules=os.environ.get("MSGTRACK_BOUNCE_RULES") or None,
        imap_cafile=os.environ.get("MSGTRACK_IMAP_CAFILE") or None,
        bounce_mailbox=os.environ.get("MSGTRACK_BOUNCE_MAILBOX") or None,
        bounce_scan_interval=_float("MSGTRACK_BOUNCE_SCAN_INTERVAL", 300.0),
        quarantine_soft_errors=_int("MSGTRACK_QUARANTINE_SOFT_ERRORS", 5),
        quarantine_soft_interval=_float("MSGTRACK_QUARANTINE_SOFT_INTERVAL", 86400.0),
        quarantine_mailbox_full_days=_float("MSGTRACK_QUARANTINE_MAILBOX_FULL_DAYS", 30.0),
        timezone=os.environ.get("MSGTRACK_TIMEZONE") or "UTC",
    )
