"""The admin API and pages in-process (the real FastAPI app on a real database of each
backend): who may see them, what they answer, CSRF, CSV, escaping."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from factories import T0, add_delivery, add_message, add_recipient, ev, write_segment
from msgtrack.context import Context
from msgtrack.ingest.loader import ingest_once
from msgtrack.storage.auth import create_api_token
from msgtrack.storage.users import set_user
from msgtrack.web.app import create_app

EVIL_URL = "https://shop.example/?q=<script>alert('url')</script>"
EVIL_LABEL = "<b>Shop</b>"
EVIL_UA = "<script>alert('ua')</script> Mozilla/5.0"
PASSWORD = "correct horse battery"


@dataclass
class Scenario:
    delivery_id: int
    draft_id: int
    token: str
    link_ids: list[int]


def build_scenario(ctx: Context) -> Scenario:
    """A sent delivery: alice opens and clicks the evil link (with an evil user agent),
    bob opens and clicks the second link, carol's message failed; a draft next to it;
    a user ``ada`` and an API token."""
    with ctx.engine.begin() as conn:
        d = add_delivery(
            conn,
            "Spring <i>news</i>",
            to_deliver=3,
            links=[(EVIL_URL, EVIL_LABEL), ("https://example.org/b", "B")],
        )
        ids = {}
        for name, domain in [("alice", "example.com"), ("bob", "example.org"), ("carol", "x.net")]:
            email = f"{name}@{domain}"
            rid = add_recipient(conn, email, first_name=name.title())
            failed = name == "carol"
            ids[name] = add_message(
                conn,
                d.id,
                rid,
                email,
                status="failed" if failed else "sent",
                failure_code="user_unknown" if failed else None,
                failure_reason="550 5.1.1 <carol@x.net> unknown" if failed else None,
            )
        draft = add_delivery(
            conn, "Summer draft", state="draft", links=[("https://d.example/", "")]
        )
        set_user(conn, "ada", PASSWORD)
        token = create_api_token(conn)
    write_segment(
        ctx.settings.events_dir,
        "n1-aaaa-000001.log",
        [
            ev("open", d, ids["alice"], T0, visitor="va"),
            ev("click", d, ids["alice"], T0 + 60, url_id=d.links[0], visitor="va", ua=EVIL_UA),
            ev("open", d, ids["bob"], T0 + 120, visitor="vb"),
            ev("click", d, ids["bob"], T0 + 180, url_id=d.links[1], visitor="vb"),
            ev("click", d, ids["bob"], T0 + 240, url_id=d.links[1], visitor="vb"),
        ],
        sealed=True,
    )
    ingest_once(ctx)
    return Scenario(d.id, draft.id, token, d.links)


def sign_in(client: TestClient, name: str = "ada", password: str = PASSWORD) -> str:
    """Sign in through the form; returns the session's CSRF token."""
    form = client.get("/signin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    done = client.post(
        "/signin",
        data={"csrf": csrf.group(1), "username": name, "password": password},
        follow_redirects=False,
    )
    assert done.status_code == 303
    page = client.get("/deliveries")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


@pytest.fixture
def scenario(ctx: Context) -> Scenario:
    return build_scenario(ctx)


@pytest.fixture
def client(ctx: Context) -> TestClient:
    return TestClient(create_app(ctx), base_url="http://testserver")


API_PATHS = [
    "/api/deliveries",
    "/api/deliveries/{id}",
    "/api/deliveries/{id}/tracking",
    "/api/deliveries/{id}/reports/indicators",
    "/api/deliveries/{id}/indicators",
    "/api/recipients/alice@example.com",
    "/api/recipients/alice@example.com/tracking",
]
PAGES = [
    "/deliveries",
    "/deliveries/{id}",
    "/deliveries/{id}/tracking",
    "/deliveries/{id}/reports/indicators",
    "/recipients/alice@example.com",
]


def test_everything_private_is_refused_without_a_token_or_session(
    client: TestClient, scenario: Scenario
) -> None:
    for path in API_PATHS:
        url = path.format(id=scenario.delivery_id)
        assert client.get(url).status_code == 401, url
        assert client.get(url, headers={"Authorization": "Bearer mt_forged"}).status_code == 401
        ok = client.get(url, headers={"Authorization": f"Bearer {scenario.token}"})
        assert ok.status_code == 200, (url, ok.text)
    for path in PAGES:
        url = path.format(id=scenario.delivery_id)
        answer = client.get(url, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/signin", url
    # A forged or tampered session cookie is no session.
    client.cookies.set("msgtrack_session", "eyJ4IjoxfQ.forged")
    assert client.get("/api/deliveries").status_code == 401
    assert client.get("/api/openapi.json").status_code == 200


def test_sign_in_sets_a_safe_cookie_and_opens_api_and_pages(
    client: TestClient, scenario: Scenario
) -> None:
    form = client.get("/signin")
    assert 'name="username"' in form.text and 'name="password"' in form.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    wrong = client.post(
        "/signin",
        data={"csrf": csrf.group(1), "username": "ada", "password": "nope nope"},
        follow_redirects=False,
    )
    assert wrong.status_code == 303 and "error=1" in wrong.headers["location"]
    assert "msgtrack_session" not in client.cookies
    done = client.post(
        "/signin",
        data={"csrf": csrf.group(1), "username": "ada", "password": PASSWORD},
        follow_redirects=False,
    )
    cookie = done.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert "secure" not in cookie  # http here; set on https tracking URLs
    for path in PAGES:
        page = client.get(path.format(id=scenario.delivery_id))
        assert page.status_code == 200, path
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert client.get(f"/api/deliveries/{scenario.delivery_id}").status_code == 200


def test_sign_in_without_its_csrf_cookie_is_refused(client: TestClient, scenario: Scenario) -> None:
    answer = client.post("/signin", data={"csrf": "x", "username": "ada", "password": PASSWORD})
    assert answer.status_code == 403
    assert "msgtrack_session" not in client.cookies


def test_forms_need_the_session_csrf_token(
    client: TestClient, scenario: Scenario, ctx: Context
) -> None:
    csrf = sign_in(client)
    draft = client.get(f"/api/deliveries/{scenario.draft_id}").json()
    link = next(u for u in draft["urls"] if u["type"] == "click")
    target = f"/deliveries/{scenario.draft_id}/urls/{link['id']}"
    assert client.post(target, data={"label": "Hacked"}).status_code == 403
    assert client.post(target, data={"label": "Hacked", "csrf": "wrong"}).status_code == 403
    assert client.post("/signout", data={}).status_code == 403
    ok = client.post(target, data={"label": "Home <page>", "csrf": csrf}, follow_redirects=False)
    assert ok.status_code == 303
    ok = client.post(target, data={"tracked": "off", "csrf": csrf}, follow_redirects=False)
    assert ok.status_code == 303
    after = client.get(f"/api/deliveries/{scenario.draft_id}").json()
    changed = next(u for u in after["urls"] if u["id"] == link["id"])
    assert changed["label"] == "Home <page>" and changed["tracked"] is False
    # Once sent, links cannot change.
    sent = client.get(f"/api/deliveries/{scenario.delivery_id}").json()
    sent_link = next(u for u in sent["urls"] if u["type"] == "click")
    refused = client.post(
        f"/deliveries/{scenario.delivery_id}/urls/{sent_link['id']}",
        data={"label": "late", "csrf": csrf},
    )
    assert refused.status_code == 409
    out = client.post("/signout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/api/deliveries").status_code == 401


def test_api_answers_match_the_scenario(client: TestClient, scenario: Scenario) -> None:
    api = {"Authorization": f"Bearer {scenario.token}"}
    did = scenario.delivery_id
    listed = client.get("/api/deliveries", params={"q": "SPRING"}, headers=api).json()
    assert [d["id"] for d in listed] == [did]
    assert listed[0]["success"] == 2 and listed[0]["errors"] == 1
    by_name = client.get("/api/deliveries", params={"sort": "name", "order": "asc"}, headers=api)
    assert [d["name"] for d in by_name.json()] == ["Spring <i>news</i>", "Summer draft"]
    dash = client.get(f"/api/deliveries/{did}", headers=api).json()
    assert dash["state"] == "sent" and dash["status_counts"] == {"failed": 1, "sent": 2}
    assert dash["errors_by_reason"] == [
        {
            "reason": "user_unknown",
            "failure_type": "hard",
            "title": "User unknown",
            "messages": 1,
            "percent": 100.0,
        }
    ]
    assert [(e["domain"], e["hard"]) for e in dash["errors_by_domain"]] == [("x.net", 1)]
    failed = client.get(f"/api/deliveries/{did}", params={"status": "failed"}, headers=api).json()
    assert [m["email"] for m in failed["messages"]] == ["carol@x.net"]
    first = client.get(f"/api/deliveries/{did}", params={"limit": 2}, headers=api).json()
    rest = client.get(
        f"/api/deliveries/{did}", params={"limit": 2, "after": first["next_after"]}, headers=api
    ).json()
    assert len(first["messages"]) == 2 and len(rest["messages"]) == 1
    assert rest["next_after"] is None
    # Tracking: newest first, type filter, keyset pages that add up to the whole.
    events = client.get(f"/api/deliveries/{did}/tracking", headers=api).json()["events"]
    assert [e["type"] for e in events] == ["click", "click", "open", "click", "open"]
    assert events[-2]["user_agent"] == EVIL_UA and events[-2]["url"] == EVIL_URL
    clicks = client.get(f"/api/deliveries/{did}/tracking?type=click", headers=api).json()
    assert len(clicks["events"]) == 3
    seen, cursor = [], None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["before"] = cursor
        page = client.get(f"/api/deliveries/{did}/tracking", params=params, headers=api).json()
        seen += [e["id"] for e in page["events"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [e["id"] for e in events]
    bad = client.get(f"/api/deliveries/{did}/tracking?before=nonsense", headers=api)
    assert bad.status_code == 400
    report = client.get(f"/api/deliveries/{did}/reports/indicators", headers=api).json()
    assert report.pop("scope") == {
        "delivery_id": did,
        "since": None,
        "until": None,
        "timezone": "UTC",
    }
    assert report == client.get(f"/api/deliveries/{did}/indicators", headers=api).json()
    assert report["total_clicks"] == 3 and report["recipient_opens"] == 2
    alice = client.get("/api/recipients/ALICE@example.com", headers=api).json()
    assert alice["email"] == "alice@example.com"
    assert [c["url"] for c in alice["clicks"]] == [EVIL_URL]
    assert client.get("/api/recipients/nobody@example.com", headers=api).status_code == 404
    assert client.get("/api/deliveries/999999", headers=api).status_code == 404


def test_global_reports_pool_the_deliveries_started_in_the_range(
    client: TestClient, scenario: Scenario
) -> None:
    api = {"Authorization": f"Bearer {scenario.token}"}
    one = client.get(f"/api/deliveries/{scenario.delivery_id}/reports/indicators", headers=api)
    # The scenario's deliveries were created today: the default range (30 days) has them.
    pooled = client.get("/api/reports/indicators", headers=api).json()
    assert pooled["deliveries"] == 2  # the sent one and the draft
    for key in ("success", "errors", "total_clicks", "recipient_opens", "raw_reactivity"):
        assert pooled[key] == one.json()[key]
    assert pooled["domains"] == one.json()["domains"]
    old = client.get(
        "/api/reports/indicators",
        params={"since": "2001-01-01", "until": "2001-12-31"},
        headers=api,
    ).json()
    assert old["deliveries"] == 0 and old["total_clicks"] == 0 and old["domains"] == []
    assert old["scope"]["since"] == "2001-01-01T00:00:00+00:00"
    assert old["scope"]["until"] == "2002-01-01T00:00:00+00:00"
    backwards = {"since": "2002-01-01", "until": "2001-01-01"}
    assert client.get("/api/reports/indicators", params=backwards, headers=api).status_code == 400
    assert client.get("/api/reports/nonsense", headers=api).status_code == 422
    assert (
        client.get("/api/reports/indicators?table=nope&format=csv", headers=api).status_code == 400
    )
    assert client.get("/api/reports/indicators").status_code == 401
    page = client.get("/reports/indicators", follow_redirects=False)
    assert page.status_code == 303  # to the sign-in page


def test_csv_exports_stream_what_the_json_says(client: TestClient, scenario: Scenario) -> None:
    api = {"Authorization": f"Bearer {scenario.token}"}
    did = scenario.delivery_id
    got = client.get(f"/api/deliveries/{did}/tracking?format=csv", headers=api)
    assert got.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(got.text)))
    events = client.get(f"/api/deliveries/{did}/tracking", headers=api).json()["events"]
    assert [int(r["id"]) for r in rows] == [e["id"] for e in events]
    assert rows[-2]["user_agent"] == EVIL_UA
    domains = list(
        csv.DictReader(
            io.StringIO(
                client.get(f"/api/deliveries/{did}/reports/indicators?format=csv", headers=api).text
            )
        )
    )
    assert {r["domain"]: int(r["sent"]) for r in domains} == {"example.com": 1, "example.org": 1}
    messages_csv = client.get(f"/api/deliveries/{did}?format=csv", headers=api).text
    assert len(list(csv.DictReader(io.StringIO(messages_csv)))) == 3
    listed = client.get("/api/deliveries?format=csv", headers=api).text
    assert len(list(csv.DictReader(io.StringIO(listed)))) == 2
    clicks = client.get("/api/recipients/bob@example.org?format=csv", headers=api).text
    assert len(list(csv.DictReader(io.StringIO(clicks)))) == 2


def test_what_visitors_send_renders_as_text(client: TestClient, scenario: Scenario) -> None:
    sign_in(client)
    did = scenario.delivery_id
    pages = [
        client.get(path.format(id=did)).text
        for path in [
            "/deliveries/{id}",
            "/deliveries/{id}/tracking",
            "/recipients/alice@example.com",
        ]
    ]
    joined = "\n".join(pages)
    assert "<script>alert" not in joined and "<b>Shop</b>" not in joined
    assert "&lt;script&gt;alert(&#39;ua&#39;)&lt;/script&gt;" in pages[1]
    assert "&lt;b&gt;Shop&lt;/b&gt;" in pages[1]
    assert "Spring &lt;i&gt;news&lt;/i&gt;" in pages[0]


def test_over_https_the_session_cookie_is_secure(ctx: Context, scenario: Scenario) -> None:
    client = TestClient(create_app(ctx), base_url="https://testserver")
    form = client.get("/signin")
    assert "secure" in form.headers["set-cookie"].lower()
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    done = client.post(
        "/signin",
        data={"csrf": csrf.group(1), "username": "ada", "password": PASSWORD},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert "secure" in done.headers["set-cookie"].lower()


def test_a_sending_delivery_dashboard_refreshes_itself(
    client: TestClient, scenario: Scenario, ctx: Context
) -> None:
    from msgtrack.storage.schema import deliveries

    sign_in(client)
    page = client.get(f"/deliveries/{scenario.delivery_id}").text
    assert 'http-equiv="refresh"' not in page and "3 of 3 processed" in page
    with ctx.engine.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == scenario.delivery_id)
            .values(state="sending")
        )
    page = client.get(f"/deliveries/{scenario.delivery_id}").text
    assert '<meta http-equiv="refresh" content="5">' in page


def test_the_deliveries_list_pages_with_a_keyset(ctx: Context) -> None:
    """Every delivery once, in order, page after page, whatever the sort; a cursor that
    is not ours is refused. Names repeat, so ties on the sort key are crossed by id."""
    names = ["Beta", "alpha", "Gamma", "beta"]
    with ctx.engine.begin() as conn:
        ids = [
            add_delivery(conn, names[i % 4], state=("sent", "draft")[i % 2]).id for i in range(23)
        ]
        token = create_api_token(conn)
        set_user(conn, "ada", PASSWORD)
    client = TestClient(create_app(ctx), base_url="http://testserver")
    api = {"Authorization": f"Bearer {token}"}
    everything = client.get("/api/deliveries", params={"limit": 500}, headers=api).json()
    assert [r["id"] for r in everything] == sorted(ids, reverse=True)
    for sort in ("id", "name", "created", "state"):
        for order in ("asc", "desc"):
            whole = client.get(
                "/api/deliveries", params={"sort": sort, "order": order, "limit": 500}, headers=api
            ).json()
            seen: list[int] = []
            url: str | None = f"/api/deliveries?sort={sort}&order={order}&limit=5"
            while url:
                answer = client.get(url, headers=api)
                assert answer.status_code == 200
                page = answer.json()
                assert 0 < len(page) <= 5
                seen += [r["id"] for r in page]
                link = answer.headers.get("link")
                url = link[1 : link.index(">")] if link else None
            assert seen == [r["id"] for r in whole], (sort, order)
            assert sorted(seen) == sorted(ids)
    by_name = client.get("/api/deliveries", params={"sort": "name", "limit": 500}, headers=api)
    values = [(r["name"], r["id"]) for r in by_name.json()]
    assert values == sorted(values, reverse=True)
    for bad in ("nope", "W10", "WyJ4IiwgMV0", "WzEsMl0"):
        answer = client.get("/api/deliveries", params={"after": bad}, headers=api)
        assert answer.status_code == 400, bad
    # The page: a next link while there is more, then a way back to the first page.
    sign_in(client)
    first = client.get("/deliveries")
    assert first.text.count('<tr data-id="') == 23 and 'rel="next"' not in first.text
    for n in range(30):
        with ctx.engine.begin() as conn:
            add_delivery(conn, f"More {n}")
    first = client.get("/deliveries")
    assert first.text.count('<tr data-id="') == 50
    next_href = re.search(r'href="(/deliveries\?[^"]+)" rel="next"', first.text)
    assert next_href is not None
    second = client.get(next_href.group(1).replace("&amp;", "&"))
    assert second.text.count('<tr data-id="') == 3 and 'rel="first"' in second.text
    assert client.get("/deliveries?after=garbage").status_code == 400


def try_sign_in(client: TestClient, name: str, password: str) -> str:
    """Where the sign-in form sends the browser: /deliveries, or the form again."""
    form = client.get("/signin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    answer = client.post(
        "/signin",
        data={"csrf": csrf.group(1), "username": name, "password": password},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    return str(answer.headers["location"])


def test_sessions_end_on_sign_out_new_password_and_removal(
    ctx: Context, env: dict[str, str]
) -> None:
    from click.testing import CliRunner

    from msgtrack.cli import main

    with ctx.engine.begin() as conn:
        set_user(conn, "ada", PASSWORD)
        set_user(conn, "bob", PASSWORD)
    app = create_app(ctx)
    laptop, phone = TestClient(app), TestClient(app)
    csrf = sign_in(laptop)
    sign_in(phone)
    stolen = laptop.cookies["msgtrack_session"]
    # Signing out ends that session for good: the same cookie opens nothing any more.
    out = laptop.post("/signout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    thief = TestClient(app)
    thief.cookies.set("msgtrack_session", stolen)
    assert thief.get("/api/deliveries").status_code == 401
    assert thief.get("/deliveries", follow_redirects=False).status_code == 303
    assert phone.get("/api/deliveries").status_code == 200  # the other session lives on
    # A new password signs the user out everywhere.
    runner = CliRunner()
    saved = runner.invoke(
        main, ["users", "add", "ada", "--password-stdin"], input="another long one\n", env=env
    )
    assert saved.exit_code == 0, saved.output
    assert phone.get("/api/deliveries").status_code == 401
    # Removing a user ends its sessions too.
    bob = TestClient(app)
    sign_in(bob, "bob")
    assert bob.get("/api/deliveries").status_code == 200
    listed = runner.invoke(main, ["users", "list", "--json"], env=env)
    assert [u["name"] for u in json.loads(listed.output)] == ["ada", "bob"]
    removed = runner.invoke(main, ["users", "remove", "bob"], env=env)
    assert removed.exit_code == 0, removed.output
    assert bob.get("/api/deliveries").status_code == 401
    assert runner.invoke(main, ["users", "remove", "bob"], env=env).exit_code != 0
    assert try_sign_in(TestClient(app), "bob", PASSWORD) == "/signin?error=1"


def test_repeated_failed_sign_ins_are_throttled(ctx: Context) -> None:
    with ctx.engine.begin() as conn:
        set_user(conn, "ada", PASSWORD)
        set_user(conn, "bob", PASSWORD)
    client = TestClient(create_app(ctx))
    for _ in range(5):
        assert try_sign_in(client, "ada", "guess guess") == "/signin?error=1"
    # Even the right password waits now: the attacker cannot tell.
    refused = client.get("/signin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', refused.text)
    assert csrf is not None
    answer = client.post(
        "/signin", data={"csrf": csrf.group(1), "username": "ADA", "password": PASSWORD}
    )
    assert answer.status_code == 429 and int(answer.headers["retry-after"]) > 0
    assert "msgtrack_session" not in client.cookies
    # Another user is not locked out by ada's attacker (below the per-address limit).
    assert try_sign_in(client, "bob", PASSWORD) == "/deliveries"
    assert client.get("/api/deliveries").status_code == 200
