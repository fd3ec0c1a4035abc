"""Users of the web UI: created with the real CLI, passwords only ever stored hashed."""

from __future__ import annotations

from sqlalchemy import select

from helpers import msgtrack
from msgtrack.context import Context
from msgtrack.storage.schema import users
from msgtrack.storage.users import authenticate


def _add(env: dict[str, str], name: str, password: str, check: bool = True):  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "msgtrack", "users", "add", name, "--password-stdin"],
        input=password + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def test_users_add_reads_the_password_from_stdin_and_stores_a_hash(
    env: dict[str, str], ctx: Context
) -> None:
    _add(env, "ada", "correct horse battery")
    with ctx.engine.connect() as conn:
        stored = conn.execute(select(users.c.name, users.c.password_hash)).all()
        assert [name for name, _ in stored] == ["ada"]
        assert stored[0][1].startswith("$argon2id$")
        assert "correct horse" not in stored[0][1]
        user = authenticate(conn, "ada", "correct horse battery")
        assert user is not None and user.name == "ada"
        assert authenticate(conn, "ada", "wrong password") is None
        assert authenticate(conn, "nobody", "correct horse battery") is None
    # Adding again sets a new password; the old one stops working.
    _add(env, "ada", "another long secret")
    with ctx.engine.connect() as conn:
        assert authenticate(conn, "ada", "correct horse battery") is None
        assert authenticate(conn, "ada", "another long secret") is not None
        assert len(conn.execute(select(users.c.id)).all()) == 1


def test_users_add_refuses_short_passwords_and_a_password_on_the_command_line(
    env: dict[str, str], ctx: Context
) -> None:
    short = _add(env, "bob", "short", check=False)
    assert short.returncode != 0 and "at least 8" in short.stderr
    no_stdin = msgtrack(env, "users", "add", "bob", check=False)
    assert no_stdin.returncode != 0 and "--password-stdin" in no_stdin.stderr
    with ctx.engine.connect() as conn:
        assert conn.execute(select(users.c.id)).first() is None
