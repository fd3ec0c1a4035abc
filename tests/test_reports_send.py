"""The send-side reports (delivery summary, delivery statistics, non-deliverables and
bounces, delivery throughput) and the dashboard's errors, on SQLite and PostgreSQL, with
data made by the real paths: recipients imported, analysed (with exclusions), sent
through a real aiosmtpd server refusing some recipients with 5xx and 4xx, bounces and a
complaint read by the bounce processor, opens, clicks and unsubscriptions ingested from
the event log. Every number a report answers is compared with what this test counts
itself from the messages and from what it made happen.

The send clock is fixed (2024-03-30 23:20 UTC, advancing 13 minutes at each reading),
so sending crosses the switch to summer time of Europe/Paris (2024-03-31 01:00 UTC),
the zone the reports are shown in here.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, update

from factories import Delivery, ev, write_segment
from msgtrack.context import Context
from msgtrack.delivery import send as send_module
from msgtrack.delivery.analyse import prepare_delivery
from msgtrack.delivery.bounces.process import BounceProcessor
from msgtrack.delivery.create import create_delivery
from msgtrack.delivery.send import send_delivery
from msgtrack.delivery.transports import OutboxTransport, SmtpTransport
from msgtrack.ingest.loader import ingest_once
from msgtrack.storage import quarantine as qstore
from msgtrack.storage.auth import create_api_token
from msgtrack.storage.recipients import import_recipients_csv
from msgtrack.storage.schema import (
    deliveries,
    delivery_indicators,
    domain_aliases,
    messages,
    quarantine_history,
    tracked_urls,
)
from msgtrack.storage.users import set_user
from msgtrack.web.app import create_app
from test_transports import Mailbox, smtp_server
from test_web_api import PASSWORD, sign_in

PARIS = ZoneInfo("Europe/Paris")
CLOCK_START = datetime(2024, 3, 30, 23, 20, tzinfo=UTC)
CLOCK_STEP = timedelta(minutes=13)
FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
EVIL_NAME = "<script>alert('name')</script> News"
EVIL_DOMAIN = "<script>alert('dom')</script>"

# Address -> what the relay answers at RCPT (or at DATA for "cy").
RCPT = {
    "al@a.example": "550 5.1.1 <al@a.example>: Recipient address rejected: User unknown",
    "ava@a.example": "552 5.2.2 <ava@a.example>: Mailbox full, over quota",
    "bo@b.example": "450 4.2.1 <bo@b.example>: Mailbox busy, try again later",
    "bill@b.example": "450 4.2.1 <bill@b.example>: Mailbox busy, try again later",
    "gil@gmail.com": "550 5.1.1 The email account that you tried to reach does not exist",
    "eva@evil.example": "550 5.1.1 <eva@evil.example>: User unknown",
}
DATA = {"cy@c.example": "554 5.7.1 Message rejected as spam by content filter"}
ACCEPTED = [
    "ann@a.example",
    "amy@a.example",
    "ben@b.example",
    "bea@b.example",  # a seed
    "cat@c.example",
    "gus@googlemail.com",  # an alias of gmail.com
    "eve@evil.example",  # its domain an alias of a name full of markup
]
QUARANTINED = "cal@c.example"  # quarantined before the analysis: excluded
EMAILS = [*ACCEPTED, *RCPT, *DATA, QUARANTINED]
ALIASES = {"googlemail.com": "gmail.com", "evil.example": EVIL_DOMAIN}

HTML = """<html><head><title>News</title></head>
<body><p>Hello {{ recipient.first_name }}</p>
<p><a href="https://shop.example/products">Products</a></p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"""


def pct(numerator: int, divisor: int) -> float:
    """numerator ÷ divisor in %, half up to 2 decimals (0 when divisor is 0): counted
    here with decimals, not with the reports' integer arithmetic."""
    if not divisor:
        return 0.0
    exact = Decimal(numerator) * 100 / Decimal(divisor)
    return float(exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def merged(domain: str) -> str:
    return ALIASES.get(domain, domain)


# -- the scenario -----------------------------------------------------------------------


@dataclass
class Sent:
    """What the scenario made happen, for the test to count with."""

    first: int  # the delivery sent over SMTP, bounced, tracked
    second: int  # then one to the outbox: the exclusions of the first show in its analysis
    token: str
    ids: dict[str, int]  # address -> message id in the first delivery
    opened: set[str] = field(default_factory=set)
    clicked: set[str] = field(default_factory=set)
    unsubscribed: set[str] = field(default_factory=set)
    complained: set[str] = field(default_factory=set)


class Clock:
    """The send run's clock: ``start``, then CLOCK_STEP later at each reading."""

    def __init__(self, start: datetime = CLOCK_START) -> None:
        self.now = start - CLOCK_STEP

    def __call__(self) -> datetime:
        self.now += CLOCK_STEP
        return self.now


def _bounce(ctx: Context, fixture: str, message_id: int, delivery_id: int, rcpt: str) -> bytes:
    data = (FIXTURES / fixture).read_bytes()
    data = data.replace(b"aaaaaaaaaaaaaaaa", ctx.keyring.sign_verp(message_id).encode())
    data = data.replace(b"<1.1.msgtrack@", f"<{delivery_id}.{message_id}.msgtrack@".encode())
    return data.replace(b"nobody@example.com", rcpt.encode())


def _tracked(ctx: Context, delivery_id: int) -> Delivery:
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(tracked_urls.c.id, tracked_urls.c.type)
            .where(tracked_urls.c.delivery_id == delivery_id)
            .order_by(tracked_urls.c.ordinal)
        ).all()
    by_type: dict[str, list[int]] = defaultdict(list)
    for url_id, kind in rows:
        by_type[kind].append(int(url_id))
    return Delivery(
        delivery_id,
        by_type["open"][0],
        by_type["opt-out"][0],
        by_type["mirror"][0],
        by_type["click"],
    )


def build_sent(ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sent:
    ctx.settings = dataclasses.replace(ctx.settings, retry_delays=(), timezone="Europe/Paris")
    monkeypatch.setattr(send_module, "utcnow", Clock())
    csv_file = tmp_path / "recipients.csv"
    csv_file.write_text(
        "email,first_name\n" + "".join(f"{e},{e.split('@')[0].title()}\n" for e in EMAILS)
    )
    assert import_recipients_csv(ctx, csv_file).imported == len(EMAILS)
    with ctx.engine.begin() as conn:
        conn.execute(
            insert(domain_aliases), [{"alias": a, "domain": d} for a, d in ALIASES.items()]
        )
        policy = qstore.QuarantinePolicy.from_settings(ctx.settings)
        assert qstore.record_failure(
            conn, QUARANTINED, "user_unknown", "hard", datetime.now(UTC), policy
        )
        set_user(conn, "ada", PASSWORD)
        token = create_api_token(conn)
    first = create_delivery(ctx, name=EVIL_NAME, subject="Hello", html=HTML, text=None)
    prepare_delivery(ctx, first)
    with ctx.engine.begin() as conn:
        conn.execute(update(messages).where(messages.c.email == "bea@b.example").values(seed=True))
        ids = {
            str(e): int(i)
            for e, i in conn.execute(
                select(messages.c.email, messages.c.id).where(messages.c.delivery_id == first)
            )
        }
    assert QUARANTINED not in ids and len(ids) == len(EMAILS) - 1
    mailbox = Mailbox(rcpt_replies=RCPT, data_replies=DATA)
    with smtp_server(mailbox) as server:
        send_delivery(
            ctx, first, SmtpTransport("127.0.0.1", server.port, concurrency=1, timeout=10)
        )
    sent = Sent(first, 0, token, ids)

    # Bounces: a sent message bounces hard, one bounces soft, a soft failure turns hard,
    # a hard failure gets a soft bounce (it stays hard), a complaint.
    processor = BounceProcessor(ctx)
    for fixture, address in [
        ("dsn_postfix_user_unknown.eml", "amy@a.example"),
        ("dsn_mailbox_full.eml", "ben@b.example"),
        ("dsn_postfix_user_unknown.eml", "bill@b.example"),
        ("dsn_mailbox_full.eml", "al@a.example"),
        ("arf_complaint.eml", "cat@c.example"),
    ]:
        assert processor.process(_bounce(ctx, fixture, ids[address], first, address))
    sent.complained.add("cat@c.example")

    # Opens, clicks and unsubscriptions, through the event log and ingestion.
    d = _tracked(ctx, first)
    t0 = datetime(2024, 3, 31, 8, 0, tzinfo=UTC).timestamp()
    events = [
        ev("open", d, ids["ann@a.example"], t0, visitor="v-ann"),
        ev("click", d, ids["ann@a.example"], t0 + 60, url_id=d.links[0], visitor="v-ann"),
        ev("unsubscribe", d, ids["ann@a.example"], t0 + 120),
        ev("open", d, ids["ben@b.example"], t0 + 180),
        ev("open", d, ids["bea@b.example"], t0 + 240),
        ev("open", d, ids["eve@evil.example"], t0 + 300, visitor="v-eve"),
        ev("click", d, ids["eve@evil.example"], t0 + 360, url_id=d.links[0], visitor="v-eve"),
        ev("unsubscribe", d, ids["gus@googlemail.com"], t0 + 420),
    ]
    write_segment(ctx.settings.events_dir, "n1-aaaa-000001.log", events, sealed=True)
    ingest_once(ctx)
    sent.opened |= {"ann@a.example", "ben@b.example", "bea@b.example", "eve@evil.example"}
    sent.clicked |= {"ann@a.example", "eve@evil.example"}
    sent.unsubscribed |= {"ann@a.example", "gus@googlemail.com"}

    # A second delivery, to the outbox: quarantined, denylisted and opted-out addresses
    # are excluded at its analysis.
    monkeypatch.setattr(send_module, "utcnow", Clock(datetime(2024, 3, 31, 14, 0, tzinfo=UTC)))
    sent.second = create_delivery(ctx, name="Second", subject="Hello", html=HTML, text=None)
    send_delivery(ctx, sent.second, OutboxTransport(tmp_path / "outbox"))
    return sent


@pytest.fixture
def sent(ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sent:
    return build_sent(ctx, tmp_path, monkeypatch)


@pytest.fixture
def api(ctx: Context, sent: Sent) -> Iterator[TestClient]:
    client = TestClient(create_app(ctx), base_url="http://testserver")
    client.headers["Authorization"] = f"Bearer {sent.token}"
    yield client


def message_rows(ctx: Context, delivery_ids: list[int]) -> list[dict[str, Any]]:
    with ctx.engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(messages).where(messages.c.delivery_id.in_(delivery_ids))
            ).mappings()
        ]


def is_success(m: dict[str, Any]) -> bool:
    return bool(m["status"] == "sent" and not m["seed"])


def is_soft(m: dict[str, Any]) -> bool:
    return bool(m["failure_type"] == "soft" and m["status"] in ("sent", "failed"))


def is_failure(m: dict[str, Any]) -> bool:
    """What non-deliverables count: failed, or delivered and bounced soft."""
    return bool(m["status"] == "failed" or is_soft(m))


# -- the scenario means what it says ------------------------------------------------------


def test_messages_end_where_the_relay_and_the_bounces_put_them(ctx: Context, sent: Sent) -> None:
    m = {r["email"]: r for r in message_rows(ctx, [sent.first])}
    state = {e: (r["status"], r["failure_type"], r["failure_code"]) for e, r in m.items()}
    assert state["ann@a.example"] == ("sent", None, None)
    assert state["amy@a.example"] == ("failed", "hard", "user_unknown")  # bounced after sent
    assert state["ben@b.example"] == ("sent", "soft", "mailbox_full")  # stays delivered
    assert state["bill@b.example"] == ("failed", "hard", "user_unknown")  # soft, then hard
    assert state["al@a.example"] == ("failed", "hard", "user_unknown")  # a later soft bounce
    assert state["bo@b.example"][:2] == ("failed", "soft")
    assert state["cy@c.example"] == ("failed", "hard", "rejected")
    assert state["cat@c.example"] == ("sent", None, None)  # a complaint is no failure
    with ctx.engine.connect() as conn:
        ind = (
            conn.execute(
                select(delivery_indicators).where(delivery_indicators.c.delivery_id == sent.first)
            )
            .mappings()
            .one()
        )
    rows = list(m.values())
    # The bounce counters move with the messages' states: a soft bounce that turned hard
    # counts once, as hard.
    assert (
        ind["hard_bounces"]
        == sum(r["status"] == "failed" and r["failure_type"] == "hard" for r in rows)
        == 7
    )
    assert ind["soft_bounces"] == sum(is_soft(r) for r in rows) == 2
    assert ind["success"] == sum(is_success(r) for r in rows) == 5
    assert ind["errors"] == sum(r["status"] == "failed" for r in rows) == 8
    # The send clock crossed the change to summer time.
    done = sorted(r["done_at"] for r in rows)
    assert done[0] < datetime(2024, 3, 31, 1, tzinfo=UTC) < done[-1]


# -- delivery summary ---------------------------------------------------------------------


def expected_summary(ctx: Context, sent: Sent, delivery_ids: list[int]) -> dict[str, int]:
    rows = message_rows(ctx, delivery_ids)
    with ctx.engine.connect() as conn:
        d = conn.execute(select(deliveries).where(deliveries.c.id.in_(delivery_ids))).mappings()
        analysis: dict[str, int] = defaultdict(int)
        for r in d:
            for k in ("initial_population", "rejected_quarantined", "rejected_denylisted",
                      "rejected_opted_out", "to_deliver"):  # fmt: skip
                analysis[k] += int(r[k])
        quarantined = conn.execute(
            select(quarantine_history.c.id).where(
                quarantine_history.c.message_id.in_(
                    select(messages.c.id).where(messages.c.delivery_id.in_(delivery_ids))
                ),
                quarantine_history.c.action.in_(("quarantine", "denylist")),
            )
        ).all()
    first = [r for r in rows if r["delivery_id"] == sent.first]
    tracked = {r["email"] for r in first}
    success = sum(is_success(r) for r in rows)
    errors = sum(r["status"] == "failed" for r in rows)
    return {
        **analysis,
        "rejected": analysis["rejected_quarantined"]
        + analysis["rejected_denylisted"]
        + analysis["rejected_opted_out"],
        "success": success,
        "errors": errors,
        "processed": success + errors,
        "seeds": sum(r["status"] == "sent" and r["seed"] for r in rows),
        "not_processed": sum(r["status"] not in ("sent", "failed") for r in rows),
        "hard_bounces": sum(r["status"] == "failed" and r["failure_type"] == "hard" for r in rows),
        "soft_bounces": sum(is_soft(r) for r in rows),
        "complaints": len(sent.complained & tracked),
        "new_quarantines": len(quarantined),
        "recipient_opens": len(sent.opened & tracked),
        "recipient_clicks": len(sent.clicked & tracked),
        "unsubscriptions": len(sent.unsubscribed & tracked),
    }


def test_summary_of_a_delivery(api: TestClient, ctx: Context, sent: Sent) -> None:
    got = api.get(f"/api/deliveries/{sent.first}/reports/summary").json()
    want = expected_summary(ctx, sent, [sent.first])
    assert {k: got[k] for k in want} == want
    assert (got["initial_population"], got["rejected_quarantined"], got["seeds"]) == (15, 1, 1)
    assert got["deliveries"] == 1 and got["delivery"]["name"] == EVIL_NAME
    started = got["delivery"]["started_at"]  # the send clock, in Paris
    assert started.startswith("2024-03-31T00:") and started.endswith("+01:00")
    assert got["success_rate"] == pct(want["success"], want["processed"])
    assert got["hard_bounce_rate"] == pct(want["hard_bounces"], want["processed"])
    assert got["soft_bounce_rate"] == pct(want["soft_bounces"], want["processed"])
    sent_ = want["success"] + want["seeds"]  # seeds are tracked too
    assert got["sent"] == sent_ == 6
    assert got["open_rate"] == pct(want["recipient_opens"], sent_)
    assert got["click_rate"] == pct(want["recipient_clicks"], sent_)
    assert got["unsubscription_rate"] == pct(want["unsubscriptions"], sent_)
    assert got["progress"] == 100.0
    lines = {r["key"]: r for r in got["lines"]}
    assert lines["hard_bounces"]["value"] == want["hard_bounces"]
    assert lines["hard_bounces"]["percent"] == got["hard_bounce_rate"]
    assert lines["to_deliver"]["percent"] == pct(want["to_deliver"], want["initial_population"])
    assert lines["total_opens"]["percent"] is None
    assert [o["messages"] for o in got["outcomes"]] == [
        want["success"], want["errors"], want["seeds"], want["not_processed"]
    ]  # fmt: skip
    reasons = {(r["reason"], r["failure_type"]): r["messages"] for r in got["top_reasons"]}
    assert reasons[("user_unknown", "hard")] == 5  # al, amy, bill, gil, eva
    csv_rows = exported(api, f"/api/deliveries/{sent.first}/reports/summary")
    assert csv_rows == [as_csv(r, list(csv_rows[0])) for r in got["lines"]]


def test_summary_of_a_date_range_sums_its_deliveries(
    api: TestClient, ctx: Context, sent: Sent
) -> None:
    day = {"since": "2024-03-31", "until": "2024-03-31"}
    got = api.get("/api/reports/summary", params=day).json()
    want = expected_summary(ctx, sent, [sent.first, sent.second])
    assert got["deliveries"] == 2 and got["delivery"] is None
    assert {k: got[k] for k in want} == want
    # The second delivery's analysis excluded the first one's quarantines, complaint and
    # unsubscriptions.
    second = api.get(f"/api/deliveries/{sent.second}/reports/summary").json()
    assert second["rejected_quarantined"] >= 6 and second["rejected_denylisted"] == 1
    assert second["rejected_opted_out"] == 2
    first = api.get(f"/api/deliveries/{sent.first}/reports/summary").json()
    for key in ("to_deliver", "success", "errors", "hard_bounces", "rejected"):
        assert got[key] == first[key] + second[key]
    before = api.get("/api/reports/summary", params={"since": "2024-03-01", "until": "2024-03-30"})
    assert before.json()["deliveries"] == 0 and before.json()["success"] == 0


# -- delivery statistics --------------------------------------------------------------------


def expected_domains(
    ctx: Context, sent: Sent, delivery_ids: list[int]
) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for m in message_rows(ctx, delivery_ids):
        row = out[merged(m["domain"])]
        row["to_deliver"] += 1
        row["delivered"] += is_success(m)
        row["sent"] += m["status"] == "sent"
        row["errors"] += m["status"] == "failed"
        row["hard_bounces"] += m["status"] == "failed" and m["failure_type"] == "hard"
        row["soft_bounces"] += is_soft(m)
        if m["delivery_id"] == sent.first:
            row["opens"] += m["email"] in sent.opened
            row["clicks"] += m["email"] in sent.clicked
            row["unsubscriptions"] += m["email"] in sent.unsubscribed
            row["complaints"] += m["email"] in sent.complained
    return out


KEYS = ("delivered", "errors", "hard_bounces", "soft_bounces", "opens", "clicks",
        "unsubscriptions", "complaints")  # fmt: skip


def check_domain_row(got: dict[str, Any], want: dict[str, int]) -> None:
    processed = want["delivered"] + want["errors"]
    assert got["to_deliver"] == want["to_deliver"] and got["processed"] == processed
    assert got["sent"] == want["sent"]
    for key in KEYS:
        assert got[key] == want[key], (got["domain"], key)
        base = (
            processed
            if key in ("delivered", "errors", "hard_bounces", "soft_bounces")
            else want["sent"]
        )
        assert got[f"{key}_percent"] == pct(want[key], base), (got["domain"], key)


def test_delivery_statistics_per_domain(api: TestClient, ctx: Context, sent: Sent) -> None:
    got = api.get(f"/api/deliveries/{sent.first}/reports/delivery-statistics").json()
    want = expected_domains(ctx, sent, [sent.first])
    assert [r["domain"] for r in got["domains"]] == sorted(
        want,
        key=lambda d: (
            -want[d]["to_deliver"],
            -(want[d]["delivered"] + want[d]["errors"]),
            -want[d]["sent"],
            d,
        ),
    )
    assert {"gmail.com", EVIL_DOMAIN} <= set(want) and "googlemail.com" not in want
    for row in got["domains"]:
        check_domain_row(row, want[row["domain"]])
    total: dict[str, int] = defaultdict(int)
    for row in want.values():
        for k, v in row.items():
            total[k] += v
    check_domain_row(got["total"], total)
    assert got["domains"][0] == {**got["domains"][0], "domain": "a.example", "to_deliver": 4}
    rows = exported(api, f"/api/deliveries/{sent.first}/reports/delivery-statistics")
    assert rows == [as_csv(r, list(rows[0])) for r in got["domains"]]
    pooled = api.get("/api/reports/delivery-statistics", params={"since": "2024-03-31"}).json()
    both = expected_domains(ctx, sent, [sent.first, sent.second])
    for row in pooled["domains"]:
        check_domain_row(row, both[row["domain"]])


# -- non-deliverables -----------------------------------------------------------------------


def test_non_deliverables_by_type_and_by_domain(api: TestClient, ctx: Context, sent: Sent) -> None:
    failures: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for m in message_rows(ctx, [sent.first]):
        if is_failure(m):
            failures[(m["failure_code"], m["failure_type"])][merged(m["domain"])] += 1
    total = sum(sum(d.values()) for d in failures.values())
    got = api.get(f"/api/deliveries/{sent.first}/reports/non-deliverables").json()
    assert got["view"] == "reason"
    assert got["total"]["messages"] == total == 9  # 8 failed, 1 delivered that bounced soft
    assert got["total"]["complaints"] == 1 and got["total"]["errors"] == 8
    by_reason = {(r["reason"], r["failure_type"]): r for r in got["by_reason"]}
    assert set(by_reason) == set(failures)
    for key, domains in failures.items():
        r = by_reason[key]
        n = sum(domains.values())
        assert (r["messages"], r["percent"]) == (n, pct(n, total))
        assert {x["domain"]: x["messages"] for x in r["domains"]} == domains
        assert all(x["percent"] == pct(x["messages"], n) for x in r["domains"])
    assert by_reason[("user_unknown", "hard")]["domains"][0] == {
        "domain": "a.example",
        "messages": 2,
        "percent": 40.0,
    }
    per_domain: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
    for key, domains in failures.items():
        for domain, n in domains.items():
            per_domain[domain][key] = n
    by_domain = {r["domain"]: r for r in got["by_domain"]}
    assert set(by_domain) == set(per_domain)
    for domain, reasons in per_domain.items():
        r = by_domain[domain]
        n = sum(reasons.values())
        assert (r["messages"], r["percent"]) == (n, pct(n, total))
        for t in ("hard", "soft", "ignored"):
            assert r[t] == sum(v for (_, ft), v in reasons.items() if ft == t)
        assert {(x["reason"], x["failure_type"]): x["messages"] for x in r["reasons"]} == reasons
    # The dashboard's errors are the same tables.
    dash = api.get(f"/api/deliveries/{sent.first}").json()
    strip = [{k: v for k, v in r.items() if k != "domains"} for r in got["by_reason"]]
    assert dash["errors_by_reason"] == strip
    assert dash["errors_by_domain"] == [
        {k: v for k, v in r.items() if k != "reasons"} for r in got["by_domain"]
    ]
    # CSV: by reason, by domain when the page shows domains, or any table by name.
    for params, key in [
        ({}, "by_reason"),
        ({"view": "domain"}, "by_domain"),
        ({"table": "rows"}, "rows"),
    ]:
        path = f"/api/deliveries/{sent.first}/reports/non-deliverables"
        data = api.get(path, params=params).json()
        lines = exported(api, path, **params)
        assert lines and lines == [as_csv(r, list(lines[0])) for r in data[key]]
    assert (
        api.get(f"/api/deliveries/{sent.first}/reports/non-deliverables?view=x").status_code == 400
    )


# -- throughput -------------------------------------------------------------------------


def local_bin(at: datetime, scale: str) -> str:
    """The local start of the bin holding ``at``, counted here from Paris wall time."""
    local = at.astimezone(PARIS)
    if scale == "15min":
        return local.replace(
            minute=local.minute - local.minute % 15, second=0, microsecond=0
        ).isoformat()
    if scale == "day":
        return datetime(local.year, local.month, local.day, tzinfo=PARIS).isoformat()
    hour = local.hour - local.hour % (3 if scale == "3h" else 1)
    start = datetime(local.year, local.month, local.day, hour, tzinfo=PARIS, fold=local.fold)
    return start.isoformat()


@pytest.mark.parametrize("scale", ["15min", "1h", "3h", "day"])
def test_throughput_at_each_timescale(
    api: TestClient, ctx: Context, sent: Sent, scale: str
) -> None:
    want: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for m in message_rows(ctx, [sent.first]):
        if m["status"] == "failed" or is_success(m):
            row = want[local_bin(m["done_at"], scale)]
            failed = m["status"] == "failed"
            row[failed] += 1
            row[2 + failed] += m["size_bytes"] or 0
    got = api.get(
        f"/api/deliveries/{sent.first}/reports/throughput", params={"timescale": scale}
    ).json()
    assert got["timescale"] == scale and got["timezone"] == "Europe/Paris"
    rows = got["rows"]
    shown = {
        r["start"]: [r["success"], r["errors"], r["success_bytes"], r["error_bytes"]] for r in rows
    }
    assert {k: v for k, v in shown.items() if any(v)} == dict(want)
    assert all(not any(v) for k, v in shown.items() if k not in want)  # gaps are empty bins
    assert sum(r["messages"] for r in rows) == got["totals"]["messages"] == 13
    assert got["totals"]["bytes"] == sum(v[2] + v[3] for v in want.values()) > 0
    for r in rows:
        assert r["messages"] == r["success"] + r["errors"]
        assert r["bytes"] == r["success_bytes"] + r["error_bytes"]
        assert r["messages_per_hour"] == pct(r["messages"], round(r["hours"] * 100))
    # Bins follow each other, each as long as the clock says (DST included).
    starts = [datetime.fromisoformat(r["start"]) for r in rows]
    for a, b, r in zip(starts, starts[1:], rows, strict=False):
        assert (b - a).total_seconds() == r["hours"] * 3600
    if scale == "3h":
        night = next(r for r in rows if r["start"] == "2024-03-31T00:00:00+01:00")
        assert night["hours"] == 2.0  # 02:00 to 03:00 did not happen
    if scale == "day":
        assert [(r["start"], r["hours"]) for r in rows] == [("2024-03-31T00:00:00+01:00", 23.0)]
    if scale == "1h":
        labels = [r["label"] for r in rows]
        assert "2024-03-31 01:00" in labels and "2024-03-31 02:00" not in labels
    lines = exported(api, f"/api/deliveries/{sent.first}/reports/throughput", timescale=scale)
    assert lines == [as_csv(r, list(lines[0])) for r in rows]


def test_throughput_of_a_date_range_and_bad_timescales(api: TestClient, sent: Sent) -> None:
    one = api.get(f"/api/deliveries/{sent.first}/reports/throughput?timescale=day").json()
    two = api.get(f"/api/deliveries/{sent.second}/reports/throughput?timescale=day").json()
    pooled = api.get(
        "/api/reports/throughput?timescale=day&since=2024-03-31&until=2024-03-31"
    ).json()
    assert pooled["totals"]["messages"] == one["totals"]["messages"] + two["totals"]["messages"]
    assert pooled["totals"]["bytes"] == one["totals"]["bytes"] + two["totals"]["bytes"]
    empty = api.get("/api/reports/throughput?since=2024-04-01&until=2024-04-02").json()
    assert empty["rows"] == [] and empty["totals"]["messages"] == 0
    assert (
        api.get(f"/api/deliveries/{sent.first}/reports/throughput?timescale=2h").status_code == 400
    )
    assert api.get("/api/deliveries/999999/reports/throughput").status_code == 404


# -- the dashboard -------------------------------------------------------------------------


def test_dashboard_reads_its_counts_from_counters(
    api: TestClient, ctx: Context, sent: Sent
) -> None:
    dash = api.get(f"/api/deliveries/{sent.first}").json()
    rows = message_rows(ctx, [sent.first])
    by_status: dict[str, int] = defaultdict(int)
    for m in rows:
        by_status[m["status"]] += 1
    assert dash["status_counts"] == dict(by_status)
    want = expected_summary(ctx, sent, [sent.first])
    b = dash["bounces"]
    assert (b["hard_bounces"], b["soft_bounces"], b["complaints"]) == (
        want["hard_bounces"], want["soft_bounces"], want["complaints"]
    )  # fmt: skip
    assert b["new_quarantines"] == want["new_quarantines"] > 0
    assert b["hard_bounce_rate"] == pct(want["hard_bounces"], want["processed"])
    assert b["soft_bounce_rate"] == pct(want["soft_bounces"], want["processed"])
    assert dash["progress"] == {"done": len(rows), "to_deliver": len(rows), "percent": 100.0}


# -- escaping --------------------------------------------------------------------------------


def test_names_and_domains_render_as_text(ctx: Context, sent: Sent) -> None:
    client = TestClient(create_app(ctx), base_url="http://testserver")
    sign_in(client)
    paths = [f"/deliveries/{sent.first}"]
    for name in ("summary", "delivery-statistics", "non-deliverables", "throughput"):
        paths += [f"/deliveries/{sent.first}/reports/{name}", f"/reports/{name}?since=2024-03-31"]
    paths += [f"/deliveries/{sent.first}/reports/non-deliverables?view=domain"]
    for path in paths:
        page = client.get(path)
        assert page.status_code == 200, path
        assert "<script>alert" not in page.text, path
    joined = "\n".join(client.get(p).text for p in paths)
    assert "&lt;script&gt;alert(&#39;dom&#39;)&lt;/script&gt;" in joined
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in joined


def exported(api: TestClient, path: str, **params: str) -> list[dict[str, str]]:
    """The rows of a report's CSV export."""
    text = api.get(path, params={**params, "format": "csv"}).text
    return list(csv.DictReader(io.StringIO(text)))


def as_csv(row: dict[str, Any], columns: list[str]) -> dict[str, str]:
    """A JSON row as the CSV export writes it."""
    return {c: "" if row.get(c) is None else str(row[c]) for c in columns}


# -- many domains -------------------------------------------------------------------------


def test_beyond_twenty_domains_the_rest_is_others(
    ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """24 domains, one of them an alias of another: the 20 biggest by name, the rest
    summed as "others", in the delivery statistics and in each list of non-deliverables."""
    ctx.settings = dataclasses.replace(ctx.settings, retry_delays=())
    emails = [f"u{i}@d{i:02}.example" for i in range(1, 25)]
    csv_file = tmp_path / "many.csv"
    csv_file.write_text("email\n" + "".join(f"{e}\n" for e in emails))
    import_recipients_csv(ctx, csv_file)
    with ctx.engine.begin() as conn:
        conn.execute(insert(domain_aliases).values(alias="d24.example", domain="d01.example"))
        token = create_api_token(conn)
    did = create_delivery(ctx, name="Many", subject="Hi", html=HTML, text=None)
    refused = {e: f"550 5.1.1 <{e}>: User unknown" for e in emails[3:]}  # u1-u3 accepted
    with smtp_server(Mailbox(rcpt_replies=refused)) as server:
        send_delivery(ctx, did, SmtpTransport("127.0.0.1", server.port, timeout=10))
    api = TestClient(create_app(ctx), base_url="http://testserver")
    api.headers["Authorization"] = f"Bearer {token}"

    stats = api.get(f"/api/deliveries/{did}/reports/delivery-statistics").json()
    names = [r["domain"] for r in stats["domains"]]
    # d01 has two messages (d24 is its alias); then by name among equals.
    assert names == ["d01.example", *(f"d{i:02}.example" for i in range(2, 21)), "others"]
    others = stats["domains"][-1]
    assert (others["to_deliver"], others["processed"], others["errors"]) == (3, 3, 3)
    assert others["hard_bounces_percent"] == 100.0
    assert stats["domains"][0]["to_deliver"] == 2 and stats["total"]["to_deliver"] == 24
    for key in ("to_deliver", "delivered", "errors", "hard_bounces"):
        assert sum(r[key] for r in stats["domains"]) == stats["total"][key]

    nd = api.get(f"/api/deliveries/{did}/reports/non-deliverables").json()
    assert nd["total"]["messages"] == 21
    (unknown,) = nd["by_reason"]
    assert unknown["reason"] == "user_unknown" and unknown["messages"] == 21
    assert unknown["domains"][0] == {"domain": "d01.example", "messages": 1, "percent": 4.76}
    assert [x["domain"] for x in unknown["domains"]][-1] == "others"
    assert len(unknown["domains"]) == 21 and unknown["domains"][-1]["messages"] == 1  # d23
    by_domain = nd["by_domain"]
    assert len(by_domain) == 21 and by_domain[-1]["domain"] == "others"
    assert by_domain[-1]["messages"] == 1 and by_domain[-1]["reasons"] == [
        {
            "reason": "user_unknown",
            "failure_type": "hard",
            "title": "User unknown",
            "messages": 1,
            "percent": 100.0,
        }
    ]
    assert sum(r["messages"] for r in by_domain) == 21


# -- in the browser -------------------------------------------------------------------------


@pytest.fixture
def site(
    ctx: Context, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Sent]]:
    """``msgtrack serve`` on this scenario's database, shown in Paris (the browser
    fixtures' ``page`` opens it). The scenario is built in a thread of its own:
    Playwright's loop runs in this one, and sending runs its own."""
    from concurrent.futures import ThreadPoolExecutor

    from browser_fixtures import serving

    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(build_sent, ctx, tmp_path, monkeypatch).result()
    with serving(env, tmp_path) as base:
        yield base, sent


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_pages_show_what_the_api_says(page: Any, site: tuple[str, Sent]) -> None:
    import httpx

    from browser_fixtures import shoot
    from browser_fixtures import sign_in as browser_sign_in
    from test_web_browser_reports import check_page

    base, sent = site
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {sent.token}"}, timeout=10)
    browser_sign_in(page)
    d = f"/deliveries/{sent.first}"
    paths = [
        (d, "send-dashboard"),
        (f"{d}/reports/summary", "send-summary"),
        (f"{d}/reports/delivery-statistics", "send-delivery-statistics"),
        (f"{d}/reports/non-deliverables", "send-non-deliverables"),
        (f"{d}/reports/non-deliverables?view=domain", "send-non-deliverables-by-domain"),
        *(
            (f"{d}/reports/throughput?timescale={s}", f"send-throughput-{s}")
            for s in ("15min", "1h", "3h", "day")
        ),
        *(
            (f"/reports/{n}?since=2024-03-31&until=2024-03-31", f"send-global-{n}")
            for n in ("summary", "delivery-statistics", "non-deliverables", "throughput")
        ),
    ]
    for path, shot in paths:
        assert check_page(page, api, path, shot) > 5, path
        # Every chart is drawn, and nothing a recipient's domain says became markup.
        page.wait_for_function(
            "() => [...document.querySelectorAll('canvas')].every(c => Chart.getChart(c))"
        )
        assert page.eval_on_selector_all("main script, main b", "n => n.length") == 0
    # Switching the timescale keeps the page honest.
    page.goto(f"{d}/reports/throughput")
    page.click("nav.switch a[data-timescale='3h']")
    page.wait_for_url("**timescale=3h**")
    shown = page.text_content("[data-json='rows.0.start']")
    assert shown == "2024-03-31T00:00:00+01:00"
    assert page.text_content("[data-json='rows.0.hours']") == "2.0"
    # Error types expand into their domains; the markup of a domain name is text.
    page.goto(f"{d}/reports/non-deliverables")
    first = page.locator("details#reason-0")
    assert first.get_attribute("open") is None
    first.locator("summary").click()
    assert first.get_attribute("open") == ""
    assert first.locator("tbody tr").first.is_visible()
    domains = page.eval_on_selector_all(
        "details#reason-0 td[data-json$='.domain']", "els => els.map(e => e.textContent)"
    )
    assert EVIL_DOMAIN in domains
    shoot(page, "send-non-deliverables-expanded")
    assert page.problems == []
