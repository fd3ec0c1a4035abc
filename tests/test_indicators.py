"""Every indicator of SPEC §6, on hand-built scenarios whose values are counted here."""

from __future__ import annotations

from sqlalchemy import delete

from factories import T0, add_delivery, add_message, add_recipient, ev, write_segment
from msgtrack.context import Context
from msgtrack.ingest.loader import ingest_once
from msgtrack.reports.indicators import delivery_indicators, estimate, rate
from msgtrack.storage.schema import messages, tracking_logs
from msgtrack.storage.tracking import set_domain_alias


def test_rounding_is_half_up_and_zero_divisors_give_zero() -> None:
    assert estimate(5, 3, 1) == 8  # 5 × 3 ÷ 2 = 7.5
    assert estimate(1, 3, 1) == 2  # 1.5
    assert estimate(7, 4, 1) == 9  # 9.33
    assert estimate(4, 5, 5) == 0
    assert rate(1, 32) == 3.13  # 3.125 (banker's rounding would say 3.12)
    assert rate(2, 3) == 66.67
    assert rate(1, 3) == 33.33
    assert rate(5, 0) == 0


def test_every_definition_on_one_delivery(ctx: Context) -> None:
    """m1 opens five times and clicks (v1), its link is forwarded and clicked by a second
    browser (v2); m2 visits the opt-out page and the mirror; m3 (text only) confirms an
    unsubscription; m4 does nothing; m5 failed."""
    with ctx.engine.begin() as conn:
        d = add_delivery(
            conn,
            "March",
            to_deliver=5,
            links=[("https://a.example/x", "X"), ("https://a.example/y", "Y")],
        )
        m = {}
        for i, fmt in [(1, "html"), (2, "html"), (3, "text"), (4, "html"), (5, "html")]:
            email = f"p{i}@mail.example"
            rid = add_recipient(conn, email, email_format=fmt)
            m[i] = add_message(
                conn,
                d.id,
                rid,
                email,
                text_only=fmt == "text",
                status="failed" if i == 5 else "sent",
            )
    write_segment(
        ctx.settings.events_dir,
        "n1-aaaa-000001.log",
        [ev("open", d, m[1], T0 + i, visitor="v1") for i in range(5)]
        + [
            ev("click", d, m[1], T0 + 10, url_id=d.links[0], visitor="v1"),
            ev("click", d, m[1], T0 + 11, url_id=d.links[1], visitor="v1"),
            ev("click", d, m[1], T0 + 12, url_id=d.links[0], visitor="v2"),
            ev("click", d, m[1], T0 + 13, url_id=d.links[0]),  # no cookie: no person
            ev("opt-out", d, m[2], T0 + 20, visitor="v3"),
            ev("mirror", d, m[2], T0 + 21, visitor="v3"),
            ev("unsubscribe", d, m[3], T0 + 30, source="one-click"),
            ev("unsubscribe", d, m[3], T0 + 31, visitor="v4"),
        ],
        sealed=True,
    )
    ingest_once(ctx)
    got = delivery_indicators(ctx.engine, d.id)
    assert got is not None
    assert got == {
        "delivery_id": d.id,
        "name": "March",
        "state": "sent",
        "to_deliver": 5,
        "success": 4,
        "errors": 1,
        "text_only": 1,
        "recipient_opens": 2,  # m1 (opens, clicks) and m2 (opt-out visit, mirror)
        "total_opens": 5,
        "estimated_recipient_opens": 3,  # 2 × 5 ÷ 4 = 2.5
        "estimated_total_opens": 6,  # 5 × 5 ÷ 4 = 6.25
        "recipient_clicks": 1,
        "person_clicks": 2,
        "total_clicks": 4,  # opt-out and mirror are not clicks
        "opt_outs": 1,
        "unsubscriptions": 1,  # one recipient, two POSTs
        "mirror_views": 1,
        "forwards": 1,
        "raw_reactivity": 50.0,
        "estimated_reactivity": 33.33,
        "distinct_click_rate": 50.0,
        "cumulated_click_rate": 100.0,
        "hard_bounces": 0,
        "soft_bounces": 0,
        "complaints": 0,
        "new_quarantines": 0,
        "domains": [
            {
                "domain": "mail.example",
                "sent": 4,
                "complaints": 0,
                "opens": 2,
                "clicks": 1,
                "raw_reactivity": 50.0,
            }
        ],
    }
    # The unsubscription POSTs opened nothing.
    assert got["recipient_opens"] == 2

    # Reading never scans the tracking logs: it reads the counters.
    with ctx.engine.begin() as conn:
        conn.execute(delete(tracking_logs))
    assert delivery_indicators(ctx.engine, d.id) == got


def test_a_delivery_with_nothing_yet(ctx: Context) -> None:
    with ctx.engine.begin() as conn:
        d = add_delivery(conn, "Empty", to_deliver=0, state="draft")
        text_only = add_delivery(conn, "Text only", to_deliver=2)
        for i in range(2):
            email = f"t{i}@x.example"
            add_message(conn, text_only.id, add_recipient(conn, email), email, text_only=True)
    got = delivery_indicators(ctx.engine, d.id)
    assert got is not None
    assert got["domains"] == []
    assert all(got[k] == 0 for k in got if k not in ("delivery_id", "name", "state", "domains"))
    only_text = delivery_indicators(ctx.engine, text_only.id)
    assert only_text is not None
    assert (only_text["text_only"], only_text["estimated_recipient_opens"]) == (2, 0)
    assert delivery_indicators(ctx.engine, 987_654) is None


def test_events_out_of_order_across_segments(ctx: Context) -> None:
    with ctx.engine.begin() as conn:
        d = add_delivery(conn, to_deliver=1, links=[("https://a.example/", "A")])
        m = add_message(conn, d.id, add_recipient(conn, "o@x.example"), "o@x.example")
    events_dir = ctx.settings.events_dir
    # The later segment name holds the earlier events: ingested second.
    write_segment(
        events_dir,
        "n1-aaaa-000001.log",
        [
            ev("open", d, m, T0 + 100, visitor="v"),
            ev("click", d, m, T0 + 200, url_id=d.links[0], visitor="v"),
        ],
    )
    ingest_once(ctx)
    write_segment(
        events_dir,
        "n2-bbbb-000001.log",
        [ev("click", d, m, T0 + 50, url_id=d.links[0], visitor="v"), ev("mirror", d, m, T0 + 10)],
    )
    ingest_once(ctx)
    with ctx.engine.connect() as conn:
        row = conn.execute(messages.select().where(messages.c.id == m)).one()
    assert row.first_event_at.timestamp() == T0 + 10
    assert row.first_click_at.timestamp() == T0 + 50
    assert (row.open_count, row.click_count) == (1, 2)
    got = delivery_indicators(ctx.engine, d.id)
    assert got is not None
    assert (
        got["recipient_opens"],
        got["recipient_clicks"],
        got["person_clicks"],
        got["total_clicks"],
    ) == (
        1,
        1,
        1,
        2,
    )


def test_domains_merge_aliases_and_the_small_ones_into_others(ctx: Context) -> None:
    # 23 domains: d00 gets 25 sends, d01 24, ... d22 3; plus googlemail.com (2) -> gmail.com (20).
    sends = {f"d{i:02d}.example": 25 - i for i in range(23)}
    sends["gmail.com"] = 20
    sends["googlemail.com"] = 2
    opened: dict[str, int] = {}
    with ctx.engine.begin() as conn:
        set_domain_alias(conn, "googlemail.com", "yahoo.com")
        set_domain_alias(conn, "GoogleMail.com", "Gmail.com")  # the last word wins
        d = add_delivery(conn, to_deliver=sum(sends.values()), links=[("https://a.example/", "A")])
        events = []
        n = 0
        for domain, count in sends.items():
            for j in range(count):
                email = f"u{n}@{domain}"
                n += 1
                mid = add_message(conn, d.id, add_recipient(conn, email), email)
                if j < 2:  # two openers per domain, the first of them clicks
                    events.append(ev("open", d, mid, T0 + n))
                    opened[domain] = opened.get(domain, 0) + 1
                    if j == 0:
                        events.append(ev("click", d, mid, T0 + n, url_id=d.links[0]))
    write_segment(ctx.settings.events_dir, "n1-aaaa-000001.log", events, sealed=True)
    ingest_once(ctx)
    got = delivery_indicators(ctx.engine, d.id)
    assert got is not None
    table = got["domains"]
    assert len(table) == 21
    # gmail.com (20 + 2 = 22) sits between d03 (22) and d04 (21) by sent, then by name.
    names = [row["domain"] for row in table]
    assert names[:6] == [
        "d00.example",
        "d01.example",
        "d02.example",
        "d03.example",
        "gmail.com",
        "d04.example",
    ]
    gmail = table[4]
    assert gmail == {
        "domain": "gmail.com",
        "sent": 22,
        "complaints": 0,
        "opens": 4,
        "clicks": 2,
        "raw_reactivity": 50.0,
    }
    # Top 20 = d00..d18 (d03 and gmail tie at 22) ... the rest merged: d19..d22.
    assert names[19] == "d18.example"
    others = table[20]
    assert others == {
        "domain": "others",
        "sent": 6 + 5 + 4 + 3,
        "complaints": 0,
        "opens": 8,
        "clicks": 4,
        "raw_reactivity": 50.0,
    }
    assert sum(row["sent"] for row in table) == got["success"] == sum(sends.values())
