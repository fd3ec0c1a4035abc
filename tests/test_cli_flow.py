"""The separate-process deployment, through the real commands, on both databases.

Send to the outbox, serve the links with ``msgtrack tracking-server`` (no database on the
hot path), kill it with SIGKILL right after it answered, load its log with ``msgtrack
ingest`` run as a separate command on the same home, and check that everything answered
was counted once and that unsubscribed recipients are excluded from the next delivery.
"""

from __future__ import annotations

import json
import os
import re
import signal
from email import message_from_bytes, policy
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, msgtrack, running

PEOPLE = """email,first_name,email_format
ann@example.com,Ann,html
ben@example.org,Ben,html
cid@example.net,Cid,html
"""


def _links(eml: Path) -> dict[str, str]:
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    beacon = re.search(r'<img src="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    link, optout = re.findall(r'href="([^"]+)"', html)
    return {"to": str(message["To"]), "beacon": beacon, "link": link, "optout": optout}


@pytest.mark.slow
def test_outbox_tracking_server_kill_and_ingest(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    env = {**env, "MSGTRACK_TRACKING_URL": f"http://127.0.0.1:{port}"}
    msgtrack(env, "init")
    (tmp_path / "people.csv").write_text(PEOPLE)
    msgtrack(env, "recipients", "import", str(tmp_path / "people.csv"))
    (tmp_path / "a.html").write_text(
        '<html><body><a href="https://news.example/a">A</a>'
        '<a href="{{ unsubscribe_url }}">unsubscribe</a></body></html>'
    )
    create = ["deliveries", "create", "--name", "first", "--subject", "Hi", "--json"]
    first = json.loads(msgtrack(env, *create, "--html", str(tmp_path / "a.html")).stdout)["id"]
    outbox = tmp_path / "outbox"
    report = json.loads(
        msgtrack(env, "deliveries", "send", str(first), "--outbox", str(outbox), "--json").stdout
    )
    assert report["sent"] == 3
    links = {v["to"]: v for v in map(_links, sorted(outbox.glob("*.eml")))}
    assert set(links) == {"ann@example.com", "ben@example.org", "cid@example.net"}

    answered = {"open": 0, "click": 0}
    with running(env, "tracking-server", "--port", str(port), port=port) as server:
        with httpx.Client(follow_redirects=False, timeout=10) as client:
            for person in links.values():
                assert client.get(person["beacon"]).status_code == 200
                answered["open"] += 1
                r = client.get(person["link"])
                assert r.headers["location"] == "https://news.example/a"
                answered["click"] += 1
            # Ben confirms his unsubscription with the form.
            ben = links["ben@example.org"]
            assert client.post(ben["optout"], data={"confirm": "yes"}).status_code == 200
        os.kill(server.pid, signal.SIGKILL)
        server.wait()

    msgtrack(env, "ingest")
    msgtrack(env, "ingest")  # a second pass loads nothing twice
    indicators = json.loads(msgtrack(env, "report", "indicators", str(first), "--json").stdout)
    assert indicators["total_opens"] == answered["open"]
    assert indicators["total_clicks"] == answered["click"]
    assert indicators["recipient_opens"] == 3
    assert indicators["person_clicks"] == 1  # one browser clicked all three links
    assert indicators["unsubscriptions"] == 1
    assert indicators["opt_outs"] == 0  # the form was posted, the page never visited

    # Opt-out is global: the next delivery excludes Ben and counts why.
    second = json.loads(msgtrack(env, *create, "--html", str(tmp_path / "a.html")).stdout)["id"]
    msgtrack(env, "deliveries", "send", str(second), "--outbox", str(tmp_path / "outbox2"))
    shown = json.loads(msgtrack(env, "deliveries", "show", str(second), "--json").stdout)
    assert shown["initial_population"] == 3
    assert shown["rejected_opted_out"] == 1
    assert shown["to_deliver"] == 2
    assert shown["messages"]["sent"] == 2
    assert shown["state"] == "sent"
