"""Quarantined and denylisted addresses shaped for the API and the pages (plain values,
times in UTC ISO 8601), and their manual release: the same store function as
``msgtrack quarantine release``, so the history reads the same whoever released."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from msgtrack.storage import quarantine as store
from msgtrack.storage.types import utcnow

KINDS = ("quarantine", "denylist")
COLUMNS = (
    "address", "kind", "reason", "failure_type", "error_count",
    "created_at", "updated_at", "expires_at",
)  # fmt: skip
EXPORT_PAGE = 1000


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _history(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: _iso(v) for k, v in r.items() if k != "address"} for r in rows]


def quarantine_list(
    reader: Engine,
    *,
    kind: str | None = None,
    reason: str | None = None,
    search: str = "",
    after: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """A page of the addresses excluded now, each with its history; ``next`` is the
    ``after`` of the following page (None on the last)."""
    with reader.connect() as conn:
        rows = store.quarantine_page(
            conn, utcnow(), kind=kind, reason=reason, search=search, after=after, limit=limit + 1
        )
        page = rows[:limit]
        histories = store.histories_of(conn, [r.address for r in page])
    return {
        "addresses": [
            {**r.as_dict(), "history": _history(histories.get(r.address, []))} for r in page
        ],
        "next": page[-1].address if len(rows) > limit else None,
    }


def iter_quarantine(
    reader: Engine, *, kind: str | None = None, reason: str | None = None, search: str = ""
) -> Iterator[dict[str, Any]]:
    """Every listed address (no history), a keyset page at a time: for the CSV."""
    after = None
    while True:
        with reader.connect() as conn:
            rows = store.quarantine_page(
                conn,
                utcnow(),
                kind=kind,
                reason=reason,
                search=search,
                after=after,
                limit=EXPORT_PAGE,
            )
        yield from (r.as_dict() for r in rows)
        if len(rows) < EXPORT_PAGE:
            return
        after = rows[-1].address


def quarantine_detail(reader: Engine, address: str) -> dict[str, Any] | None:
    """An address's state (``active``: excluded now) and whole history; None when it
    never had an error."""
    with reader.connect() as conn:
        row = store.quarantine_of(conn, address)
        if row is None:
            return None
        history = store.history_of(conn, address)
    now = utcnow()
    active = (
        row["kind"] in KINDS
        and row["released_at"] is None
        and (row["expires_at"] is None or row["expires_at"] > now)
    )
    return {
        **{k: _iso(v) for k, v in row.items() if k != "id"},
        "active": active,
        "history": _history(history),
    }


def release_address(engine: Engine, address: str, note: str | None) -> bool:
    """Release by hand, with history; False when the address was not excluded."""
    with engine.begin() as conn:
        return store.release(conn, address, utcnow(), note)
