"""Shared fixtures: every test that takes ``ctx`` (or ``db_url``) runs on SQLite and on
PostgreSQL.

PostgreSQL is reached at ``MSGTRACK_TEST_PG`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Without a server the PostgreSQL half
skips with a message, except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from msgtrack.config import load_settings
from msgtrack.context import Context
from msgtrack.links.sign import KeyRing
from msgtrack.storage.db import make_engine, migrate

# The browser tests' fixtures (Chromium, a served site, pages), for every browser test file.
pytest_plugins = ["browser_fixtures"]

PG_ADMIN_URL = os.environ.get("MSGTRACK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]


def _pg_admin():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)


def _pg_url(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str | None]:
    """A migrated template database; each test gets a fast copy of it."""
    try:
        admin = _pg_admin()
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no server"
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI but unreachable at {PG_ADMIN_URL}: {exc}")
        yield None
        return
    name = f"msgtrack_tmpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(_pg_url(name))
    migrate(engine)
    engine.dispose()
    yield name
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(params=BACKENDS)
def db_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_template: str | None
) -> Iterator[str]:
    """A fresh, migrated database of each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'home' / 'msgtrack.db'}"
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        yield url
        return
    if pg_template is None:
        pytest.skip(
            f"PostgreSQL not reachable at {PG_ADMIN_URL}: start one (see README, "
            "'Tests on PostgreSQL') or set MSGTRACK_TEST_PG"
        )
    name = f"msgtrack_t_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    try:
        yield _pg_url(name)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def env(home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for this test's msgtrack (in-process and for subprocesses)."""
    values = {
        "MSGTRACK_HOME": str(home),
        "MSGTRACK_DB": db_url,
        "MSGTRACK_FSYNC_INTERVAL": "0.05",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    full = dict(os.environ)
    full.update(values)
    full["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent.parent / "src"), *sys.path])
    return full


@pytest.fixture
def ctx(env: dict[str, str], home: Path) -> Iterator[Context]:
    """A Context on a fresh database of each backend, with signing keys generated."""
    settings = load_settings(home)
    KeyRing.generate().save(settings.keys_file)
    context = Context(settings)
    yield context
    context.close()
