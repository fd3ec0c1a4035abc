"""Creating a delivery and analysing it, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from msgtrack.context import Context
from msgtrack.delivery.analyse import prepare_delivery
from msgtrack.delivery.create import DeliveryError, create_delivery
from msgtrack.storage.deliveries import get_delivery, list_deliveries, set_tracked_url, tracked_urls
from msgtrack.storage.recipients import import_recipients_csv
from msgtrack.storage.schema import delivery_indicators, messages, opt_outs, quarantines, recipients

HTML = """<html><head><title>T</title></head><body>
<p>Hello {{ recipient.first_name }}</p>
<a href="https://shop.example/products?id=42&amp;ref=mail" title="Products">Our products</a>
<a href="https://shop.example/account/{{ recipient.id }}">Your account</a>
<a href="https://shop.example/products?id=42&amp;ref=mail">again</a>
<a href="https://static.example/logo.png">logo</a>
<a href="mailto:help@shop.example">mail</a> <a href="#top">up</a>
<a href="{{ unsubscribe_url }}">Unsubscribe</a>
</body></html>
"""
TEXT = "Hello {{ recipient.first_name }}, see https://shop.example/text-only.\n"


def create(ctx: Context, **kwargs: Any) -> int:
    args: dict[str, Any] = {
        "name": "News",
        "subject": "Hi {{ recipient.first_name }}",
        "html": HTML,
        "text": TEXT,
    }
    args.update(kwargs)
    return create_delivery(ctx, **args)


def test_create_registers_tracked_urls(ctx: Context) -> None:
    delivery_id = create(ctx, exclude=["https://static.example/*"])
    with ctx.engine.connect() as conn:
        delivery = get_delivery(conn, delivery_id)
        urls = tracked_urls(conn, delivery_id)
        indicators = (
            conn.execute(
                select(delivery_indicators).where(delivery_indicators.c.delivery_id == delivery_id)
            )
            .mappings()
            .one()
        )
        listed = list_deliveries(conn)
    assert delivery is not None
    assert delivery["state"] == "draft"
    assert delivery["from_addr"] == ctx.settings.default_from
    assert delivery["html"] == HTML and delivery["text"] == TEXT
    assert "{{ _msgtrack_link(1) }}" in delivery["html_template"]
    assert "_msgtrack_beacon()" in delivery["html_template"]
    assert "{{ _msgtrack_link(3) }}" in delivery["text_template"]
    assert [(u["ordinal"], u["type"], u["url"], u["label"], bool(u["tracked"])) for u in urls] == [
        (1, "click", "https://shop.example/products?id=42&ref=mail", "Products", True),
        (2, "click", "https://shop.example/account/{{ recipient.id }}", "Your account", True),
        (3, "click", "https://shop.example/text-only", "https://shop.example/text-only", True),
        (-1, "open", "", "Open", True),
        (-2, "opt-out", "", "Opt-out", True),
        (-3, "mirror", "", "Mirror page", True),
    ]
    assert all(u["delivery_id"] == delivery_id for u in urls)
    assert indicators["success"] == 0 and indicators["text_only"] == 0
    assert [d["id"] for d in listed] == [delivery_id]


def test_create_settings_exclusions_and_from(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    ctx.settings = replace(ctx.settings, exclude_urls=("https://shop.example/account/*",))
    delivery_id = create(ctx, from_addr='"The Shop" <news@shop.example>', text=None)
    with ctx.engine.connect() as conn:
        urls = [u["url"] for u in tracked_urls(conn, delivery_id) if u["type"] == "click"]
        delivery = get_delivery(conn, delivery_id)
    assert urls == [
        "https://shop.example/products?id=42&ref=mail",
        "https://static.example/logo.png",
    ]
    assert delivery is not None and delivery["from_addr"] == '"The Shop" <news@shop.example>'
    assert delivery["text"] is None and delivery["text_template"] is None


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"html": '<a href="https://{{ recipient.x }}.example/">x</a>'}, "host"),
        (
            {"html": "<p>{% if recipient.x %}unclosed</p>"},
            "template syntax error in the HTML part, line 1",
        ),
        (
            {"text": "Hello\n{{ recipient.first_name }\n"},
            "template syntax error in the text part, line 2",
        ),
        ({"subject": "Hi {{ recipient.first_name"}, "template syntax error in the subject"),
        ({"subject": "Hi\r\nBcc: x@example.com"}, "line break"),
        ({"html": None, "text": None}, "an HTML part, a text part, or both"),
        ({"from_addr": "nobody"}, "no '@'"),
    ],
)
def test_create_refuses(ctx: Context, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(DeliveryError) as info:
        create(ctx, **kwargs)
    assert fragment in str(info.value)
    with ctx.engine.connect() as conn:
        assert list_deliveries(conn) == []


def test_set_tracked_url_only_before_sending(ctx: Context) -> None:
    delivery_id = create(ctx)
    with ctx.engine.connect() as conn:
        urls = tracked_urls(conn, delivery_id)
    first = urls[0]["id"]
    opt_out = next(u["id"] for u in urls if u["type"] == "opt-out")
    with ctx.engine.begin() as conn:
        assert set_tracked_url(
            conn, delivery_id, first, tracked=False, label="Products!", category="product"
        )
        assert not set_tracked_url(conn, delivery_id, opt_out, tracked=False)  # only links switch
        assert set_tracked_url(conn, delivery_id, opt_out, label="Leave")
        assert not set_tracked_url(conn, delivery_id + 1, first, label="x")  # wrong delivery
    with ctx.engine.connect() as conn:
        row = tracked_urls(conn, delivery_id)[0]
    assert (bool(row["tracked"]), row["label"], row["category"]) == (False, "Products!", "product")
    prepare_delivery(ctx, delivery_id)  # prepared: still editable
    with ctx.engine.begin() as conn:
        assert set_tracked_url(conn, delivery_id, first, tracked=True)
        conn.execute(
            messages.update().where(messages.c.delivery_id == delivery_id).values(status="sent")
        )
        from msgtrack.storage.schema import deliveries

        conn.execute(
            deliveries.update().where(deliveries.c.id == delivery_id).values(state="sending")
        )
    with ctx.engine.begin() as conn:
        assert not set_tracked_url(conn, delivery_id, first, tracked=False)


# -- analysis -------------------------------------------------------------------------


def seed_target(ctx: Context, tmp_path: Path) -> dict[str, int]:
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(
        "email,first_name,email_format\n"
        "ok1@example.com,A,html\n"
        "ok2@Example.org,B,text\n"
        "quar@example.com,C,html\n"
        "deny@example.com,D,html\n"
        "out@example.com,E,html\n"
        "out-and-quar@example.com,F,html\n"
        "released@example.com,G,html\n"
        "expired@example.com,H,html\n"
    )
    assert import_recipients_csv(ctx, csv_file).imported == 8
    now = datetime.now(UTC)
    with ctx.engine.begin() as conn:
        ids = {
            r.email_key: r.id for r in conn.execute(select(recipients.c.email_key, recipients.c.id))
        }

        def q(address: str, kind: str, **extra: Any) -> None:
            conn.execute(
                insert(quarantines).values(
                    address=address,
                    kind=kind,
                    reason="test",
                    created_at=now,
                    updated_at=now,
                    **extra,
                )
            )

        q("quar@example.com", "quarantine")
        q("deny@example.com", "denylist")
        q("out-and-quar@example.com", "quarantine")
        q("released@example.com", "quarantine", released_at=now - timedelta(days=1))
        q("expired@example.com", "quarantine", expires_at=now - timedelta(hours=1))
        for address in ("out@example.com", "out-and-quar@example.com"):
            conn.execute(
                insert(opt_outs).values(recipient_id=ids[address], source="form", created_at=now)
            )
    return ids


def test_analysis_counts_exclusions_and_creates_messages(ctx: Context, tmp_path: Path) -> None:
    ids = seed_target(ctx, tmp_path)
    delivery_id = create(ctx)
    result = prepare_delivery(ctx, delivery_id)
    assert result.state == "prepared"
    assert (
        result.initial_population,
        result.rejected_quarantined,
        result.rejected_denylisted,
        result.rejected_opted_out,
        result.to_deliver,
        result.text_only,
        result.rejected,
    ) == (8, 2, 1, 1, 4, 1, 4)
    with ctx.engine.connect() as conn:
        rows = (
            conn.execute(
                select(messages)
                .where(messages.c.delivery_id == delivery_id)
                .order_by(messages.c.id)
            )
            .mappings()
            .all()
        )
        delivery = get_delivery(conn, delivery_id)
        text_only = conn.execute(
            select(delivery_indicators.c.text_only).where(
                delivery_indicators.c.delivery_id == delivery_id
            )
        ).scalar_one()
    assert [
        (r["recipient_id"], r["email"], r["domain"], r["status"], bool(r["text_only"]))
        for r in rows
    ] == [
        (ids["ok1@example.com"], "ok1@example.com", "example.com", "pending", False),
        (ids["ok2@example.org"], "ok2@example.org", "example.org", "pending", True),
        (ids["released@example.com"], "released@example.com", "example.com", "pending", False),
        (ids["expired@example.com"], "expired@example.com", "example.com", "pending", False),
    ]
    assert delivery is not None
    assert delivery["state"] == "prepared" and delivery["prepared_at"] is not None
    assert (
        delivery["initial_population"],
        delivery["to_deliver"],
        delivery["rejected_opted_out"],
    ) == (8, 4, 1)
    assert text_only == 1

    # A second analysis changes nothing and answers the stored result.
    with ctx.engine.begin() as conn:
        conn.execute(
            insert(opt_outs).values(
                recipient_id=ids["ok1@example.com"], source="form", created_at=datetime.now(UTC)
            )
        )
    assert prepare_delivery(ctx, delivery_id) == result
    with ctx.engine.connect() as conn:
        assert (
            len(
                conn.execute(
                    select(messages.c.id).where(messages.c.delivery_id == delivery_id)
                ).all()
            )
            == 4
        )


def test_analysis_of_text_only_delivery_and_empty_target(ctx: Context, tmp_path: Path) -> None:
    empty = create(ctx, name="nobody")
    result = prepare_delivery(ctx, empty)
    assert (result.initial_population, result.to_deliver, result.text_only) == (0, 0, 0)
    seed_target(ctx, tmp_path)
    delivery_id = create(ctx, html=None)
    result = prepare_delivery(ctx, delivery_id)
    assert result.to_deliver == 4 and result.text_only == 4
    with pytest.raises(LookupError):
        prepare_delivery(ctx, delivery_id + 100)


def test_concurrent_analyses_prepare_once(ctx: Context, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    seed_target(ctx, tmp_path)
    delivery_id = create(ctx)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: prepare_delivery(ctx, delivery_id), range(4)))
    assert all(r == results[0] for r in results)
    assert results[0].to_deliver == 4
    with ctx.engine.connect() as conn:
        count = len(
            conn.execute(select(messages.c.id).where(messages.c.delivery_id == delivery_id)).all()
        )
    assert count == 4
