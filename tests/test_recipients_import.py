"""Recipients import from CSV, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from msgtrack.context import Context
from msgtrack.storage.recipients import (
    RecipientsFileError,
    import_recipients_csv,
    recipient_by_email,
)
from msgtrack.storage.schema import opt_outs, quarantines, recipients


def write(tmp_path: Path, text: str, name: str = "people.csv", bom: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def rows(ctx: Context) -> dict[str, dict]:
    with ctx.engine.connect() as conn:
        return {r["email_key"]: dict(r) for r in conn.execute(select(recipients)).mappings()}


def test_import_fields_formats_and_bom(ctx: Context, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Email,First_Name,last_name,email_format,Customer ID,city\r\n"
        "alice@example.com,Alice,Able,,c1,Paris\r\n"
        "Bob@Example.COM,Bob,Baker,TEXT,c2,\r\n"
        "carol@example.org,Carol,,html,c3,Lyon\r\n"
        "\r\n"
        'dave@example.net,"Dave, Jr.",Dunn,html,"c""4",Nice\r\n',
        bom=True,
    )
    report = import_recipients_csv(ctx, path)
    assert (report.imported, report.updated, report.rejected) == (4, 0, [])
    got = rows(ctx)
    assert set(got) == {
        "alice@example.com",
        "bob@example.com",
        "carol@example.org",
        "dave@example.net",
    }
    alice = got["alice@example.com"]
    assert (alice["email"], alice["first_name"], alice["last_name"], alice["email_format"]) == (
        "alice@example.com",
        "Alice",
        "Able",
        "html",
    )
    assert json.loads(alice["fields"]) == {"Customer ID": "c1", "city": "Paris"}
    bob = got["bob@example.com"]
    assert bob["email"] == "Bob@example.com"  # local part as written, domain normalised
    assert bob["email_format"] == "text"
    assert got["carol@example.org"]["last_name"] is None
    dave = got["dave@example.net"]
    assert dave["first_name"] == "Dave, Jr."
    assert json.loads(dave["fields"])["Customer ID"] == 'c"4'


def test_rejects_invalid_duplicate_and_bad_format(ctx: Context, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "email,first_name,email_format\n"
        "alice@example.com,Alice,html\n"  # line 2
        "not-an-address,Nobody,html\n"  # line 3
        "ALICE@example.com,Again,html\n"  # line 4: duplicate, first row wins
        "erin@example.com,Erin,pdf\n"  # line 5: bad format
        ",Empty,html\n"  # line 6: no address
        "frank@example.com,Frank,html,extra\n"  # line 7: too many values
        "x@foo.test,Test,html\n"  # line 8: reserved domain
        "grace@example.com,Grace\n",  # line 9: short row is fine
    )
    report = import_recipients_csv(ctx, path)
    assert report.imported == 2 and report.updated == 0
    by_line = {line: (email, reason) for line, email, reason in report.rejected}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8]
    assert by_line[3][0] == "not-an-address" and "invalid address" in by_line[3][1]
    assert by_line[4] == (
        "ALICE@example.com",
        "duplicate address in this file (the first row wins)",
    )
    assert (
        by_line[5][0] == "erin@example.com"
        and "email_format" in by_line[5][1]
        and "'pdf'" in by_line[5][1]
    )
    assert by_line[6] == ("", "no email address")
    assert "more values" in by_line[7][1]
    assert by_line[8][0] == "x@foo.test"
    got = rows(ctx)
    assert set(got) == {"alice@example.com", "grace@example.com"}
    assert got["alice@example.com"]["first_name"] == "Alice"
    assert got["grace@example.com"]["email_format"] == "html"


def test_update_keeps_opt_out_and_quarantine(ctx: Context, tmp_path: Path) -> None:
    first = write(
        tmp_path,
        "email,first_name,last_name,email_format,tier\nalice@example.com,Alice,Able,html,gold\n",
        "a.csv",
    )
    assert import_recipients_csv(ctx, first).imported == 1
    now = datetime.now(UTC)
    rid = rows(ctx)["alice@example.com"]["id"]
    with ctx.engine.begin() as conn:
        conn.execute(insert(opt_outs).values(recipient_id=rid, source="form", created_at=now))
        conn.execute(
            insert(quarantines).values(
                address="alice@example.com",
                kind="quarantine",
                reason="user-unknown",
                created_at=now,
                updated_at=now,
            )
        )
    # Another file: different case, a new name, no last_name column, one new extra field.
    second = write(
        tmp_path,
        "EMAIL,first_name,email_format,city\nAlice@Example.com,Alicia,text,Paris\nbob@example.com,Bob,,\n",
        "b.csv",
    )
    report = import_recipients_csv(ctx, second)
    assert (report.imported, report.updated, report.rejected) == (1, 1, [])
    alice = rows(ctx)["alice@example.com"]
    assert alice["id"] == rid
    assert (alice["first_name"], alice["last_name"], alice["email_format"]) == (
        "Alicia",
        "Able",
        "text",
    )
    assert json.loads(alice["fields"]) == {"tier": "gold", "city": "Paris"}
    with ctx.engine.connect() as conn:
        assert conn.execute(select(opt_outs.c.recipient_id)).scalars().all() == [rid]
        assert conn.execute(select(quarantines.c.address)).scalars().all() == ["alice@example.com"]
        found = recipient_by_email(conn, "ALICE@example.COM")
    assert found is not None and found["id"] == rid


def test_many_rows_in_chunks(ctx: Context, tmp_path: Path) -> None:
    lines = ["email,first_name,n"] + [f"user{i}@example.com,User {i},{i}" for i in range(1200)]
    lines.insert(700, "user5@EXAMPLE.com,Dup,x")  # a duplicate in a later chunk
    path = write(tmp_path, "\n".join(lines) + "\n")
    report = import_recipients_csv(ctx, path)
    assert report.imported == 1200
    assert [(line, email) for line, email, _ in report.rejected] == [(701, "user5@EXAMPLE.com")]
    again = import_recipients_csv(ctx, path)
    assert (again.imported, again.updated, len(again.rejected)) == (0, 1200, 1)
    assert len(rows(ctx)) == 1200


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("first_name,last_name\nA,B\n", "no `email` column"),
        ("email,city,city\n", "twice"),
    ],
)
def test_unreadable_files_raise(ctx: Context, tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RecipientsFileError, match=message):
        import_recipients_csv(ctx, write(tmp_path, text))


def test_not_utf8_raises(ctx: Context, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("email,first_name\nzoe@example.com,Zoé\n".encode("latin-1"))
    with pytest.raises(UnicodeDecodeError):
        import_recipients_csv(ctx, path)
