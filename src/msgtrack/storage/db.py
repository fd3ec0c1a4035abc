"""Connections and migrations for both backends.

SQLite is the embedded default (WAL, so the tracking server, the ingestion loop and the
UI can read while one writer writes; a busy timeout rather than instant "database is
locked"). PostgreSQL is reached with a standard ``postgresql://`` URL, driven by psycopg 3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 30_000
READ_ONLY = "msgtrack_read_only"


def normalize_url(url: str) -> str:
    """Accept the standard ``postgresql://`` form and pick the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy own transactions (pysqlite's implicit BEGIN is deferred anyway).
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers: BEGIN IMMEDIATE takes the write lock at the start, so two writers
            # queue on the busy timeout instead of failing on lock upgrade. Readers (see
            # ``read_only``) take none: WAL lets them read while a writer writes.
            if conn.get_execution_options().get(READ_ONLY):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        # pysqlite must not emit its own BEGIN: SQLAlchemy's begin event does it.
        @event.listens_for(engine, "connect")
        def _sqlite_autocommit(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    # No server-side prepared statements (psycopg prepares a query from its 5th run):
    # PostgreSQL then plans every query with its values. A prepared query soon gets a
    # generic plan, costed without them, and recompute ran 2-6x slower with those
    # (benchmarks/RESULTS.md). Also what PgBouncer in transaction mode needs.
    connect_args = {"prepare_threshold": None, **kwargs.pop("connect_args", {})}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)


def read_only(engine: Engine) -> Engine:
    """The same pool, for connections that only read (reports, API, tracking lookups):
    on SQLite they never take the write lock, so ingestion cannot stall them."""
    return engine.execution_options(**{READ_ONLY: True})


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest version (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(engine), "head")


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
