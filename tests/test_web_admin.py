"""The admin pages and their API twins in-process (the real FastAPI app on a real
database of each backend): qualification rules edited in the UI and applied by the
qualifier of every process, the failure text list, the quarantine and its release."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from helpers import msgtrack
from msgtrack.config import load_settings
from msgtrack.context import Context
from msgtrack.delivery.bounces import rulefile
from msgtrack.storage import bounces as bounce_store
from msgtrack.storage.auth import create_api_token
from msgtrack.storage.quarantine import QuarantinePolicy, record_failure
from msgtrack.storage.users import set_user
from msgtrack.web.app import create_app
from test_web_api import PASSWORD, sign_in

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
TO_QUALIFY = FIXTURES / "dsn_to_qualify.eml"  # "554 Transaction failed for reasons we…"
EVIL_TEXT = "554 <script>alert('text')</script> refused for 1234567 reasons"
BULK = 57  # quarantined addresses in bulk.example, enough for two pages of 50


@dataclass
class AdminScenario:
    token: str
    listed: list[str]  # every address excluded now, sorted


def build_admin_scenario(ctx: Context) -> AdminScenario:
    """User ``ada`` and an API token; quarantined ann (user unknown, hard), denylisted
    bob (complaint), carol quarantined for a full mailbox, BULK addresses of
    bulk.example quarantined, dave only watched (one soft error: not excluded); and
    recorded failure texts: the same user-unknown error for three addresses, and an
    evil one."""
    now = datetime.now(UTC) - timedelta(hours=1)
    policy = QuarantinePolicy(threshold=1)
    with ctx.engine.begin() as conn:
        set_user(conn, "ada", PASSWORD)
        token = create_api_token(conn)
        record_failure(conn, "Ann@Example.com", "user_unknown", "hard", now, policy)
        record_failure(conn, "bob@example.org", "complaint", "hard", now, policy)
        record_failure(conn, "carol@example.net", "mailbox_full", "soft", now, policy)
        record_failure(conn, "dave@example.net", "unreachable", "soft", now, QuarantinePolicy())
        for i in range(BULK):
            record_failure(conn, f"u{i:03d}@bulk.example", "user_unknown", "hard", now, policy)
        rows = []
        for i, (who, text) in enumerate(
            [
                ("x1@a.example", "550 5.1.1 <x1@a.example>: Recipient address rejected"),
                ("x2@b.example", "550 5.1.1 <x2@b.example>: Recipient address rejected"),
                ("x3@c.example", "550 5.1.1 <x3@c.example>: Recipient address rejected"),
                ("odd@d.example", EVIL_TEXT),
            ]
        ):
            rows.append(
                {
                    "source_key": f"{i:064d}",
                    "ordinal": 0,
                    "kind": "dsn",
                    "recipient": who,
                    "status": "5.1.1" if i < 3 else "5.0.0",
                    "reply_code": "550" if i < 3 else "554",
                    "reason": "user_unknown" if i < 3 else "to_qualify",
                    "failure_type": "hard" if i < 3 else "soft",
                    "diagnostic": text,
                    "matched": False,
                    "match": "test",
                    "received_at": now,
                }
            )
        bounce_store.add_rows(conn, rows)
    listed = sorted(
        ["ann@example.com", "bob@example.org", "carol@example.net"]
        + [f"u{i:03d}@bulk.example" for i in range(BULK)]
    )
    return AdminScenario(token, listed)


def version_of(client: TestClient) -> str:
    return str(client.get("/api/settings/bounce-rules").json()["version"])


@pytest.fixture
def scenario(ctx: Context) -> AdminScenario:
    return build_admin_scenario(ctx)


@pytest.fixture
def client(ctx: Context) -> TestClient:
    return TestClient(create_app(ctx), base_url="http://testserver")


API_PATHS = [
    "/api/settings/bounce-rules",
    "/api/settings/failure-texts",
    "/api/quarantine",
    "/api/quarantine/ann@example.com",
]
PAGES = [
    "/settings/bounce-rules",
    "/settings/bounce-rules/1/edit",
    "/settings/failure-texts",
    "/quarantine",
    "/quarantine/ann@example.com",
]


def test_admin_is_private_and_posts_need_csrf(client: TestClient, scenario: AdminScenario) -> None:
    bearer = {"Authorization": f"Bearer {scenario.token}"}
    for url in API_PATHS:
        assert client.get(url).status_code == 401, url
        assert client.get(url, headers={"Authorization": "Bearer mt_forged"}).status_code == 401
        assert client.get(url, headers=bearer).status_code == 200, url
    for url in PAGES:
        answer = client.get(url, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/signin", url
    release = "/api/quarantine/ann@example.com/release"
    assert client.post(release).status_code == 401
    csrf = sign_in(client)
    for url in PAGES:
        assert client.get(url).status_code == 200, url
    # The session cookie alone does not release: the CSRF header must come with it.
    assert client.post(release).status_code == 403
    assert client.post(release, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert client.post("/quarantine/ann@example.com/release", data={}).status_code == 403
    assert client.post("/settings/bounce-rules/reset", data={"csrf": "x"}).status_code == 403
    assert client.get("/api/quarantine/ann@example.com").json()["active"] is True
    done = client.post(release, headers={"X-CSRF-Token": csrf}, json={"note": "asked by ann"})
    assert done.status_code == 200 and done.json()["active"] is False


def test_quarantine_list_filters_pages_and_exports(
    client: TestClient, scenario: AdminScenario
) -> None:
    api = {"Authorization": f"Bearer {scenario.token}"}
    seen: list[str] = []
    after = None
    for _ in range(5):
        params = {"limit": "25", **({"after": after} if after else {})}
        page = client.get("/api/quarantine", params=params, headers=api).json()
        seen += [a["address"] for a in page["addresses"]]
        after = page["next"]
        if after is None:
            break
    assert seen == scenario.listed  # every excluded address once, dave (watched) not
    first = client.get("/api/quarantine", params={"q": "ann@"}, headers=api).json()
    (ann,) = first["addresses"]
    assert (ann["kind"], ann["reason"], ann["failure_type"]) == (
        "quarantine",
        "user_unknown",
        "hard",
    )
    assert [h["action"] for h in ann["history"]] == ["quarantine"]

    def listed(**params: str) -> list[str]:
        body = client.get("/api/quarantine", params={**params, "limit": "500"}, headers=api)
        return [a["address"] for a in body.json()["addresses"]]

    assert listed(kind="denylist") == ["bob@example.org"]
    assert listed(reason="mailbox_full") == ["carol@example.net"]
    assert listed(q="BULK.example", kind="quarantine") == scenario.listed[3:]
    assert listed(q="%") == [] and listed(q="_") == []  # LIKE wildcards are literal
    assert client.get("/api/quarantine?kind=watch", headers=api).status_code == 422
    exported = client.get("/api/quarantine?format=csv&reason=user_unknown", headers=api)
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["address"] for r in rows] == [
        a for a in scenario.listed if a not in ("bob@example.org", "carol@example.net")
    ]
    dave = client.get("/api/quarantine/dave@example.net", headers=api).json()
    assert (dave["kind"], dave["active"]) == ("watch", False)
    assert client.get("/api/quarantine/nobody@example.com", headers=api).status_code == 404

    # The page: 50 a page, a Next link, the history of each address.
    sign_in(client)
    html = client.get("/quarantine").text
    assert html.count("data-address=") == 50 and 'rel="next"' in html
    nxt = re.search(r'href="/quarantine\?([^"]+)" rel="next"', html)
    assert nxt is not None
    second = client.get("/quarantine?" + nxt.group(1).replace("&amp;", "&")).text
    assert second.count("data-address=") == len(scenario.listed) - 50
    assert "u056@bulk.example" in second and "ann@example.com" not in second
    only = client.get("/quarantine", params={"kind": "denylist"}).text
    assert only.count("data-address=") == 1 and "complaint" in only


def test_release_from_the_page_keeps_history(client: TestClient, scenario: AdminScenario) -> None:
    api = {"Authorization": f"Bearer {scenario.token}"}
    csrf = sign_in(client)
    answer = client.post(
        "/quarantine/bob@example.org/release",
        data={"csrf": csrf, "note": "  asked  by bob "},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/quarantine/bob@example.org?released=1"
    page = client.get(answer.headers["location"]).text
    assert "Released:" in page and "asked by bob (released by ada in the web UI)" in page
    bob = client.get("/api/quarantine/bob@example.org", headers=api).json()
    assert bob["active"] is False and bob["released_at"]
    assert [(h["action"], h["kind"]) for h in bob["history"]] == [
        ("denylist", "denylist"),
        ("release", "denylist"),
    ]
    assert "bob@example.org" not in client.get("/quarantine").text
    again = client.post("/quarantine/bob@example.org/release", data={"csrf": csrf})
    assert again.status_code == 409
    by_api = client.post("/api/quarantine/bob@example.org/release", headers=api)
    assert by_api.status_code == 409
    ok = client.post("/api/quarantine/u000@bulk.example/release", headers=api)
    assert ok.status_code == 200
    assert ok.json()["history"][-1]["note"] == "released through the API"


def test_rules_are_edited_in_the_ui(
    client: TestClient, scenario: AdminScenario, home: Path
) -> None:
    csrf = sign_in(client)
    shipped = client.get("/api/settings/bounce-rules").json()
    assert shipped["origin"] == "default" and shipped["editable"] is True
    n = len(shipped["rules"])
    saved = home / rulefile.HOME_RULES

    def post(url: str, **fields: str) -> int:
        data = {"csrf": csrf, "version": version_of(client), **fields}
        return client.post(url, data=data, follow_redirects=False).status_code

    # A bad pattern is refused with a clear error, and nothing is saved.
    bad = client.post(
        "/settings/bounce-rules/add",
        data={
            "csrf": csrf,
            "version": version_of(client),
            "text": "(unclosed",
            "reason": "rejected",
            "type": "soft",
        },
    )
    assert bad.status_code == 400
    assert "Not saved: bad text pattern: missing )" in bad.text
    assert 'value="(unclosed"' in bad.text  # what was typed stays in the form
    assert not saved.exists()
    assert post("/settings/bounce-rules/add", text="x", reason="bogus", type="soft") == 400
    assert post("/settings/bounce-rules/add", reason="rejected", type="soft") == 400  # no pattern

    # Added first, then moved down, edited, deleted.
    assert (
        post(
            "/settings/bounce-rules/add",
            text="odd refusal",
            reason="rejected",
            type="soft",
            note="mine",
            position="1",
        )
        == 303
    )
    assert saved.exists()
    rules = client.get("/api/settings/bounce-rules").json()
    assert rules["origin"] == "home" and len(rules["rules"]) == n + 1
    assert rules["rules"][0] == {
        "position": 1, "status": "", "reply": "", "text": "odd refusal",
        "reason": "rejected", "type": "soft", "note": "mine",
    }  # fmt: skip
    assert rules["rules"][1:] == [{**r, "position": r["position"] + 1} for r in shipped["rules"]]
    assert post("/settings/bounce-rules/1", action="down") == 303
    assert client.get("/api/settings/bounce-rules").json()["rules"][1]["text"] == "odd refusal"
    edit = client.get("/settings/bounce-rules/2/edit").text
    assert 'value="odd refusal"' in edit
    assert (
        post(
            "/settings/bounce-rules/2", action="update", text="[bad", reason="rejected", type="soft"
        )
        == 400
    )
    assert (
        post(
            "/settings/bounce-rules/2",
            action="update",
            status=r"^5\.0\.0$",
            text="",
            reason="unreachable",
            type="auto",
        )
        == 303
    )
    second = client.get("/api/settings/bounce-rules").json()["rules"][1]
    assert (second["status"], second["text"], second["type"]) == (r"^5\.0\.0$", "", "auto")
    # An edit made on a stale page is refused instead of landing on the wrong row.
    stale = version_of(client)
    assert post("/settings/bounce-rules/1", action="down") == 303
    answer = client.post(
        "/settings/bounce-rules/1", data={"csrf": csrf, "version": stale, "action": "delete"}
    )
    assert answer.status_code == 409 and "changed meanwhile" in answer.text
    assert post("/settings/bounce-rules/1", action="delete") == 303
    assert len(client.get("/api/settings/bounce-rules").json()["rules"]) == n
    exported = client.get("/api/settings/bounce-rules?format=csv").text
    assert len(list(csv.DictReader(io.StringIO(exported)))) == n
    # Reset: the shipped rules again.
    assert post("/settings/bounce-rules/reset") == 303
    assert not saved.exists()
    assert client.get("/api/settings/bounce-rules").json() == shipped


def test_a_rule_added_in_the_ui_changes_how_bounces_are_qualified(
    client: TestClient, scenario: AdminScenario, env: dict[str, str], ctx: Context
) -> None:
    def qualify() -> tuple[str, str]:
        out = json.loads(msgtrack(env, "bounces", "qualify", str(TO_QUALIFY), "--json").stdout)
        return out[0]["reason"], out[0]["type"]

    live = rulefile.live_rules(ctx.settings)  # as held by a running sender
    assert qualify() == ("to_qualify", "soft")
    assert live.qualify("5.0.0", "554", "transaction failed for reasons we will not tell") == (
        live.qualify("5.0.0", "554", "")
    )
    csrf = sign_in(client)
    added = client.post(
        "/settings/bounce-rules/add",
        data={
            "csrf": csrf,
            "version": version_of(client),
            "text": "reasons we will not tell",
            "reason": "rejected",
            "type": "soft",
            "position": "1",
        },
        follow_redirects=False,
    )
    assert added.status_code == 303
    assert qualify() == ("rejected", "soft")
    now = live.qualify("5.0.0", "554", "Transaction failed for reasons we will not tell")
    assert (now.reason, now.type, now.rule) == ("rejected", "soft", 0)
    # The failure text list says what the rules make of each text now.
    texts = client.get("/api/settings/failure-texts").json()
    evil = next(t for t in texts if t["first"] == EVIL_TEXT)
    assert (evil["reason"], evil["now_reason"]) == ("to_qualify", "to_qualify")


def test_rules_from_the_environment_are_shown_not_written(
    scenario: AdminScenario, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = tmp_path / "own-rules.csv"
    own.write_text("status,reply,text,reason,type,note\n,,transaction failed,rejected,hard,\n")
    monkeypatch.setenv("MSGTRACK_BOUNCE_RULES", str(own))
    context = Context(load_settings(home))
    try:
        client = TestClient(create_app(context), base_url="http://testserver")
        csrf = sign_in(client)
        rules = client.get("/api/settings/bounce-rules").json()
        assert (rules["origin"], rules["editable"], len(rules["rules"])) == ("env", False, 1)
        page = client.get("/settings/bounce-rules").text
        assert "MSGTRACK_BOUNCE_RULES" in page and 'id="add-rule"' not in page
        refused = client.post(
            "/settings/bounce-rules/add",
            data={
                "csrf": csrf,
                "version": rules["version"],
                "text": "x",
                "reason": "rejected",
                "type": "soft",
            },
        )
        assert refused.status_code == 400 and "MSGTRACK_BOUNCE_RULES" in refused.text
        assert own.read_text().count("\n") == 2 and not (home / rulefile.HOME_RULES).exists()
        assert (
            rulefile.live_rules(context.settings).qualify(None, None, "transaction failed").reason
            == "rejected"
        )
    finally:
        context.close()


def test_failure_texts_group_and_escape(client: TestClient, scenario: AdminScenario) -> None:
    api = {"Authorization": f"Bearer {scenario.token}"}
    texts = client.get("/api/settings/failure-texts", headers=api).json()
    assert [(t["count"], t["reason"], t["now_reason"]) for t in texts] == [
        (3, "user_unknown", "user_unknown"),
        (1, "to_qualify", "to_qualify"),
    ]
    assert texts[0]["text"] == "550 5.1.1 <<address>>: Recipient address rejected"
    assert texts[0]["first"] == "550 5.1.1 <x1@a.example>: Recipient address rejected"
    exported = client.get("/api/settings/failure-texts?format=csv", headers=api).text
    assert [r["count"] for r in csv.DictReader(io.StringIO(exported))] == ["3", "1"]
    sign_in(client)
    html = client.get("/settings/failure-texts").text
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;text&#39;)&lt;/script&gt;" in html
