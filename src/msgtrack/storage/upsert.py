"""Insert-or-update statements both backends understand (``ON CONFLICT``), shared by
the stores so each says *what* it records, not how each dialect spells it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection


def _insert(conn: Connection, table: Table) -> Any:
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def insert_ignoring_conflicts(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    """``INSERT ... ON CONFLICT DO NOTHING`` for many rows."""
    if rows:
        conn.execute(_insert(conn, table).on_conflict_do_nothing(), list(rows))


def upsert(conn: Connection, table: Table, row: Mapping[str, Any], keys: Sequence[str]) -> None:
    """Insert ``row`` or overwrite the other columns of the existing one."""
    stmt = _insert(conn, table).values(dict(row))
    stmt = stmt.on_conflict_do_update(
        index_elements=list(keys),
        set_={k: stmt.excluded[k] for k in row if k not in keys},
    )
    conn.execute(stmt)


def add_to_counters(
    conn: Connection, table: Table, key: Mapping[str, Any], increments: Mapping[str, int]
) -> None:
    """Add ``increments`` to a counter row, created at zero when missing."""
    increments = {k: v for k, v in increments.items() if v}
    if not increments:
        return
    stmt = _insert(conn, table).values({**key, **increments})
    stmt = stmt.on_conflict_do_update(
        index_elements=list(key),
        set_={name: table.c[name] + stmt.excluded[name] for name in increments},
    )
    conn.execute(stmt)


def add_to_counter_rows(
    conn: Connection,
    table: Table,
    keys: Sequence[str],
    counters: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
) -> None:
    """``add_to_counters`` for many rows in one executemany: each row holds its key
    columns and a value (possibly negative) for every name of ``counters``. Callers pass
    rows sorted by key, so concurrent writers lock rows in the same order."""
    if not rows:
        return
    stmt = _insert(conn, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(keys),
        set_={name: table.c[name] + stmt.excluded[name] for name in counters},
    )
    conn.execute(stmt, list(rows))
