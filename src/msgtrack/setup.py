"""Making a home ready: schema at the newest version and signing keys present."""

from __future__ import annotations

from sqlalchemy import inspect, text

from msgtrack.context import Context
from msgtrack.links.sign import KeyRing
from msgtrack.storage.db import alembic_config, migrate


def head_revision(ctx: Context) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(ctx.engine)).get_current_head()


def schema_is_current(ctx: Context) -> bool:
    with ctx.engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return current == head_revision(ctx)


def ensure_ready(ctx: Context) -> bool:
    """Migrate and create keys when needed; True when anything was created."""
    created = False
    ctx.settings.home.mkdir(parents=True, exist_ok=True)
    if not schema_is_current(ctx):
        migrate(ctx.engine)
        created = True
    if not ctx.settings.keys_file.exists():
        KeyRing.generate().save(ctx.settings.keys_file)
        ctx.reload_keyring()
        created = True
    return created
