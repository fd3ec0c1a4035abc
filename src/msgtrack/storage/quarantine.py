"""The quarantine store: which addresses must not be targeted, and why, with history.

One ``quarantines`` row per address (lower-cased). Its ``kind`` says what it does:

- ``quarantine`` and ``denylist`` exclude the address at analysis (while not released
  and not expired);
- ``watch`` only counts soft errors (``error_count``, the last counted one at
  ``updated_at``) on the way to a quarantine, and excludes nothing.

Policy, applied by :func:`record_failure` in the caller's transaction:

- a complaint denylists at once;
- a hard error whose reason is sure (user unknown, invalid domain, account disabled)
  quarantines at once;
- a refusal (``rejected``) says something about the sender: it never quarantines;
- any other error (soft, or a hard one not qualified for sure) is a counted soft error
  when at least ``min_interval`` has passed since the last counted one, and the
  ``threshold``-th quarantines; a mailbox-full quarantine expires after
  ``mailbox_full_expiry``;
- a later success clears soft errors and soft quarantines (:func:`clear_after_success`).

Every change adds a ``quarantine_history`` row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from msgtrack.storage.schema import quarantine_history, quarantines

#: Reasons that quarantine on a single hard error.
SURE_HARD_REASONS = frozenset({"user_unknown", "invalid_domain", "account_disabled"})
#: Reasons that never quarantine.
NEVER_REASONS = frozenset({"rejected", "ignored"})


@dataclass(frozen=True)
class QuarantinePolicy:
    threshold: int = 5
    min_interval: timedelta = timedelta(days=1)
    mailbox_full_expiry: timedelta = timedelta(days=30)

    @classmethod
    def from_settings(cls, settings: Any) -> QuarantinePolicy:
        return cls(
            threshold=max(1, int(settings.quarantine_soft_errors)),
            min_interval=timedelta(seconds=float(settings.quarantine_soft_interval)),
            mailbox_full_expiry=timedelta(days=float(settings.quarantine_mailbox_full_days)),
        )


def _active(row: Mapping[Any, Any], now: datetime) -> bool:
    return row["released_at"] is None and (row["expires_at"] is None or row["expires_at"] > now)


def _lock_row(conn: Connection, address: str, now: datetime) -> Mapping[str, Any]:
    """The address's row, created as an empty ``watch`` when missing, locked on
    PostgreSQL so concurrent processors count one error at a time."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(quarantines)
        .values(
            address=address,
            kind="watch",
            reason="to_qualify",
            error_count=0,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing()
    )
    stmt = select(quarantines).where(quarantines.c.address == address)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return dict(conn.execute(stmt).mappings().one())


def _history(
    conn: Connection,
    address: str,
    action: str,
    now: datetime,
    *,
    values: Mapping[str, Any],
    message_id: int | None = None,
    note: str | None = None,
) -> None:
    conn.execute(
        insert(quarantine_history).values(
            address=address,
            action=action,
            kind=values.get("kind"),
            reason=values.get("reason"),
            failure_type=values.get("failure_type"),
            error_count=values.get("error_count"),
            message_id=message_id,
            note=note,
            at=now,
        )
    )


def _set(conn: Connection, row_id: int, values: Mapping[str, Any]) -> None:
    conn.execute(update(quarantines).where(quarantines.c.id == row_id).values(**values))


def record_failure(
    conn: Connection,
    address: str,
    reason: str,
    failure_type: str,
    now: datetime,
    policy: QuarantinePolicy,
    *,
    message_id: int | None = None,
) -> bool:
    """Apply one qualified failure of ``address``; True when it newly quarantines or
    denylists the address."""
    if reason in NEVER_REASONS or failure_type == "ignored":
        return False
    address = address.strip().lower()
    row = _lock_row(conn, address, now)
    count = int(row["error_count"])
    kind = row["kind"]
    if kind != "watch" and not _active(row, now):
        kind, count = "watch", 0  # released or expired: start over
    fresh = {"released_at": None, "updated_at": now}

    def change(action: str, values: dict[str, Any]) -> None:
        values = {**fresh, **values}
        _set(conn, int(row["id"]), values)
        _history(conn, address, action, now, values=values, message_id=message_id)

    if kind == "denylist":
        return False
    if reason == "complaint":
        change(
            "denylist",
            {
                "kind": "denylist",
                "reason": "complaint",
                "failure_type": "hard",
                "error_count": count + 1,
                "expires_at": None,
            },
        )
        return True
    if failure_type == "hard" and reason in SURE_HARD_REASONS:
        if kind == "quarantine" and row["failure_type"] == "hard":
            _set(conn, int(row["id"]), {"error_count": count + 1, "updated_at": now})
            return False
        change(
            "quarantine",
            {
                "kind": "quarantine",
                "reason": reason,
                "failure_type": "hard",
                "error_count": count + 1,
                "expires_at": None,
            },
        )
        return True
    # A counted soft error, at most one per interval.
    if count > 0 and now - row["updated_at"] < policy.min_interval:
        return False
    if kind == "quarantine":
        _set(conn, int(row["id"]), {"error_count": count + 1, "updated_at": now})
        return False
    count += 1
    if count >= policy.threshold:
        expires = now + policy.mailbox_full_expiry if reason == "mailbox_full" else None
        change(
            "quarantine",
            {
                "kind": "quarantine",
                "reason": reason,
                "failure_type": "soft",
                "error_count": count,
                "expires_at": expires,
            },
        )
        return True
    change(
        "error",
        {
            "kind": "watch",
            "reason": reason,
            "failure_type": "soft",
            "error_count": count,
            "expires_at": None,
        },
    )
    return False


def clear_after_success(conn: Connection, addresses: Iterable[str], now: datetime) -> int:
    """A message to these addresses was accepted: forget their soft errors and lift
    their soft-error quarantines. Returns how many rows changed."""
    wanted = sorted({a.strip().lower() for a in addresses})
    if not wanted:
        return 0
    q = quarantines
    changed = 0
    for i in range(0, len(wanted), 1000):
        rows = conn.execute(
            select(q.c.id, q.c.address, q.c.kind, q.c.reason).where(
                q.c.address.in_(wanted[i : i + 1000]),
                q.c.released_at.is_(None),
                q.c.error_count > 0,
                or_(
                    q.c.kind == "watch", and_(q.c.kind == "quarantine", q.c.failure_type == "soft")
                ),
            )
        ).all()
        for row_id, address, kind, reason in rows:
            values: dict[str, Any] = {"kind": "watch", "error_count": 0, "updated_at": now}
            if kind == "quarantine":
                values["released_at"] = now
            _set(conn, int(row_id), values)
            _history(
                conn,
                address,
                "clear",
                now,
                values={"kind": kind, "reason": reason, "failure_type": "soft", "error_count": 0},
                note="a later message was accepted",
            )
            changed += 1
    return changed


def release(conn: Connection, address: str, now: datetime, note: str | None = None) -> bool:
    """Manual release of a quarantined or denylisted address; False when it was not."""
    address = address.strip().lower()
    row = (
        conn.execute(select(quarantines).where(quarantines.c.address == address)).mappings().first()
    )
    if row is None or row["kind"] == "watch" or not _active(row, now):
        return False
    _set(conn, int(row["id"]), {"released_at": now, "updated_at": now, "error_count": 0})
    _history(conn, address, "release", now, values=dict(row), note=note or "released by hand")
    return True


@dataclass(frozen=True)
class QuarantineRow:
    address: str
    kind: str
    reason: str
    failure_type: str | None
    error_count: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "kind": self.kind,
            "reason": self.reason,
            "failure_type": self.failure_type,
            "error_count": self.error_count,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


def active_quarantines(conn: Connection, now: datetime) -> list[QuarantineRow]:
    """Addresses excluded today (quarantined or denylisted), by address."""
    q = quarantines
    rows = conn.execute(
        select(q)
        .where(
            q.c.kind.in_(("quarantine", "denylist")),
            q.c.released_at.is_(None),
            or_(q.c.expires_at.is_(None), q.c.expires_at > now),
        )
        .order_by(q.c.address)
    ).mappings()
    return [
        QuarantineRow(
            r["address"],
            r["kind"],
            r["reason"],
            r["failure_type"],
            int(r["error_count"]),
            r["created_at"],
            r["updated_at"],
            r["expires_at"],
        )
        for r in rows
    ]


def history_of(conn: Connection, address: str) -> list[dict[str, Any]]:
    h = quarantine_history
    rows = conn.execute(
        select(h).where(h.c.address == address.strip().lower()).order_by(h.c.at, h.c.id)
    ).mappings()
    return [{k: v for k, v in r.items() if k != "id"} for r in rows]


# -- the web UI's list and detail ----------------------------------------------------


def _row(r: Mapping[Any, Any]) -> QuarantineRow:
    return QuarantineRow(
        r["address"],
        r["kind"],
        r["reason"],
        r["failure_type"],
        int(r["error_count"]),
        r["created_at"],
        r["updated_at"],
        r["expires_at"],
    )


def quarantine_page(
    conn: Connection,
    now: datetime,
    *,
    kind: str | None = None,
    reason: str | None = None,
    search: str = "",
    after: str | None = None,
    limit: int = 50,
) -> list[QuarantineRow]:
    """Addresses excluded now, by address, a page at a time: the rows after ``after``
    (keyset on the unique address index), filtered by kind, reason and a part of the
    address."""
    q = quarantines
    kinds = (kind,) if kind in ("quarantine", "denylist") else ("quarantine", "denylist")
    stmt = select(q).where(
        q.c.kind.in_(kinds),
        q.c.released_at.is_(None),
        or_(q.c.expires_at.is_(None), q.c.expires_at > now),
    )
    if reason:
        stmt = stmt.where(q.c.reason == reason)
    if search:
        escaped = search.strip().lower()
        for special in ("\\", "%", "_"):
            escaped = escaped.replace(special, "\\" + special)
        stmt = stmt.where(q.c.address.like(f"%{escaped}%", escape="\\"))
    if after is not None:
        stmt = stmt.where(q.c.address > after)
    rows = conn.execute(stmt.order_by(q.c.address).limit(limit)).mappings()
    return [_row(r) for r in rows]


def quarantine_of(conn: Connection, address: str) -> dict[str, Any] | None:
    """The address's row whatever its state (``active`` says whether it excludes now),
    None when it never had an error."""
    row = (
        conn.execute(select(quarantines).where(quarantines.c.address == address.strip().lower()))
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None


def histories_of(conn: Connection, addresses: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """:func:`history_of` for a page of addresses, in one query."""
    wanted = sorted({a.strip().lower() for a in addresses})
    out: dict[str, list[dict[str, Any]]] = {a: [] for a in wanted}
    if not wanted:
        return out
    h = quarantine_history
    rows = conn.execute(
        select(h).where(h.c.address.in_(wanted)).order_by(h.c.address, h.c.at, h.c.id)
    ).mappings()
    for r in rows:
        out[r["address"]].append({k: v for k, v in r.items() if k != "id"})
    return out
