"""The delivery's validity period bounds the retries of soft failures (issue 5): a retry
that would fall after the send start + validity is not scheduled (the failure is final at
once), and a run that starts after that instant gives up every soft failure still waiting,
keeping its reply. On both databases, through a real aiosmtpd relay."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from msgtrack.cli import main
from msgtrack.context import Context
from msgtrack.delivery.create import DeliveryError, create_delivery
from msgtrack.delivery.send import send_delivery
from msgtrack.delivery.transports import SmtpTransport
from msgtrack.storage.schema import deliveries
from msgtrack.storage.types import utcnow
from tests.test_send import delivery_row, indicators, make_delivery, rows
from tests.test_transports import Mailbox, smtp_server

OK = "ok@a.example"
BUSY = "busy@b.example"  # 450 at RCPT, every time
BUSY_REPLY = "450 4.2.1 <busy@b.example>: Mailbox busy"


def set_validity(ctx: Context, delivery_id: int, seconds: int) -> None:
    with ctx.engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id)
            .values(validity_seconds=seconds)
        )


def test_a_retry_after_the_validity_period_is_not_scheduled(ctx: Context, tmp_path: Path) -> None:
    ctx.settings = dataclasses.replace(ctx.settings, retry_delays=(3600.0,))
    delivery_id = make_delivery(ctx, tmp_path, [OK, BUSY])
    set_validity(ctx, delivery_id, 600)  # ten minutes; the first retry would be in an hour
    with smtp_server(Mailbox(rcpt_replies={BUSY: BUSY_REPLY})) as server:
        report = send_delivery(ctx, delivery_id, SmtpTransport("127.0.0.1", server.port))
    m = rows(ctx, delivery_id)
    assert (m[BUSY]["status"], m[BUSY]["failure_type"], m[BUSY]["failure_reason"]) == (
        "failed",
        "soft",
        BUSY_REPLY,
    )
    assert m[BUSY]["next_attempt_at"] is None and m[BUSY]["attempts"] == 1
    assert (report.state, report.sent, report.failed, report.soft_pending) == ("sent", 1, 1, 0)
    started = delivery_row(ctx, delivery_id)["started_at"]
    assert report.valid_until == started + timedelta(seconds=600)
    ind, _ = indicators(ctx, delivery_id)
    assert (ind["success"], ind["errors"]) == (1, 1)


def test_soft_failures_waiting_are_given_up_when_the_period_ends(
    ctx: Context, tmp_path: Path
) -> None:
    ctx.settings = dataclasses.replace(ctx.settings, retry_delays=(0.0, 0.0, 0.0))
    delivery_id = make_delivery(ctx, tmp_path, [OK, BUSY])
    mailbox = Mailbox(rcpt_replies={BUSY: BUSY_REPLY})
    with smtp_server(mailbox) as server:

        def send() -> object:
            return send_delivery(ctx, delivery_id, SmtpTransport("127.0.0.1", server.port))

        first = send()
        assert rows(ctx, delivery_id)[BUSY]["status"] == "pending"
        assert first.state == "sending" and first.soft_pending == 1  # type: ignore[attr-defined]
        # Two days later, past a one-day validity: the next run gives up before sending.
        with ctx.engine.begin() as conn:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id)
                .values(started_at=utcnow() - timedelta(days=2), validity_seconds=86400)
            )
        attempts = len(mailbox.connections)
        second = send()
    m = rows(ctx, delivery_id)
    assert (m[BUSY]["status"], m[BUSY]["failure_type"], m[BUSY]["failure_reason"]) == (
        "failed",
        "soft",
        BUSY_REPLY,
    )
    assert m[BUSY]["attempts"] == 1  # not tried again
    assert len(mailbox.connections) == attempts  # nothing was sent
    assert second.given_up_now == 1 and second.failed_now == 0  # type: ignore[attr-defined]
    assert second.state == "sent"  # type: ignore[attr-defined]
    ind, _ = indicators(ctx, delivery_id)
    assert (ind["success"], ind["errors"]) == (1, 1)
    assert mailbox.recipients() == [OK]


def test_validity_comes_from_the_settings_or_the_command(
    ctx: Context, env: dict[str, str], tmp_path: Path
) -> None:
    html = tmp_path / "news.html"
    html.write_text("<html><body><a href='https://shop.example/'>Shop</a></body></html>")
    default = create_delivery(ctx, name="Default", subject="Hi", html=html.read_text(), text=None)
    assert delivery_row(ctx, default)["validity_seconds"] == 5 * 86400
    short = create_delivery(
        ctx, name="Short", subject="Hi", html=html.read_text(), text=None, validity=7200
    )
    assert delivery_row(ctx, short)["validity_seconds"] == 7200
    with pytest.raises(DeliveryError):
        create_delivery(
            ctx, name="None", subject="Hi", html=html.read_text(), text=None, validity=0
        )
    runner = CliRunner()
    args = ["deliveries", "create", "--name", "Cli", "--subject", "Hi", "--html", str(html)]
    made = runner.invoke(main, [*args, "--validity", "36h", "--json"], env=env)
    assert made.exit_code == 0, made.output
    assert '"id"' in made.output
    bad = runner.invoke(main, [*args, "--validity", "soon"], env=env)
    assert bad.exit_code != 0 and "--validity" in bad.output
    env_args = ["deliveries", "create", "--name", "Env", "--subject", "Hi", "--html", str(html)]
    with_env = runner.invoke(main, env_args, env={**env, "MSGTRACK_DELIVERY_VALIDITY": "12h"})
    assert with_env.exit_code == 0, with_env.output
    with ctx.engine.connect() as conn:
        found = dict(
            conn.execute(
                deliveries.select().with_only_columns(
                    deliveries.c.name, deliveries.c.validity_seconds
                )
            ).all()
        )
    assert (found["Cli"], found["Env"], found["Default"]) == (36 * 3600, 12 * 3600, 5 * 86400)
