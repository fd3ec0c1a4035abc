"""Rendering messages of a delivery: personalization, tracked links, headers, caps.

Every message is parsed back with the stdlib parser; every link token is verified with
the keyring and must name the right delivery, message and tracked URL ids.
"""

from __future__ import annotations

import html as html_lib
import re
import time
from dataclasses import replace
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from msgtrack.context import Context
from msgtrack.delivery.analyse import prepare_delivery
from msgtrack.delivery.create import create_delivery
from msgtrack.delivery.plaintext import html_to_text
from msgtrack.delivery.render import MessageRenderer, RenderError
from msgtrack.links.sign import LinkToken
from msgtrack.storage.deliveries import set_tracked_url, tracked_urls
from msgtrack.storage.recipients import import_recipients_csv
from msgtrack.storage.schema import messages

PEOPLE = (
    "email,first_name,last_name,email_format,customer_id\n"
    'alice@example.com,"<b>Al & Co</b>",Able,html,c/1 &x\n'
    "bob@example.org,Bob,Baker,text,c2\n"
    "carol@example.net,Carol,,html,\n"
)

HTML = """<!DOCTYPE html>
<html><head><title>News</title></head>
<body>
<p>Hello {{ recipient.first_name }} {{ recipient.last_name }} ({{ recipient.missing }})</p>
<a href="https://shop.example/products?id=42&amp;ref=mail" title="Products">Products</a>
<a href="https://shop.example/account/{{ recipient.customer_id }}?n={{ recipient.first_name }}"
   >Account</a>
<a href="mailto:help@shop.example">Write</a>
<a href="{{ mirror_url }}">Web version</a> <a href="{{ unsubscribe_url }}">Unsubscribe</a>
</body></html>
"""
TEXT = """Hello {{ recipient.first_name }},
Products: https://shop.example/products?id=42&ref=mail
Unsubscribe: {{ unsubscribe_url }}
"""


def parse(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def body(message: EmailMessage, kind: str) -> str | None:
    part = message.get_body((kind,))
    return None if part is None else str(part.get_content()).replace("\r\n", "\n")


def setup_delivery(
    ctx: Context, tmp_path: Path, people: str = PEOPLE, **kwargs: Any
) -> tuple[int, list[Any]]:
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(people)
    import_recipients_csv(ctx, csv_file)
    args: dict[str, Any] = {
        "name": "News",
        "subject": "Hello {{ recipient.first_name }}",
        "html": HTML,
        "text": TEXT,
    }
    args.update(kwargs)
    delivery_id = create_delivery(ctx, **args)
    prepare_delivery(ctx, delivery_id)
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
    return delivery_id, list(rows)


def url_ids(ctx: Context, delivery_id: int) -> dict[Any, int]:
    """Tracked URL ids by ordinal for links, by type for the special rows."""
    with ctx.engine.connect() as conn:
        return {
            (row["ordinal"] if row["type"] == "click" else row["type"]): row["id"]
            for row in tracked_urls(conn, delivery_id)
        }


def token_of(link: str, ctx: Context, kind: str = "c") -> LinkToken:
    prefix = f"{ctx.settings.tracking_url}/{kind}/"
    assert link.startswith(prefix), link
    return ctx.keyring.verify_link(link[len(prefix) :])


def render_all(ctx: Context, delivery_id: int, rows: list[Any]) -> dict[str, bytes | RenderError]:
    renderer = MessageRenderer(ctx, delivery_id)
    return {
        row["email"]: result for row, result in zip(rows, renderer.render_batch(rows), strict=True)
    }


def test_headers_and_layout(ctx: Context, tmp_path: Path) -> None:
    delivery_id, rows = setup_delivery(ctx, tmp_path, from_addr='"The Shop" <news@shop.example>')
    results = render_all(ctx, delivery_id, rows)
    alice_row = next(r for r in rows if r["email"] == "alice@example.com")
    data = results["alice@example.com"]
    assert isinstance(data, bytes)
    assert b"\n" not in data.replace(b"\r\n", b"")
    message = parse(data)
    assert message["From"].addresses[0].addr_spec == "news@shop.example"
    assert message["To"] == "alice@example.com"
    assert message["Subject"] == "Hello <b>Al & Co</b>"  # subjects are not escaped
    assert message["Date"].datetime is not None
    assert message["MIME-Version"] == "1.0"
    assert (
        message["Message-ID"]
        == f"<{delivery_id}.{alice_row['id']}.msgtrack@{ctx.settings.mail_domain}>"
    )
    assert message["Feedback-ID"] == f"{delivery_id}:normal:msgtrack:{ctx.settings.mail_domain}"
    assert message["X-Msgtrack-Message"] == f"{delivery_id}.{alice_row['id']}"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]

    # No unsubscribe mailbox configured: the URL form only.
    (unsubscribe,) = re.findall(r"<([^>]+)>", message["List-Unsubscribe"])
    ids = url_ids(ctx, delivery_id)
    assert token_of(unsubscribe, ctx, "u") == LinkToken(
        delivery_id, alice_row["id"], ids["opt-out"]
    )

    # The same message renders the same Message-ID again (a retry is the same message).
    again = parse(MessageRenderer(ctx, delivery_id).render_batch([alice_row])[0])  # type: ignore[arg-type]
    assert again["Message-ID"] == message["Message-ID"]


def test_links_tokens_and_escaping(ctx: Context, tmp_path: Path) -> None:
    delivery_id, rows = setup_delivery(ctx, tmp_path)
    ids = url_ids(ctx, delivery_id)
    results = render_all(ctx, delivery_id, rows)
    alice = next(r for r in rows if r["email"] == "alice@example.com")
    message = parse(results["alice@example.com"])  # type: ignore[arg-type]
    html = body(message, "html")
    text = body(message, "plain")
    assert html is not None and text is not None
    # Personalization values are escaped in the HTML part, raw in the text part.
    assert "Hello &lt;b&gt;Al &amp; Co&lt;/b&gt; Able ()" in html
    assert "Hello <b>Al & Co</b>," in text

    hrefs = [html_lib.unescape(h) for h in re.findall(r'href="([^"]*)"', html)]
    products, account, mailto, mirror, unsubscribe = hrefs
    assert token_of(products, ctx) == LinkToken(delivery_id, alice["id"], ids[1])
    assert token_of(account, ctx) == LinkToken(
        delivery_id, alice["id"], ids[2], ("c/1 &x", "<b>Al & Co</b>")
    )
    assert mailto == "mailto:help@shop.example"
    assert token_of(mirror, ctx, "m") == LinkToken(delivery_id, alice["id"], ids["mirror"])
    assert token_of(unsubscribe, ctx, "u") == LinkToken(delivery_id, alice["id"], ids["opt-out"])
    beacon = re.search(r'<img src="([^"]+)"', html)
    assert beacon is not None
    assert token_of(beacon.group(1), ctx, "o") == LinkToken(delivery_id, alice["id"], ids["open"])
    assert html.index(beacon.group(0)) == html.index("<body>") + len("<body>")

    text_products = re.search(r"Products: (\S+)", text)
    assert text_products is not None
    assert token_of(text_products.group(1), ctx) == LinkToken(delivery_id, alice["id"], ids[1])
    assert f"Unsubscribe: {unsubscribe}\n" in text

    # Another recipient's links name their own message.
    carol = next(r for r in rows if r["email"] == "carol@example.net")
    carol_html = body(parse(results["carol@example.net"]), "html")  # type: ignore[arg-type]
    assert carol_html is not None
    carol_account = html_lib.unescape(re.findall(r'href="([^"]*)"', carol_html)[1])
    assert token_of(carol_account, ctx) == LinkToken(
        delivery_id, carol["id"], ids[2], ("", "Carol")
    )


def test_untracked_link_goes_straight_to_its_destination(ctx: Context, tmp_path: Path) -> None:
    delivery_id, rows = setup_delivery(ctx, tmp_path)
    ids = url_ids(ctx, delivery_id)
    with ctx.engine.begin() as conn:
        assert set_tracked_url(conn, delivery_id, ids[1], tracked=False)
        assert set_tracked_url(conn, delivery_id, ids[2], tracked=False)
    results = render_all(ctx, delivery_id, rows)
    message = parse(results["alice@example.com"])  # type: ignore[arg-type]
    html, text = body(message, "html"), body(message, "plain")
    assert html is not None and text is not None
    raw_hrefs = re.findall(r'href="([^"]*)"', html)
    assert raw_hrefs[0] == "https://shop.example/products?id=42&amp;ref=mail"  # escaped in HTML
    assert (
        html_lib.unescape(raw_hrefs[1])
        == "https://shop.example/account/c%2F1%20%26x?n=%3Cb%3EAl%20%26%20Co%3C%2Fb%3E"
    )
    assert "Products: https://shop.example/products?id=42&ref=mail\n" in text


def test_text_only_recipient_gets_text_only(ctx: Context, tmp_path: Path) -> None:
    delivery_id, rows = setup_delivery(ctx, tmp_path)
    bob = next(r for r in rows if r["email"] == "bob@example.org")
    assert bob["text_only"]
    message = parse(render_all(ctx, delivery_id, rows)["bob@example.org"])  # type: ignore[arg-type]
    assert message.get_content_type() == "text/plain" and not message.is_multipart()
    assert body(message, "html") is None
    assert (body(message, "plain") or "").startswith("Hello Bob,\n")


def test_html_only_delivery_derives_text_for_text_only_recipients(
    ctx: Context, tmp_path: Path
) -> None:
    delivery_id, rows = setup_delivery(ctx, tmp_path, text=None)
    ids = url_ids(ctx, delivery_id)
    results = render_all(ctx, delivery_id, rows)
    alice = parse(results["alice@example.com"])  # type: ignore[arg-type]
    assert alice.get_content_type() == "text/html"
    bob_row = next(r for r in rows if r["email"] == "bob@example.org")
    bob = parse(results["bob@example.org"])  # type: ignore[arg-type]
    assert bob.get_content_type() == "text/plain"
    text = body(bob, "plain") or ""
    assert "Hello Bob Baker ()" in text
    assert "<a" not in text and "<p>" not in text and "News" not in text  # no <title>
    links = re.findall(r"<(https?://[^>]+)>", text)
    assert token_of(links[0], ctx) == LinkToken(delivery_id, bob_row["id"], ids[1])
    assert "Write <mailto:help@shop.example>" in text
    assert "/o/" not in text  # no beacon


def test_unsubscribe_mailbox_adds_mailto(ctx: Context, tmp_path: Path) -> None:
    ctx.settings = replace(ctx.settings, unsubscribe_mailbox="unsub@lists.example")
    delivery_id, rows = setup_delivery(ctx, tmp_path)
    carol = next(r for r in rows if r["email"] == "carol@example.net")
    message = parse(render_all(ctx, delivery_id, rows)["carol@example.net"])  # type: ignore[arg-type]
    url, mailto = re.findall(r"<([^>]+)>", message["List-Unsubscribe"])
    assert url.startswith(f"{ctx.settings.tracking_url}/u/")
    match = re.fullmatch(r"mailto:unsub@lists\.example\?subject=unsubscribe-([a-z0-9]+)", mailto)
    assert match is not None
    assert ctx.keyring.verify_verp(match.group(1)) == carol["id"]


def test_caps_fail_one_message_quickly(ctx: Context, tmp_path: Path) -> None:
    ctx.settings = replace(ctx.settings, max_render_seconds=0.5, max_message_bytes=200_000)
    people = (
        "email,first_name\n"
        "ok1@example.com,Ok\n"
        "bomb@example.com,Bomb\n"
        "loop@example.com,Loop\n"
        "flood@example.com,Flood\n"
        "ok2@example.com,Ok\n"
    )
    html = (
        "<html><body><p>Hi {{ recipient.first_name }}</p>"
        "{% if recipient.first_name == 'Bomb' %}{{ 'x' * 10**10 }}{% endif %}"
        "{% if recipient.first_name == 'Loop' %}"
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
        "{% endif %}"
        "{% if recipient.first_name == 'Flood' %}"
        "{% for i in range(100000) %}0123456789{% endfor %}"
        "{% endif %}"
        "</body></html>"
    )
    delivery_id, rows = setup_delivery(ctx, tmp_path, people, html=html, text=None)
    started = time.monotonic()
    results = render_all(ctx, delivery_id, rows)
    assert time.monotonic() - started < 10
    assert isinstance(results["ok1@example.com"], bytes) and isinstance(
        results["ok2@example.com"], bytes
    )
    bomb, loop, flood = (
        results["bomb@example.com"],
        results["loop@example.com"],
        results["flood@example.com"],
    )
    assert (
        isinstance(bomb, RenderError)
        and "size limit" in bomb.reason
        and "10000000000" in bomb.reason
    )
    assert isinstance(loop, RenderError) and "longer than the limit of 0.5 s" in loop.reason
    assert isinstance(flood, RenderError) and "size limit of 200000 bytes" in flood.reason
    for error in (bomb, loop, flood):
        assert "\n" not in error.reason


def test_header_injection_and_template_errors_fail_one_message(
    ctx: Context, tmp_path: Path
) -> None:
    people = (
        "email,first_name,n\n"
        'evil@example.com,"Eve\r\nBcc: all@example.com",1\n'
        "zero@example.com,Zed,0\n"
        "fine@example.com,Fine,2\n"
    )
    delivery_id, rows = setup_delivery(
        ctx,
        tmp_path,
        people,
        text="{{ 10 // recipient.n|int }} {{ recipient.missing.deeper }}\n",
        html=None,
    )
    results = render_all(ctx, delivery_id, rows)
    evil, zero, fine = (
        results["evil@example.com"],
        results["zero@example.com"],
        results["fine@example.com"],
    )
    assert (
        isinstance(evil, RenderError) and evil.reason == "the Subject header contains a line break"
    )
    assert isinstance(zero, RenderError) and "ZeroDivisionError" in zero.reason
    assert (
        isinstance(fine, RenderError) and "has no attribute 'missing'" in fine.reason
    )  # missing.deeper
    # Without the undefined attribute the fine recipient renders.
    delivery_id, rows = setup_delivery(
        ctx, tmp_path, people, text="{{ 10 // recipient.n|int }}\n", html=None
    )
    assert isinstance(render_all(ctx, delivery_id, rows)["fine@example.com"], bytes)


def test_mirror_page(ctx: Context, tmp_path: Path) -> None:
    delivery_id, rows = setup_delivery(ctx, tmp_path)
    other_id, other_rows = setup_delivery(ctx, tmp_path)
    ids = url_ids(ctx, delivery_id)
    alice = next(r for r in rows if r["email"] == "alice@example.com")
    renderer = MessageRenderer(ctx, delivery_id)
    page = renderer.render_mirror(alice["id"])
    assert page is not None
    assert "Hello &lt;b&gt;Al &amp; Co&lt;/b&gt; Able" in page
    assert "/o/" not in page and "_msgtrack_beacon" not in page and "<img" not in page
    hrefs = [html_lib.unescape(h) for h in re.findall(r'href="([^"]*)"', page)]
    assert token_of(hrefs[0], ctx) == LinkToken(delivery_id, alice["id"], ids[1])
    # Everything but the beacon is what the recipient got.
    sent = body(parse(renderer.render_batch([alice])[0]), "html")  # type: ignore[arg-type]
    assert sent is not None
    assert re.sub(r'<img src="[^"]*/o/[^"]*"[^>]*>', "", sent) == page
    assert renderer.render_mirror(other_rows[0]["id"]) is None  # another delivery's message
    assert renderer.render_mirror(10**9) is None
    text_only = create_delivery(ctx, name="t", subject="s", html=None, text="hi\n")
    assert MessageRenderer(ctx, text_only).render_mirror(alice["id"]) is None
    with pytest.raises(LookupError):
        MessageRenderer(ctx, 10**6)


def test_html_to_text() -> None:
    html = (
        "<html><head><title>T</title><style>p {color: red}</style></head><body>"
        "<h1>Big   news</h1><p>Hello&nbsp;<b>Zoé</b> &amp; co.<br>Second line</p>"
        '<ul><li>One</li><li>Two <a href="https://t.example/c/X">here</a></li></ul>'
        '<p><a href="https://t.example/c/Y">https://t.example/c/Y</a> <a href="#top">top</a></p>'
        "<script>alert(1)</script><img src='x.png' alt='Logo'></body></html>"
    )
    assert html_to_text(html) == (
        "Big news\n\nHello\xa0Zoé & co.\nSecond line\n\n* One\n* Two here <https://t.example/c/X>\n\n"
        "https://t.example/c/Y top\nLogo\n"
    )
