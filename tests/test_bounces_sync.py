"""Synchronous errors qualified with the bounce rules at send time (a real SMTP server
on 127.0.0.1): the reason is stored beside the full reply, a sure hard error
quarantines, a refusal does not, a success clears counted soft errors, and the next
delivery's analysis excludes the quarantined address."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from msgtrack.context import Context
from msgtrack.delivery.analyse import prepare_delivery
from msgtrack.delivery.create import create_delivery
from msgtrack.delivery.send import send_delivery
from msgtrack.delivery.transports import SmtpTransport
from msgtrack.storage import quarantine as qstore
from msgtrack.storage.schema import quarantines
from msgtrack.storage.types import utcnow
from tests.test_send import indicators, make_delivery, rows
from tests.test_transports import Mailbox, smtp_server

GONE = "gone@a.example"
SPAM = "spam@b.example"
OK = "ok@c.example"
GONE_REPLY = "550 5.1.1 <gone@a.example>: Recipient address rejected: User unknown"
SPAM_REPLY = "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org"


def test_sync_errors_are_qualified_and_quarantine(ctx: Context, tmp_path: Path) -> None:
    with ctx.engine.begin() as conn:  # one soft error counted earlier for OK
        qstore.record_failure(conn, OK, "mailbox_full", "soft", utcnow(), qstore.QuarantinePolicy())
    delivery_id = make_delivery(ctx, tmp_path, [GONE, SPAM, OK])
    mailbox = Mailbox(rcpt_replies={GONE: GONE_REPLY, SPAM: SPAM_REPLY})
    with smtp_server(mailbox) as server:
        send_delivery(ctx, delivery_id, SmtpTransport("127.0.0.1", server.port, timeout=10))
    m = rows(ctx, delivery_id)
    assert (m[GONE]["failure_code"], m[GONE]["failure_reason"]) == ("user_unknown", GONE_REPLY)
    assert (m[SPAM]["failure_code"], m[SPAM]["failure_reason"]) == ("rejected", SPAM_REPLY)
    assert (m[OK]["status"], m[OK]["failure_code"]) == ("sent", None)
    ind, _ = indicators(ctx, delivery_id)
    assert (ind["hard_bounces"], ind["new_quarantines"], ind["errors"]) == (2, 1, 2)
    with ctx.engine.connect() as conn:
        q = {
            r["address"]: (r["kind"], r["error_count"])
            for r in conn.execute(select(quarantines)).mappings()
        }
        assert [h["action"] for h in qstore.history_of(conn, OK)] == ["error", "clear"]
    assert q == {GONE: ("quarantine", 1), OK: ("watch", 0)}  # SPAM: never quarantined
    # The next delivery leaves the quarantined address out, and counts it.
    second = create_delivery(ctx, name="Again", subject="Hi", html=None, text="Hello")
    result = prepare_delivery(ctx, second)
    assert (result.rejected_quarantined, result.to_deliver) == (1, 2)
