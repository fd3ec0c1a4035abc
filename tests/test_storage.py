"""The storage layer itself, on both backends: migrations, UTC times, readers vs writers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import insert, select

from msgtrack.context import Context
from msgtrack.setup import ensure_ready, head_revision, schema_is_current
from msgtrack.storage.db import current_revision, migrate
from msgtrack.storage.schema import recipients


def test_migrations_are_versioned_and_idempotent(ctx: Context) -> None:
    assert schema_is_current(ctx)
    assert current_revision(ctx.engine) == head_revision(ctx)
    migrate(ctx.engine)  # again: nothing to do, nothing broken
    assert ensure_ready(ctx) is False


def test_times_are_stored_in_utc_and_come_back_aware(ctx: Context) -> None:
    paris = timezone(timedelta(hours=1))
    written = datetime(2026, 11, 22, 12, 30, 15, 123456, tzinfo=paris)
    with ctx.engine.begin() as conn:
        conn.execute(
            insert(recipients).values(
                email="a@example.com",
                email_key="a@example.com",
                created_at=written,
                updated_at=written,
            )
        )
    with ctx.reader.connect() as conn:
        read = conn.execute(select(recipients.c.created_at)).scalar_one()
    assert read == written and read.tzinfo is not None
    assert read.astimezone(UTC).hour == 11


def test_naive_times_are_refused(ctx: Context) -> None:
    with pytest.raises(Exception, match="naive"), ctx.engine.begin() as conn:
        conn.execute(
            insert(recipients).values(
                email="b@example.com",
                email_key="b@example.com",
                created_at=datetime(2026, 1, 1),
                updated_at=datetime(2026, 1, 1),
            )
        )


def test_a_reader_is_not_stalled_by_a_writer(ctx: Context) -> None:
    """While a write transaction is open, reports and tracking lookups still read."""
    done = threading.Event()
    now = datetime.now(UTC)
    with ctx.engine.begin() as writer:
        writer.execute(
            insert(recipients).values(
                email="w@example.com", email_key="w@example.com", created_at=now, updated_at=now
            )
        )

        def read() -> None:
            with ctx.reader.connect() as conn:
                conn.execute(select(recipients.c.id)).all()
            done.set()

        thread = threading.Thread(target=read)
        thread.start()
        assert done.wait(10), "the reader waited for the writer"
        thread.join()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_plans_each_query_with_its_values(ctx: Context) -> None:
    """No server-side prepared statements, however often a query runs: a generic plan,
    costed from statistics taken when a delivery's tables were small, turned each
    (delivery, visitor) lookup of recompute into a scan of the whole delivery."""
    from sqlalchemy import bindparam, text

    lookup = select(recipients.c.id).where(recipients.c.email_key == bindparam("key"))
    with ctx.engine.connect() as conn:
        for n in range(20):  # psycopg would prepare it from the 5th run
            conn.execute(lookup, {"key": f"{n}@example.com"}).all()
        prepared = conn.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar()
    assert prepared == 0
