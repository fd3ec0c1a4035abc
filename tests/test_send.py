"""The send run on both databases: outbox and a real aiosmtpd server; statuses, reasons,
retries, counters, the VERP envelope sender, the claim and its lease."""

from __future__ import annotations

import dataclasses
import email
from datetime import timedelta
from email import policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from msgtrack.context import Context
from msgtrack.delivery.analyse import prepare_delivery
from msgtrack.delivery.create import create_delivery
from msgtrack.delivery.send import (
    AlreadySending,
    LeaseLost,
    SendError,
    SendReport,
    send_delivery,
)
from msgtrack.delivery.transports import OutboxTransport, SmtpTransport, TransportError
from msgtrack.storage import messages as store
from msgtrack.storage.recipients import import_recipients_csv
from msgtrack.storage.schema import deliveries, delivery_indicators, domain_stats, messages
from msgtrack.storage.types import utcnow
from msgtrack.tracking import snapshot
from tests.test_transports import Mailbox, smtp_server

HTML = """<html><head><title>News</title></head>
<body><p>Hello {{ recipient.first_name }}</p>
<p><a href="https://shop.example/products">Products</a></p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"""
TEXT = "Hello {{ recipient.first_name }}: https://shop.example/products\n"


def make_delivery(ctx: Context, tmp_path: Path, emails: list[str], **kwargs: Any) -> int:
    """Recipients imported from a CSV file, and a delivery to all of them (a draft)."""
    csv_file = tmp_path / "recipients.csv"
    lines = ["email,first_name"] + [f"{e},{e.split('@')[0].title()}" for e in emails]
    csv_file.write_text("\n".join(lines) + "\n")
    report = import_recipients_csv(ctx, csv_file)
    assert report.imported == len(emails)
    return create_delivery(
        ctx,
        name="News",
        subject="Hello {{ recipient.first_name }}",
        html=kwargs.get("html", HTML),
        text=TEXT,
    )


def rows(ctx: Context, delivery_id: int) -> dict[str, dict[str, Any]]:
    """The delivery's messages by address."""
    with ctx.engine.connect() as conn:
        result = conn.execute(select(messages).where(messages.c.delivery_id == delivery_id))
        return {r["email"]: dict(r) for r in result.mappings()}


def delivery_row(ctx: Context, delivery_id: int) -> dict[str, Any]:
    with ctx.engine.connect() as conn:
        return dict(
            conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).mappings().one()
        )


def indicators(ctx: Context, delivery_id: int) -> tuple[dict[str, Any], dict[str, int]]:
    """(delivery_indicators row, domain → sent)."""
    with ctx.engine.connect() as conn:
        ind = (
            conn.execute(
                select(delivery_indicators).where(delivery_indicators.c.delivery_id == delivery_id)
            )
            .mappings()
            .one()
        )
        domains = conn.execute(
            select(domain_stats.c.domain, domain_stats.c.sent).where(
                domain_stats.c.delivery_id == delivery_id
            )
        ).all()
    return dict(ind), {d: int(n) for d, n in domains}


def verp_message_id(ctx: Context, address: str) -> int:
    local, _, domain = address.partition("@")
    assert local.startswith("bounce+") and domain == ctx.settings.bounce_domain
    return ctx.keyring.verify_verp(local[len("bounce+") :])


# -- outbox ------------------------------------------------------------------------


def test_send_to_outbox(ctx: Context, tmp_path: Path) -> None:
    emails = ["ann@a.example", "ben@b.example", "cat@a.example", "dan@c.example"]
    delivery_id = make_delivery(ctx, tmp_path, emails)
    outbox = tmp_path / "outbox"
    transport = OutboxTransport(outbox)
    transport.batch_size = 3  # two batches
    seen: list[tuple[int, int]] = []

    report = send_delivery(ctx, delivery_id, transport, progress=lambda d, t: seen.append((d, t)))

    assert (report.state, report.sent, report.sent_now, report.failed, report.pending) == (
        "sent",
        4,
        4,
        0,
        0,
    )
    assert seen == [(0, 4), (3, 4), (4, 4)]
    by_email = rows(ctx, delivery_id)
    files = sorted(p.name for p in outbox.iterdir())
    assert files == sorted(f"{delivery_id}-{m['id']}.eml" for m in by_email.values())
    for address, m in by_email.items():
        assert (m["status"], m["attempts"], m["failure_type"]) == ("sent", 1, None)
        assert m["sent_at"] is not None
        raw = (outbox / f"{delivery_id}-{m['id']}.eml").read_bytes()
        parsed = email.message_from_bytes(raw, policy=policy.default)
        assert verp_message_id(ctx, parsed["Return-Path"].strip("<>")) == m["id"]
        assert parsed["Delivered-To"] == address and parsed["To"].addresses[0].addr_spec == address
        envelope_len = raw.index(b"\r\n", raw.index(b"Delivered-To:")) + 2
        assert m["size_bytes"] == len(raw) - envelope_len
    ind, domains = indicators(ctx, delivery_id)
    assert (ind["success"], ind["errors"]) == (4, 0)
    assert domains == {"a.example": 2, "b.example": 1, "c.example": 1}
    d = delivery_row(ctx, delivery_id)
    assert d["state"] == "sent" and d["sent_at"] is not None and d["started_at"] is not None
    assert d["send_run"] is None and d["send_lease_until"] is None
    # The tracked URLs were published for the tracking server.
    published = snapshot.load(ctx.settings.snapshots_dir, delivery_id)
    assert published is not None
    assert "https://shop.example/products" in {u.url for u in published}
    assert {"open", "opt-out", "mirror", "click"} <= {u.type for u in published}

    # A finished delivery is not sent again.
    again = send_delivery(ctx, delivery_id, OutboxTransport(tmp_path / "outbox2"))
    assert (again.state, again.sent, again.sent_now) == ("sent", 4, 0)
    assert not (tmp_path / "outbox2").exists()
    assert delivery_row(ctx, delivery_id)["started_at"] == d["started_at"]


# -- SMTP: what the relay answers decides ------------------------------------------

OK = ["ok1@a.example", "ok2@b.example", "seed@a.example"]
HARD_RCPT = "gone@a.example"
SOFT_RCPT = "busy@b.example"  # 450 at RCPT, every time
LATE_RCPT = "late@b.example"  # 451 at RCPT twice, then accepted
HARD_DATA = "big@c.example"


def test_smtp_statuses_reasons_retries_and_counters(ctx: Context, tmp_path: Path) -> None:
    ctx.settings = dataclasses.replace(ctx.settings, retry_delays=(0.0, 0.0))
    delivery_id = make_delivery(ctx, tmp_path, [*OK, HARD_RCPT, SOFT_RCPT, LATE_RCPT, HARD_DATA])
    prepare_delivery(ctx, delivery_id)
    with ctx.engine.begin() as conn:  # a seed address: sent, but not counted as a success
        conn.execute(update(messages).where(messages.c.email == "seed@a.example").values(seed=True))
    mailbox = Mailbox(
        rcpt_replies={
            HARD_RCPT: "550 5.1.1 <gone@a.example>: Recipient address rejected: User unknown",
            SOFT_RCPT: "450 4.2.1 <busy@b.example>: Mailbox busy",
            LATE_RCPT: "451 4.7.1 <late@b.example>: Greylisted, try again",
        },
        data_replies={HARD_DATA: "552 5.3.4 Message size exceeds fixed maximum message size"},
    )
    with smtp_server(mailbox) as server:

        def send() -> SendReport:
            return send_delivery(
                ctx, delivery_id, SmtpTransport("127.0.0.1", server.port, concurrency=2, timeout=10)
            )

        first = send()
        m = rows(ctx, delivery_id)
        assert {e: m[e]["status"] for e in m} == {
            **{e: "sent" for e in OK},
            HARD_RCPT: "failed",
            SOFT_RCPT: "pending",
            LATE_RCPT: "pending",
            HARD_DATA: "failed",
        }
        assert (m[HARD_RCPT]["failure_type"], m[HARD_RCPT]["failure_reason"]) == (
            "hard",
            "550 5.1.1 <gone@a.example>: Recipient address rejected: User unknown",
        )
        assert (m[HARD_DATA]["failure_type"], m[HARD_DATA]["failure_reason"]) == (
            "hard",
            "552 5.3.4 Message size exceeds fixed maximum message size",
        )
        assert m[SOFT_RCPT]["failure_type"] == "soft" and m[SOFT_RCPT]["attempts"] == 1
        assert m[SOFT_RCPT]["failure_reason"] == "450 4.2.1 <busy@b.example>: Mailbox busy"
        assert m[SOFT_RCPT]["next_attempt_at"] is not None
        assert (first.state, first.sent, first.failed, first.soft_pending) == ("sending", 3, 2, 2)
        assert (first.sent_now, first.failed_now, first.deferred_now) == (3, 2, 2)
        assert delivery_row(ctx, delivery_id)["send_run"] is None  # released for the next run
        ind, domains = indicators(ctx, delivery_id)
        assert (ind["success"], ind["errors"]) == (2, 2)  # the seed is not a success
        assert domains == {"a.example": 2, "b.example": 1}

        second = send()  # both retried once more, still refused
        m = rows(ctx, delivery_id)
        assert (m[SOFT_RCPT]["status"], m[SOFT_RCPT]["attempts"]) == ("pending", 2)
        assert (second.state, second.sent_now, second.deferred_now) == ("sending", 0, 2)

        del mailbox.rcpt_replies[LATE_RCPT]  # the greylisting is over
        third = send()  # last attempt: one accepted, one fails for good
    m = rows(ctx, delivery_id)
    assert (m[LATE_RCPT]["status"], m[LATE_RCPT]["attempts"], m[LATE_RCPT]["failure_type"]) == (
        "sent",
        3,
        None,
    )
    assert (m[SOFT_RCPT]["status"], m[SOFT_RCPT]["failure_type"], m[SOFT_RCPT]["attempts"]) == (
        "failed",
        "soft",
        3,
    )
    assert m[SOFT_RCPT]["failure_reason"] == "450 4.2.1 <busy@b.example>: Mailbox busy"
    assert (third.state, third.sent, third.failed, third.soft_pending, third.pending) == (
        "sent",
        4,
        3,
        0,
        0,
    )
    ind, domains = indicators(ctx, delivery_id)
    assert (ind["success"], ind["errors"]) == (3, 3)
    assert domains == {"a.example": 2, "b.example": 2}

    # Each accepted recipient arrived exactly once, from its own VERP return path.
    assert sorted(mailbox.recipients()) == sorted([*OK, LATE_RCPT])
    for received in mailbox.received:
        (rcpt,) = received.rcpt_tos
        assert verp_message_id(ctx, received.mail_from) == m[rcpt]["id"]
        parsed = email.message_from_bytes(received.content, policy=policy.default)
        assert parsed["Subject"] == f"Hello {rcpt.split('@')[0].title()}"
    # Two connections per run at most: one connection carries many messages.
    assert len(mailbox.connections) <= 6


def test_refused_mail_from_fails_the_run_and_the_recipients_stay_pending(
    ctx: Context, tmp_path: Path
) -> None:
    emails = ["ann@a.example", "ben@b.example", "cat@a.example"]
    delivery_id = make_delivery(ctx, tmp_path, emails)
    refusing = Mailbox(mail_reply="553 5.7.1 Sender address rejected: not owned by user")
    with smtp_server(refusing) as server:
        with pytest.raises(TransportError, match="MAIL FROM.*553 5.7.1") as info:
            send_delivery(ctx, delivery_id, SmtpTransport("127.0.0.1", server.port, timeout=10))
    report = info.value.report
    assert isinstance(report, SendReport)
    assert (report.state, report.pending, report.sent, report.failed) == ("sending", 3, 0, 0)
    m = rows(ctx, delivery_id)
    assert {(r["status"], r["attempts"], r["failure_type"]) for r in m.values()} == {
        ("pending", 0, None)
    }
    d = delivery_row(ctx, delivery_id)
    assert d["send_run"] is None and "553 5.7.1" in d["last_error"]
    assert indicators(ctx, delivery_id)[0]["errors"] == 0

    # The relay is fixed: the same delivery resumes and everyone gets it.
    mailbox = Mailbox()
    with smtp_server(mailbox) as server:
        report = send_delivery(
            ctx, delivery_id, SmtpTransport("127.0.0.1", server.port, timeout=10)
        )
    assert (report.state, report.sent) == ("sent", 3)
    assert sorted(mailbox.recipients()) == sorted(emails)
    assert delivery_row(ctx, delivery_id)["last_error"] is None


def test_connection_lost_during_data_makes_that_message_unknown(
    ctx: Context, tmp_path: Path
) -> None:
    emails = ["ann@a.example", "ben@b.example", "cat@a.example", "dan@a.example"]
    delivery_id = make_delivery(ctx, tmp_path, emails)
    dropping = Mailbox(drop_in_data={"ben@b.example"})
    with smtp_server(dropping) as server:
        with pytest.raises(TransportError, match="DATA"):
            send_delivery(
                ctx, delivery_id, SmtpTransport("127.0.0.1", server.port, concurrency=1, timeout=10)
            )
    m = rows(ctx, delivery_id)
    assert {e: r["status"] for e, r in m.items()} == {
        "ann@a.example": "sent",
        "ben@b.example": "unknown",
        "cat@a.example": "pending",
        "dan@a.example": "pending",
    }
    assert "may have been accepted" in m["ben@b.example"]["failure_reason"]
    mailbox = Mailbox()
    with smtp_server(mailbox) as server:
        report = send_delivery(
            ctx, delivery_id, SmtpTransport("127.0.0.1", server.port, timeout=10)
        )
    assert (report.state, report.sent, report.unknown) == ("sent", 3, 1)
    assert sorted(mailbox.recipients()) == [
        "cat@a.example",
        "dan@a.example",
    ]  # ben is never re-sent


# -- the claim -----------------------------------------------------------------------


def test_a_live_run_holds_the_delivery_and_a_crashed_one_is_taken_over(
    ctx: Context, tmp_path: Path
) -> None:
    emails = ["ann@a.example", "ben@b.example", "cat@a.example"]
    delivery_id = make_delivery(ctx, tmp_path, emails)
    prepare_delivery(ctx, delivery_id)
    ids = {e: r["id"] for e, r in rows(ctx, delivery_id).items()}
    now = utcnow()
    with ctx.engine.begin() as conn:  # another run is sending, and has ann in flight
        assert store.claim_send(
            conn, delivery_id, "other-run", now=now, lease_until=now + timedelta(seconds=60)
        )
        assert store.mark_in_flight(conn, delivery_id, [ids["ann@a.example"]]) == 1
    outbox = tmp_path / "outbox"
    with pytest.raises(AlreadySending):
        send_delivery(ctx, delivery_id, OutboxTransport(outbox))
    assert not outbox.exists()

    with ctx.engine.begin() as conn:  # ... and then it crashed: its lease runs out
        conn.execute(update(deliveries).values(send_lease_until=now - timedelta(seconds=1)))
    report = send_delivery(ctx, delivery_id, OutboxTransport(outbox))
    assert (report.state, report.sent, report.unknown, report.newly_unknown) == ("sent", 2, 1, 1)
    m = rows(ctx, delivery_id)
    assert m["ann@a.example"]["status"] == "unknown"
    assert sorted(p.name for p in outbox.iterdir()) == sorted(
        f"{delivery_id}-{ids[e]}.eml" for e in ("ben@b.example", "cat@a.example")
    )


def test_a_run_that_lost_its_lease_stops_before_sending_more(ctx: Context, tmp_path: Path) -> None:
    emails = [f"p{i}@a.example" for i in range(6)]
    delivery_id = make_delivery(ctx, tmp_path, emails)
    transport = OutboxTransport(tmp_path / "outbox")
    transport.batch_size = 2

    def steal(done: int, total: int) -> None:
        if done == 2:  # another run takes the delivery over after the first batch
            with ctx.engine.begin() as conn:
                conn.execute(
                    update(deliveries).values(
                        send_run="thief", send_lease_until=utcnow() + timedelta(minutes=5)
                    )
                )

    with pytest.raises(LeaseLost):
        send_delivery(ctx, delivery_id, transport, progress=steal)
    statuses = sorted(r["status"] for r in rows(ctx, delivery_id).values())
    assert statuses == ["pending"] * 4 + ["sent"] * 2
    assert len(list((tmp_path / "outbox").iterdir())) == 2
    assert delivery_row(ctx, delivery_id)["send_run"] == "thief"  # not released by the loser


def test_a_message_that_cannot_be_rendered_fails_alone(ctx: Context, tmp_path: Path) -> None:
    html = HTML.replace(
        "<p>Hello", "{% if recipient.first_name == 'Boom' %}{{ 'x' * 10**10 }}{% endif %}<p>Hello"
    )
    delivery_id = make_delivery(ctx, tmp_path, ["ann@a.example", "boom@b.example"], html=html)
    outbox = tmp_path / "outbox"
    report = send_delivery(ctx, delivery_id, OutboxTransport(outbox))
    assert (report.state, report.sent, report.ignored, report.failed) == ("sent", 1, 1, 0)
    m = rows(ctx, delivery_id)
    boom = m["boom@b.example"]
    assert (boom["status"], boom["failure_type"], boom["attempts"]) == ("failed", "ignored", 0)
    assert "size" in boom["failure_reason"]
    assert [p.name for p in outbox.iterdir()] == [f"{delivery_id}-{m['ann@a.example']['id']}.eml"]
    ind, domains = indicators(ctx, delivery_id)
    assert (ind["success"], ind["errors"]) == (1, 1)
    assert domains == {"a.example": 1}


def test_only_a_sendable_delivery_is_sent(ctx: Context, tmp_path: Path) -> None:
    with pytest.raises(LookupError, match="no delivery 999"):
        send_delivery(ctx, 999, OutboxTransport(tmp_path / "outbox"))
    delivery_id = make_delivery(ctx, tmp_path, ["ann@a.example"])
    with ctx.engine.begin() as conn:
        conn.execute(update(deliveries).values(state="stopped"))
    with pytest.raises(SendError, match="stopped"):
        send_delivery(ctx, delivery_id, OutboxTransport(tmp_path / "outbox"))
    assert not (tmp_path / "outbox").exists()
