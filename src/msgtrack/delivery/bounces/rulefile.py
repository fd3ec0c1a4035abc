"""The qualification rules every process uses, and their edits from the web UI.

Where the rules come from, first found wins:

1. ``MSGTRACK_BOUNCE_RULES``: the operator's own file. The UI shows it but does not
   write it (it belongs to whoever deployed it, maybe a read-only config);
2. ``bounce-rules.csv`` under ``MSGTRACK_HOME``: what the UI saved;
3. the shipped ``rules.csv``.

The UI writes the home file atomically (temporary file, fsync, rename) under a lock,
and only over the version it showed (a hash of the text): two people editing at once
cannot silently undo each other, nor delete the wrong row after the other moved one.
Long-running processes (the sender, the bounce processor) hold a :class:`LiveRules`,
which re-reads the file when it changes (one ``stat`` a qualification), so a rule
saved in the UI applies at the next message without a restart.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from msgtrack.config import Settings
from msgtrack.delivery.bounces.rules import (
    REASONS,
    RULE_TYPES,
    Qualification,
    Rule,
    RuleError,
    RuleTable,
    default_rules_text,
    parse_rules,
)

HOME_RULES = "bounce-rules.csv"
COLUMNS = ("status", "reply", "text", "reason", "type", "note")
MAX_PATTERN = 10_000
MAX_NOTE = 500
MAX_RULES = 1_000
SAVED_HEADER = (
    "# Qualification rules saved from the msgtrack web UI; the first row whose patterns\n"
    "# all match wins. Delete this file (or use 'Reset to defaults') to go back to the\n"
    "# shipped rules.\n"
)


class StaleRules(Exception):
    """The rules changed since the editor read them."""


class ReadOnlyRules(Exception):
    """The rules come from ``MSGTRACK_BOUNCE_RULES``, which the UI does not write."""


@dataclass(frozen=True)
class RuleRow:
    """One rule as written (patterns as text), for showing and editing."""

    status: str = ""
    reply: str = ""
    text: str = ""
    reason: str = "to_qualify"
    type: str = "auto"
    note: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class RuleSet:
    rows: list[RuleRow]
    origin: str  # env, home or default
    path: Path | None  # the file read (None: the shipped defaults)
    version: str  # hash of the text, echoed by editors

    @property
    def editable(self) -> bool:
        return self.origin != "env"


def home_rules_path(settings: Settings) -> Path:
    return settings.home / HOME_RULES


def _source(settings: Settings) -> tuple[str, Path | None]:
    if settings.bounce_rules:
        return "env", Path(settings.bounce_rules)
    path = home_rules_path(settings)
    return ("home", path) if path.exists() else ("default", None)


def _version(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def parse_rows(text: str) -> list[RuleRow]:
    """The rows of a rules CSV, as text (validated by :func:`parse_rules` on save)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [
        RuleRow(**{c: (row.get(c) or "").strip() for c in COLUMNS})
        for row in csv.DictReader(io.StringIO("\n".join(lines)))
    ]


def dump_rows(rows: list[RuleRow]) -> str:
    out = io.StringIO()
    out.write(SAVED_HEADER)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([getattr(row, c) for c in COLUMNS])
    return out.getvalue()


def read_ruleset(settings: Settings) -> RuleSet:
    origin, path = _source(settings)
    text = path.read_text("utf-8") if path else default_rules_text()
    return RuleSet(parse_rows(text), origin, path, _version(text))


def check_row(row: RuleRow) -> RuleRow:
    """The row, trimmed, or :class:`RuleError` saying what is wrong with it."""
    row = RuleRow(**{c: getattr(row, c).strip() for c in COLUMNS})
    if row.reason not in REASONS:
        raise RuleError(f"unknown reason {row.reason!r}")
    if row.type not in RULE_TYPES:
        raise RuleError(f"unknown type {row.type!r}")
    for name in ("status", "reply", "text"):
        pattern = getattr(row, name)
        if len(pattern) > MAX_PATTERN:
            raise RuleError(f"{name} pattern longer than {MAX_PATTERN} characters")
        if "\n" in pattern or "\r" in pattern:
            raise RuleError(f"{name} pattern on more than one line")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise RuleError(f"bad {name} pattern: {exc}") from None
    if len(row.note) > MAX_NOTE or "\n" in row.note:
        raise RuleError(f"the note must be one line of at most {MAX_NOTE} characters")
    return row


@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    settings.locks_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.locks_dir / "bounce-rules.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_rows(settings: Settings, rows: list[RuleRow], version: str) -> RuleSet:
    """Replace the rules with ``rows`` if they are still at ``version``; every row is
    checked and the whole table compiled first, so nothing invalid is ever written."""
    checked = [check_row(r) for r in rows]
    if len(checked) > MAX_RULES:
        raise RuleError(f"at most {MAX_RULES} rules")
    text = dump_rows(checked)
    parse_rules(text)  # the qualifier's own reading must accept it
    with _locked(settings):
        current = read_ruleset(settings)
        if not current.editable:
            raise ReadOnlyRules(f"the rules come from MSGTRACK_BOUNCE_RULES={current.path}")
        if current.version != version:
            raise StaleRules("the rules changed meanwhile: reload and try again")
        _write_atomically(home_rules_path(settings), text)
    return read_ruleset(settings)


def reset_rules(settings: Settings, version: str) -> RuleSet:
    """Back to the shipped defaults: the home file is removed."""
    with _locked(settings):
        current = read_ruleset(settings)
        if not current.editable:
            raise ReadOnlyRules(f"the rules come from MSGTRACK_BOUNCE_RULES={current.path}")
        if current.version != version:
            raise StaleRules("the rules changed meanwhile: reload and try again")
        with contextlib.suppress(FileNotFoundError):
            home_rules_path(settings).unlink()
    return read_ruleset(settings)


def edit_rules(
    settings: Settings, version: str, action: str, index: int, row: RuleRow | None = None
) -> RuleSet:
    """One edit of the table: ``add`` (``row`` at ``index``), ``update``, ``delete``,
    ``up`` or ``down`` (the rule at ``index``, 0-based)."""
    rows = list(read_ruleset(settings).rows)
    if row is not None and not (row.status.strip() or row.reply.strip() or row.text.strip()):
        # A catch-all belongs at the end of the table (the shipped one has it): an edit
        # that matches everything is more likely a slip than a wish.
        raise RuleError("give at least one pattern (status, reply or text)")
    if action == "add":
        assert row is not None
        rows.insert(max(0, min(index, len(rows))), row)
    else:
        if not 0 <= index < len(rows):
            raise StaleRules("no such rule: reload and try again")
        if action == "update":
            assert row is not None
            rows[index] = row
        elif action == "delete":
            del rows[index]
        elif action in ("up", "down"):
            other = index - 1 if action == "up" else index + 1
            if 0 <= other < len(rows):
                rows[index], rows[other] = rows[other], rows[index]
        else:
            raise ValueError(f"unknown action {action!r}")
    return save_rows(settings, rows, version)


class LiveRules(RuleTable):
    """The rule table of :func:`read_ruleset`'s source, re-read when it changes.

    A changed file that no longer parses (edited by hand) keeps the previous rules in
    force rather than stopping the sender; the UI never writes such a file."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._key: Any = None
        self._table = RuleTable([])
        self._lock = threading.Lock()
        self._refresh(strict=True)

    def _current_key(self) -> Any:
        origin, path = _source(self._settings)
        if path is None:
            return origin
        try:
            st = path.stat()
        except FileNotFoundError:
            return "default" if origin == "home" else (origin, str(path))
        return (str(path), st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self, strict: bool = False) -> None:
        key = self._current_key()
        if key == self._key:
            return
        with self._lock:
            try:
                origin, path = _source(self._settings)
                text = path.read_text("utf-8") if path else default_rules_text()
                table = parse_rules(text)
            except (OSError, RuleError):
                if strict:
                    raise
                return
            self._table, self._key = table, key

    @property
    def rules(self) -> list[Rule]:
        self._refresh()
        return self._table.rules

    @rules.setter
    def rules(self, value: list[Rule]) -> None:  # pragma: no cover - RuleTable's API
        self._table = RuleTable(value)

    def qualify(self, status: str | None, reply_code: str | None, text: str) -> Qualification:
        self._refresh()
        return self._table.qualify(status, reply_code, text)


def live_rules(settings: Settings) -> LiveRules:
    return LiveRules(settings)
