"""The whole path on real parts, on SQLite and on PostgreSQL.

Import recipients, create a delivery (a personalized link, a mailto, an anchor, the
opt-out and mirror helpers), send it to a real SMTP server (aiosmtpd) that refuses one
recipient, read what arrived, play the recipients with real HTTP clients each with its
own cookie jar against ``msgtrack serve``, ingest, and compare every indicator with values
this test counts by itself from what it did.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.helpers import free_port, msgtrack, running

RECIPIENTS = """email,first_name,last_name,email_format,customer_id
alice@example.com,Alice,Able,html,c1
Bob@Gmail.com,Bob,Baker,html,c2
carol@googlemail.com,Carol,Cole,html,c3
dave@example.org,Dave,Dunn,text,c4
erin@example.com,Erin,Eddy,html,c5
frank@example.net,Frank,Fox,html,c6
grace@example.com,Grace,Gale,html,c 7/x
henry@example.com,Henry,Hale,html,c8
not-an-address,Nobody,None,html,c9
alice@EXAMPLE.com,Alice,Again,html,c10
"""

HTML = """<!DOCTYPE html>
<html><head><title>News</title></head>
<body class="main">
<h1 id="top">Hello {{ recipient.first_name }}</h1>
<p><a href="https://shop.example/products?id=42&amp;ref=mail" title="Products">Our products</a></p>
<p><a href="https://shop.example/account/{{ recipient.customer_id }}?name={{ recipient.first_name }}">Your account</a></p>
<p><a href="mailto:help@shop.example">Write to us</a> or <a href="#top">go up</a>.</p>
<p><a href="{{ mirror_url }}">View in your browser</a> | <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"""

TEXT = """Hello {{ recipient.first_name }},
Our products: https://shop.example/products?id=42&ref=mail.
Unsubscribe: {{ unsubscribe_url }}
"""

REFUSED = "henry@example.com"


class Mailbox:
    """aiosmtpd handler keeping what it received; refuses REFUSED at RCPT with a 550."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:  # noqa: N802
        if address.lower() == REFUSED:
            return "550 5.1.1 <henry@example.com>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        assert envelope.content is not None
        content = (
            envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        )
        self.received.append((envelope.mail_from or "", list(envelope.rcpt_tos), content))
        return "250 Message accepted"


@dataclass
class Play:
    """What the test did, so it can count the indicators by itself."""

    events: list[dict[str, Any]] = field(default_factory=list)  # kind, recipient, visitor
    unsubscribed: set[str] = field(default_factory=set)

    def did(self, kind: str, recipient: str, visitor: str | None = None) -> None:
        self.events.append({"kind": kind, "recipient": recipient, "visitor": visitor})


def links_of(message: EmailMessage) -> dict[str, Any]:
    """The tracked links a recipient received, by what they are."""
    html_part = message.get_body(("html",))
    text_part = message.get_body(("plain",))
    out: dict[str, Any] = {"list_unsubscribe": message["List-Unsubscribe"]}
    if html_part is not None:
        html = html_part.get_content()
        hrefs = re.findall(r'href="([^"]*)"', html)
        out["html"] = html
        (
            out["products"],
            out["account"],
            out["mailto"],
            out["anchor"],
            out["mirror"],
            out["optout"],
        ) = hrefs
        out["beacon"] = re.search(r'<img src="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    if text_part is not None:
        text = text_part.get_content()
        out["text"] = text
        found = re.search(r"Our products: (\S+?)\.?\s*$", text, re.M)
        assert found, text
        out["text_products"] = found.group(1)
    return out


def round_half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator) if denominator else 0


def pct(numerator: int, denominator: int) -> float:
    return round(100 * numerator / denominator, 2) if denominator else 0


@pytest.mark.slow
def test_end_to_end(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**env, "MSGTRACK_TRACKING_URL": base, "MSGTRACK_INGEST_INTERVAL": "0.5"}

    # -- setup: init, import, create -------------------------------------------------
    token = msgtrack(env, "init").stdout.strip().splitlines()[-1]
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(RECIPIENTS)
    imported = json.loads(msgtrack(env, "recipients", "import", str(csv_file), "--json").stdout)
    assert imported["imported"] == 8
    assert {r["email"] for r in imported["rejected"]} == {"not-an-address", "alice@EXAMPLE.com"}
    msgtrack(env, "domains", "alias", "googlemail.com", "gmail.com")

    (tmp_path / "news.html").write_text(HTML)
    (tmp_path / "news.txt").write_text(TEXT)
    refused = msgtrack(
        env,
        "deliveries",
        "create",
        "--name",
        "bad",
        "--subject",
        "x",
        "--html",
        str(
            _write(
                tmp_path / "bad.html", '<a href="https://{{ recipient.first_name }}.example/">x</a>'
            )
        ),
        check=False,
    )
    assert refused.returncode != 0 and "host" in refused.stderr
    created = msgtrack(
        env,
        "deliveries",
        "create",
        "--name",
        "November news",
        "--subject",
        "Hello {{ recipient.first_name }}",
        "--html",
        str(tmp_path / "news.html"),
        "--text",
        str(tmp_path / "news.txt"),
        "--json",
    )
    delivery_id = json.loads(created.stdout)["id"]
    urls = json.loads(msgtrack(env, "deliveries", "urls", str(delivery_id), "--json").stdout)
    click_urls = sorted(u["url"] for u in urls if u["type"] == "click")
    assert click_urls == [
        "https://shop.example/account/{{ recipient.customer_id }}?name={{ recipient.first_name }}",
        "https://shop.example/products?id=42&ref=mail",
    ]

    # -- send to a real SMTP server ----------------------------------------------------
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        sent = msgtrack(
            env,
            "deliveries",
            "send",
            str(delivery_id),
            "--smtp",
            f"127.0.0.1:{controller.port}",
            "--json",
        )
    finally:
        controller.stop()
    assert json.loads(sent.stdout)["sent"] == 7
    received: dict[str, dict[str, Any]] = {}
    for mail_from, rcpt_tos, content in mailbox.received:
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        assert mail_from.startswith("bounce+")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        (rcpt,) = rcpt_tos
        received[rcpt.lower()] = links_of(message)
    assert set(received) == {
        "alice@example.com",
        "bob@gmail.com",
        "carol@googlemail.com",
        "dave@example.org",
        "erin@example.com",
        "frank@example.net",
        "grace@example.com",
    }
    alice = received["alice@example.com"]
    assert alice["mailto"] == "mailto:help@shop.example" and alice["anchor"] == "#top"
    assert "html" not in received["dave@example.org"]  # text-only recipient

    # -- play the recipients -------------------------------------------------------------
    play = Play()
    clients: list[httpx.Client] = []

    def browser() -> httpx.Client:
        client = httpx.Client(follow_redirects=False, timeout=10)
        clients.append(client)
        return client

    def visitor_of(client: httpx.Client) -> str:
        return client.cookies["mt_v"]

    with running(env, "serve", "--port", str(port), port=port):
        # Alice: opens, clicks the products link and her personalized account link.
        a = browser()
        assert a.get(alice["beacon"]).headers["content-type"] == "image/gif"
        play.did("open", "alice")
        r = a.get(alice["products"])
        assert (
            r.status_code == 302
            and r.headers["location"] == "https://shop.example/products?id=42&ref=mail"
        )
        play.did("click", "alice", visitor_of(a))
        r = a.get(alice["account"])
        assert r.headers["location"] == "https://shop.example/account/c1?name=Alice"
        play.did("click", "alice", visitor_of(a))
        # A HEAD is answered and counts nowhere.
        assert a.head(alice["products"]).status_code == 302
        # A forged token is a plain 404, never a redirect.
        forged = alice["products"][:-2] + ("AA" if not alice["products"].endswith("AA") else "BB")
        r = a.get(forged)
        assert r.status_code == 404 and "location" not in r.headers

        # Bob opens twice, clicks once, and forwards: a second browser clicks his link.
        bob = received["bob@gmail.com"]
        b = browser()
        b.get(bob["beacon"])
        b.get(bob["beacon"])
        play.did("open", "bob")
        play.did("open", "bob")
        b.get(bob["products"])
        play.did("click", "bob", visitor_of(b))
        friend = browser()
        friend.get(bob["products"])
        play.did("click", "bob", visitor_of(friend))
        assert visitor_of(friend) != visitor_of(b)

        # Carol only opens.
        carol = received["carol@googlemail.com"]
        browser().get(carol["beacon"])
        play.did("open", "carol")

        # Dave reads text only and clicks from it: that shows he opened.
        dave = received["dave@example.org"]
        d = browser()
        r = d.get(dave["text_products"])
        assert r.headers["location"] == "https://shop.example/products?id=42&ref=mail"
        play.did("click", "dave", visitor_of(d))

        # Erin opens, visits the opt-out page, and confirms with the form.
        erin = received["erin@example.com"]
        e = browser()
        e.get(erin["beacon"])
        play.did("open", "erin")
        page = e.get(erin["optout"])
        assert page.status_code == 200 and "<form" in page.text
        play.did("opt-out", "erin")
        form_action = erin["optout"]
        r = e.post(form_action, data={"confirm": "yes"})
        assert r.status_code == 200
        play.unsubscribed.add("erin")

        # Frank unsubscribes with the RFC 8058 one-click POST only: not an open.
        frank = received["frank@example.net"]
        one_click_url = re.search(r"<(https?://[^>]+)>", frank["list_unsubscribe"]).group(1)  # type: ignore[union-attr]
        r = httpx.post(
            one_click_url, data={"List-Unsubscribe": "One-Click"}, follow_redirects=False
        )
        assert (
            r.status_code == 200 and "set-cookie" not in r.headers and "location" not in r.headers
        )
        play.unsubscribed.add("frank")

        # Grace views the mirror page: an event of her message, no beacon inside.
        grace = received["grace@example.com"]
        r = browser().get(grace["mirror"])
        assert r.status_code == 200 and "sandbox" in r.headers["content-security-policy"]
        assert "Grace" in r.text and "/o/" not in r.text
        play.did("mirror", "grace")

        # A cron `msgtrack ingest` while the serve loop ingests too: it waits its turn.
        msgtrack(env, "ingest")

        # The API, behind the token, while serving.
        api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert httpx.get(f"{base}/api/deliveries/{delivery_id}/indicators").status_code == 401
        deadline = time.monotonic() + 30
        while True:  # the serve loop ingests every half second
            from_api = api.get(f"/api/deliveries/{delivery_id}/indicators").json()
            if (
                from_api["total_clicks"] == 5
                and from_api["unsubscriptions"] == 2
                or time.monotonic() > deadline
            ):
                break
            time.sleep(0.3)
        api_tracking = api.get("/api/recipients/ALICE@example.com/tracking").json()
    for client in clients:
        client.close()

    # -- ingest what is left and compare --------------------------------------------------
    msgtrack(env, "ingest")
    indicators = json.loads(
        msgtrack(env, "report", "indicators", str(delivery_id), "--json").stdout
    )

    to_deliver, text_only = 8, 1
    opened = {e["recipient"] for e in play.events}
    clicked = {e["recipient"] for e in play.events if e["kind"] == "click"}
    persons = {e["visitor"] for e in play.events if e["kind"] == "click"}
    total_opens = sum(e["kind"] == "open" for e in play.events)
    total_clicks = sum(e["kind"] == "click" for e in play.events)
    success = 7
    estimated_opens = round_half_up(len(opened) * to_deliver, to_deliver - text_only)
    expected = {
        "to_deliver": to_deliver,
        "success": success,
        "errors": 1,
        "text_only": text_only,
        "recipient_opens": len(opened),
        "total_opens": total_opens,
        "estimated_recipient_opens": estimated_opens,
        "estimated_total_opens": round_half_up(total_opens * to_deliver, to_deliver - text_only),
        "recipient_clicks": len(clicked),
        "person_clicks": len(persons),
        "total_clicks": total_clicks,
        "opt_outs": sum(e["kind"] == "opt-out" for e in play.events),
        "unsubscriptions": len(play.unsubscribed),
        "mirror_views": sum(e["kind"] == "mirror" for e in play.events),
        "forwards": len(persons) - len(clicked),
        "raw_reactivity": pct(len(clicked), len(opened)),
        "estimated_reactivity": pct(len(clicked), estimated_opens),
        "distinct_click_rate": pct(len(persons), success),
        "cumulated_click_rate": pct(total_clicks, success),
    }
    assert {k: indicators[k] for k in expected} == expected
    assert {k: from_api[k] for k in expected} == expected

    domains = {d["domain"]: d for d in indicators["domains"]}
    assert set(domains) == {"example.com", "gmail.com", "example.org", "example.net"}
    assert (
        domains["gmail.com"]["sent"],
        domains["gmail.com"]["opens"],
        domains["gmail.com"]["clicks"],
    ) == (2, 2, 1)
    assert (
        domains["example.com"]["sent"],
        domains["example.com"]["opens"],
        domains["example.com"]["clicks"],
    ) == (3, 3, 1)
    assert domains["example.net"]["opens"] == 0 and domains["example.org"]["clicks"] == 1
    assert domains["gmail.com"]["raw_reactivity"] == 50.0

    tracking = json.loads(
        msgtrack(env, "recipients", "tracking", "alice@example.com", "--json").stdout
    )
    assert [t["url"] for t in tracking] == [
        "https://shop.example/account/c1?name=Alice",
        "https://shop.example/products?id=42&ref=mail",
    ]
    assert all(
        t["delivery_id"] == delivery_id and t["delivery_name"] == "November news" for t in tracking
    )
    assert [t["label"] for t in tracking][1] == "Products"
    assert tracking == api_tracking

    # Rebuilt from the tracking logs, the indicators are the same.
    msgtrack(env, "recompute")
    assert (
        json.loads(msgtrack(env, "report", "indicators", str(delivery_id), "--json").stdout)
        == indicators
    )


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
