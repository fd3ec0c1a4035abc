"""Alembic environment: runs against the engine msgtrack hands over (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from msgtrack.storage.db import make_engine
from msgtrack.storage.schema import metadata

config = context.config
engine = config.attributes.get("engine") or make_engine(
    config.get_main_option("sqlalchemy.url") or ""
)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
