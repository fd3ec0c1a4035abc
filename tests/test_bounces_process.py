"""Bounces recorded in the database, on SQLite and PostgreSQL: matching (signed VERP,
then the original Message-ID), message verdicts and counters, quarantine and denylist,
mailto unsubscriptions, and a maildir reader that never loses or double-counts."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from msgtrack.context import Context
from msgtrack.delivery.bounces.mailbox import PROCESSED, process_mailbox, process_maildir
from msgtrack.delivery.bounces.process import BounceProcessor
from msgtrack.storage import quarantine as qstore
from msgtrack.storage.schema import (
    bounces,
    delivery_indicators,
    domain_stats,
    messages,
    opt_outs,
    quarantines,
    unsubscriptions,
)
from msgtrack.storage.types import utcnow
from tests.factories import add_delivery, add_message, add_recipient
from tests.helpers import free_port, msgtrack, running, wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
PLACEHOLDER = b"aaaaaaaaaaaaaaaa"


def _setup(ctx: Context, emails: list[str]) -> tuple[int, dict[str, int]]:
    with ctx.engine.begin() as conn:
        d = add_delivery(conn)
        mids = {e: add_message(conn, d.id, add_recipient(conn, e), e) for e in emails}
    return d.id, mids


def _bounce(ctx: Context, fixture: str, message_id: int, delivery_id: int, rcpt: str) -> bytes:
    """A fixture addressed to a real message: its VERP token and its Message-ID."""
    data = (FIXTURES / fixture).read_bytes()
    data = data.replace(PLACEHOLDER, ctx.keyring.sign_verp(message_id).encode())
    data = data.replace(b"<1.1.msgtrack@", f"<{delivery_id}.{message_id}.msgtrack@".encode())
    return data.replace(b"nobody@example.com", rcpt.encode())


def _indicators(ctx: Context, delivery_id: int) -> dict[str, Any]:
    with ctx.engine.connect() as conn:
        row = (
            conn.execute(
                select(delivery_indicators).where(delivery_indicators.c.delivery_id == delivery_id)
            )
            .mappings()
            .one()
        )
    return dict(row)


def _message(ctx: Context, message_id: int) -> dict[str, Any]:
    with ctx.engine.connect() as conn:
        return dict(
            conn.execute(select(messages).where(messages.c.id == message_id)).mappings().one()
        )


def _maildir(root: Path, files: dict[str, bytes]) -> Path:
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / "new" / name).write_bytes(data)
    return root


def test_hard_bounce_fails_the_message_and_quarantines(ctx: Context, tmp_path: Path) -> None:
    did, mids = _setup(ctx, ["ann@example.com", "bob@example.com"])
    data = _bounce(
        ctx, "dsn_postfix_user_unknown.eml", mids["ann@example.com"], did, "ann@example.com"
    )
    before = _indicators(ctx, did)
    box = _maildir(tmp_path / "box", {"1.bounce": data})
    processor = BounceProcessor(ctx)
    assert process_maildir(box, processor.process) == 1
    assert processor.stats.matched == 1 and processor.stats.new_quarantines == 1
    m = _message(ctx, mids["ann@example.com"])
    assert (m["status"], m["failure_type"], m["failure_code"]) == ("failed", "hard", "user_unknown")
    assert "User unknown" in m["failure_reason"]
    after = _indicators(ctx, did)
    assert after["success"] == before["success"] - 1 and after["errors"] == before["errors"] + 1
    assert (after["hard_bounces"], after["soft_bounces"], after["new_quarantines"]) == (1, 0, 1)
    with ctx.engine.connect() as conn:
        q = conn.execute(select(quarantines)).mappings().all()
        sent = conn.execute(
            select(domain_stats.c.sent).where(domain_stats.c.delivery_id == did)
        ).scalar_one()
    assert [(r["address"], r["kind"], r["reason"]) for r in q] == [
        ("ann@example.com", "quarantine", "user_unknown")
    ]
    assert sent == 1  # bob's only
    assert not list((box / "new").iterdir())
    assert len(list((box / PROCESSED / "cur").iterdir())) == 1
    # The same message again (e.g. delivered twice): recognized, nothing moves.
    (box / "new" / "2.bounce").write_bytes(data)
    again = BounceProcessor(ctx)
    process_maildir(box, again.process)
    assert again.stats.duplicates == 1 and _indicators(ctx, did) == after


def test_crash_between_commit_and_move_is_harmless(ctx: Context, tmp_path: Path) -> None:
    did, mids = _setup(ctx, ["ann@example.com"])
    data = _bounce(ctx, "dsn_mailbox_full.eml", mids["ann@example.com"], did, "ann@example.com")
    box = _maildir(tmp_path / "box", {"1.bounce": data})

    def crash_before_commit(raw: bytes) -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        process_maildir(box, crash_before_commit)
    assert (box / "new" / "1.bounce").exists()  # not lost
    BounceProcessor(ctx).process(data)  # committed, then "killed" before the move
    counted = _indicators(ctx, did)
    assert counted["soft_bounces"] == 1
    processor = BounceProcessor(ctx)
    process_maildir(box, processor.process)
    assert processor.stats.duplicates == 1
    assert _indicators(ctx, did) == counted
    assert not (box / "new" / "1.bounce").exists()
    m = _message(ctx, mids["ann@example.com"])
    assert (m["status"], m["failure_type"], m["failure_code"]) == ("sent", "soft", "mailbox_full")


def test_bad_signature_is_unmatched_and_quarantines_nobody(ctx: Context) -> None:
    did, mids = _setup(ctx, ["ann@example.com"])
    good = ctx.keyring.sign_verp(mids["ann@example.com"])
    forged = ("b" if good[0] != "b" else "c") + good[1:]
    data = _bounce(
        ctx, "dsn_postfix_user_unknown.eml", mids["ann@example.com"], did, "ann@example.com"
    ).replace(good.encode(), forged.encode())
    processor = BounceProcessor(ctx)
    processor.process(data)
    assert processor.stats.unmatched == 1
    with ctx.engine.connect() as conn:
        row = conn.execute(select(bounces)).mappings().one()
        assert conn.execute(select(quarantines)).first() is None
    assert (row["matched"], row["match"], row["reason"]) == (
        False,
        "bad VERP signature",
        "user_unknown",
    )
    assert _message(ctx, mids["ann@example.com"])["status"] == "sent"


def test_message_id_fallback_rejected_and_complaint(ctx: Context) -> None:
    did, mids = _setup(ctx, ["ann@example.com", "bob@isp.example", "cy@example.org"])
    processor = BounceProcessor(ctx)
    # No VERP address at all: the original Message-ID matches.
    no_verp = _bounce(ctx, "text_exim_mailbox_full.eml", mids["ann@example.com"], did, "x")
    no_verp = no_verp.replace(b"bounce+", b"news-")
    processor.process(no_verp)
    assert _message(ctx, mids["ann@example.com"])["failure_code"] == "mailbox_full"
    # A policy refusal: recorded, never quarantined.
    processor.process(_bounce(ctx, "dsn_spamhaus_rejected.eml", mids["cy@example.org"], did, "x"))
    assert _message(ctx, mids["cy@example.org"])["failure_code"] == "rejected"
    # A complaint: counted, per domain too, and the address is denylisted.
    processor.process(_bounce(ctx, "arf_complaint.eml", mids["bob@isp.example"], did, "x"))
    assert processor.stats.matched == 3
    counters = _indicators(ctx, did)
    assert (counters["complaints"], counters["new_quarantines"]) == (1, 1)
    with ctx.engine.connect() as conn:
        listed = [q.as_dict() for q in qstore.active_quarantines(conn, utcnow())]
        complaints = conn.execute(
            select(domain_stats.c.complaints).where(
                domain_stats.c.delivery_id == did, domain_stats.c.domain == "isp.example"
            )
        ).scalar_one()
    assert [(q["address"], q["kind"]) for q in listed] == [("bob@isp.example", "denylist")]
    assert complaints == 1


def test_mailto_unsubscription(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    did, mids = _setup(ctx, ["ann@example.com"])
    mid = mids["ann@example.com"]
    token = ctx.keyring.sign_verp(mid)
    data = (
        f"From: ann@example.com\r\nTo: unsubscribe@msgtrack.localhost\r\n"
        f"Subject: unsubscribe-{token}\r\nMessage-ID: <u1@example.com>\r\n\r\nplease\r\n"
    ).encode()
    monkeypatch.setattr(
        ctx,
        "settings",
        ctx.settings.__class__(
            **{**ctx.settings.__dict__, "unsubscribe_mailbox": "unsubscribe@msgtrack.localhost"}
        ),
    )
    processor = BounceProcessor(ctx)
    processor.process(data)
    processor.process(data)
    assert processor.stats.unsubscriptions == 1 and processor.stats.duplicates == 1
    with ctx.engine.connect() as conn:
        assert conn.execute(select(opt_outs.c.source)).scalar_one() == "mailto"
        assert conn.execute(select(unsubscriptions.c.message_id)).scalar_one() == mid
    assert _indicators(ctx, did)["unsubscriptions"] == 1


def test_policy_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from msgtrack.config import load_settings

    monkeypatch.setenv("MSGTRACK_QUARANTINE_SOFT_ERRORS", "3")
    monkeypatch.setenv("MSGTRACK_QUARANTINE_SOFT_INTERVAL", "3600")
    monkeypatch.setenv("MSGTRACK_QUARANTINE_MAILBOX_FULL_DAYS", "7")
    policy = qstore.QuarantinePolicy.from_settings(load_settings())
    assert policy == qstore.QuarantinePolicy(3, timedelta(hours=1), timedelta(days=7))


def test_soft_errors_quarantine_after_n_spaced_errors(ctx: Context) -> None:
    policy = qstore.QuarantinePolicy(threshold=3, min_interval=timedelta(days=1))
    t0 = utcnow()
    addr = "Soft@Example.com"
    with ctx.engine.begin() as conn:
        results = [
            qstore.record_failure(
                conn, addr, "mailbox_full", "soft", t0 + timedelta(hours=h), policy
            )
            for h in (0, 1, 25, 26, 50)  # counted at 0, 25 and 50 hours
        ]
        assert results == [False, False, False, False, True]
        row = conn.execute(select(quarantines)).mappings().one()
        assert (row["address"], row["kind"], row["error_count"]) == (
            "soft@example.com",
            "quarantine",
            3,
        )
        assert row["expires_at"] is not None  # mailbox full: expires
        assert row["expires_at"] - (t0 + timedelta(hours=50)) == timedelta(days=30)
        # A later success clears it.
        assert qstore.clear_after_success(conn, ["soft@example.com"], t0 + timedelta(days=3)) == 1
        assert qstore.active_quarantines(conn, t0 + timedelta(days=3)) == []
        # A rejection never quarantines, a sure hard error at once, a release ends it.
        assert not qstore.record_failure(conn, "r@example.com", "rejected", "hard", t0, policy)
        assert qstore.record_failure(conn, "h@example.com", "invalid_domain", "hard", t0, policy)
        assert qstore.release(conn, "H@example.com", t0 + timedelta(seconds=1))
        assert not qstore.release(conn, "h@example.com", t0 + timedelta(seconds=2))
        actions = [h["action"] for h in qstore.history_of(conn, "soft@example.com")]
        assert actions == ["error", "error", "quarantine", "clear"]
        assert [h["action"] for h in qstore.history_of(conn, "h@example.com")] == [
            "quarantine",
            "release",
        ]


def test_cli_process_quarantine_and_messages(
    ctx: Context, env: dict[str, str], tmp_path: Path
) -> None:
    did, mids = _setup(ctx, ["ann@example.com", "bob@example.com"])
    box = _maildir(
        tmp_path / "box",
        {
            "1": _bounce(
                ctx, "dsn_postfix_user_unknown.eml", mids["ann@example.com"], did, "ann@example.com"
            )
        },
    )
    stats = json.loads(msgtrack(env, "bounces", "process", "--maildir", str(box), "--json").stdout)
    assert (stats["matched"], stats["hard"], stats["new_quarantines"]) == (1, 1, 1)
    listed = json.loads(msgtrack(env, "deliveries", "messages", str(did), "--json").stdout)
    by_email = {m["email"]: m for m in listed}
    assert {
        k: by_email["ann@example.com"][k] for k in ("status", "failure_reason", "failure_type")
    } == {"status": "failed", "failure_reason": "user_unknown", "failure_type": "hard"}
    assert by_email["bob@example.com"]["failure_reason"] is None
    quarantined = json.loads(msgtrack(env, "quarantine", "list", "--json").stdout)
    assert [q["address"] for q in quarantined] == ["ann@example.com"]
    report = json.loads(msgtrack(env, "bounces", "report", str(did), "--json").stdout)
    assert (report["hard_bounces"], report["hard_bounce_rate"], report["new_quarantines"]) == (
        1,
        0.5,
        1,
    )
    assert report["by_reason"] == {"user_unknown": 1}
    assert report["by_domain"] == [
        {"domain": "example.com", "errors": 1, "by_reason": {"user_unknown": 1}}
    ]
    texts = json.loads(msgtrack(env, "bounces", "texts", "--json").stdout)
    assert [(t["count"], t["reason"]) for t in texts] == [(1, "user_unknown")]
    assert "<address>" in texts[0]["text"] and "ann@example.com" in texts[0]["first"]
    msgtrack(env, "quarantine", "release", "ann@example.com")
    history = json.loads(msgtrack(env, "quarantine", "history", "ann@example.com", "--json").stdout)
    assert [h["action"] for h in history] == ["quarantine", "release"]
    assert json.loads(msgtrack(env, "quarantine", "list", "--json").stdout) == []
    assert msgtrack(env, "quarantine", "release", "ann@example.com", check=False).returncode == 1
    shutil.rmtree(box)


def test_serve_reads_the_bounce_mailbox(ctx: Context, env: dict[str, str], tmp_path: Path) -> None:
    """``msgtrack serve`` with MSGTRACK_BOUNCE_MAILBOX reads it by itself, pass after
    pass: a bounce that arrives while it runs is recorded and moved too."""
    did, mids = _setup(ctx, ["ann@example.com", "bob@example.com"])
    ann, bob = mids["ann@example.com"], mids["bob@example.com"]
    fixture = "dsn_postfix_user_unknown.eml"
    box = _maildir(tmp_path / "box", {"1.ann": _bounce(ctx, fixture, ann, did, "ann@example.com")})
    env = {**env, "MSGTRACK_BOUNCE_MAILBOX": str(box), "MSGTRACK_BOUNCE_SCAN_INTERVAL": "0.2"}
    port = free_port()
    with running(env, "serve", "--port", str(port), port=port, output=tmp_path / "serve.log"):
        assert wait_for(lambda: _message(ctx, ann)["status"] == "failed", 30)
        assert _message(ctx, bob)["status"] == "sent"
        (box / "new" / "2.bob").write_bytes(_bounce(ctx, fixture, bob, did, "bob@example.com"))
        assert wait_for(lambda: _message(ctx, bob)["status"] == "failed", 30)
        assert wait_for(lambda: not any((box / "new").iterdir()), 30)
    assert sorted(p.name for p in (box / PROCESSED / "cur").iterdir()) == [
        "1.ann:2,S",
        "2.bob:2,S",
    ]
    assert _indicators(ctx, did)["hard_bounces"] == 2


def test_serve_keeps_serving_when_the_bounce_mailbox_fails(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A mailbox that cannot be read is logged at each pass; the rest of serve goes on."""
    env = {
        **env,
        "MSGTRACK_BOUNCE_MAILBOX": str(tmp_path / "missing"),
        "MSGTRACK_BOUNCE_SCAN_INTERVAL": "0.2",
    }
    port = free_port()
    log = tmp_path / "serve.log"
    with running(env, "serve", "--port", str(port), port=port, output=log):
        assert wait_for(lambda: "bounce mailbox pass failed" in log.read_text(errors="replace"), 30)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    assert "no maildir at" in log.read_text(errors="replace")


def test_bounce_mailbox_setting_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="imaps:// or a pop3s://"):
        process_mailbox("imap://bounces:secret@127.0.0.1/INBOX", lambda data: None)
    with pytest.raises(ValueError, match="no maildir at"):
        process_mailbox(str(tmp_path / "missing"), lambda data: None)
    box = _maildir(
        tmp_path / "box", {"1.ooo": (FIXTURES / "autoreply_out_of_office.eml").read_bytes()}
    )
    assert process_mailbox(str(box), lambda data: None) == 1


def test_bounces_process_reads_the_configured_mailbox(
    ctx: Context, env: dict[str, str], tmp_path: Path
) -> None:
    """Without --maildir/--imap/--pop3, ``bounces process`` reads MSGTRACK_BOUNCE_MAILBOX."""
    did, mids = _setup(ctx, ["ann@example.com"])
    ann = mids["ann@example.com"]
    data = _bounce(ctx, "dsn_postfix_user_unknown.eml", ann, did, "ann@example.com")
    box = _maildir(tmp_path / "box", {"1.ann": data})
    missing = msgtrack(env, "bounces", "process", check=False)
    assert missing.returncode == 2 and "MSGTRACK_BOUNCE_MAILBOX" in missing.stderr
    configured = {**env, "MSGTRACK_BOUNCE_MAILBOX": str(box)}
    stats = json.loads(msgtrack(configured, "bounces", "process", "--json").stdout)
    assert (stats["read"], stats["matched"], stats["hard"]) == (1, 1, 1)
    assert _message(ctx, ann)["status"] == "failed"
    bad = {**env, "MSGTRACK_BOUNCE_MAILBOX": "imap://bounces:secret@127.0.0.1/INBOX"}
    refused = msgtrack(bad, "bounces", "process", check=False)
    assert refused.returncode == 2 and "imaps://" in refused.stderr
