"""The web UI in real headless Chromium (Debian's ``/usr/bin/chromium`` driven by
Playwright) against a real ``msgtrack serve``: sign in, every screen of a delivery with
known data, the numbers shown equal to the API's JSON, CSV export, escaping, CSRF.

A screenshot of every page goes to ``screenshots/`` (git-ignored) for reviewers. Without
Chromium or Playwright these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import free_port, running
from msgtrack.context import Context
from test_web_api import EVIL_UA, EVIL_URL, PASSWORD, Scenario, build_scenario

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "screenshots"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# One backend is enough here: the API tests cover both; the browser checks the pages.
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests need Chromium and Playwright under CI: {reason}")
    pytest.skip(
        f"browser tests skipped: {reason} (apt-get install chromium; pip install playwright)"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the whole module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no Chromium at {CHROMIUM}")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, timeout=30_000)
        yield chromium
        chromium.close()


@pytest.fixture
def site(ctx: Context, env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, Scenario]]:
    """``msgtrack serve`` on the scenario's database, its times shown in Paris."""
    scenario = build_scenario(ctx)
    port = free_port()
    server_env = {**env, "MSGTRACK_TIMEZONE": "Europe/Paris"}
    with running(
        server_env, "serve", "--port", str(port), port=port, output=tmp_path / "serve.log"
    ):
        yield f"http://127.0.0.1:{port}", scenario


@pytest.fixture
def page(browser: Any, site: tuple[str, Scenario]) -> Iterator[Any]:
    context = browser.new_context(base_url=site[0], accept_downloads=True)
    context.set_default_timeout(10_000)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: problems.append(str(e)))
    tab.problems = problems
    yield tab
    context.close()


def shoot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any) -> None:
    page.goto("/deliveries")
    assert page.url.endswith("/signin")
    shoot(page, "signin")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/deliveries")


def cells(page: Any, selector: str) -> list[list[str]]:
    return page.eval_on_selector_all(
        f"{selector} tbody tr",
        "rows => rows.map(r => Array.from(r.children).map(c => c.textContent.trim()))",
    )


def test_every_screen_shows_what_the_api_says(page: Any, site: tuple[str, Scenario]) -> None:
    base, scenario = site
    did = scenario.delivery_id
    api = httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {scenario.token}"}, timeout=10
    )
    sign_in(page)

    # Deliveries list.
    shoot(page, "deliveries")
    listed = api.get("/api/deliveries").json()
    shown = cells(page, "#deliveries")
    assert [int(r[0]) for r in shown] == [d["id"] for d in listed]
    assert [r[1] for r in shown] == [d["name"] for d in listed]
    assert [int(r[5]) for r in shown] == [d["success"] for d in listed]
    page.fill("input[name=q]", "summer")
    page.click("form.filters button")
    page.wait_for_url("**q=summer**")
    assert [r[1] for r in cells(page, "#deliveries")] == ["Summer draft"]

    # Dashboard.
    page.goto(f"/deliveries/{did}")
    shoot(page, "delivery-dashboard")
    dash = api.get(f"/api/deliveries/{did}").json()
    assert page.text_content("#state") == dash["state"]
    assert {r[0]: int(r[1]) for r in cells(page, "#status-counts")} == dash["status_counts"]
    errors = cells(page, "#errors")
    assert [(r[0], r[2], int(r[3])) for r in errors] == [
        (e["failure_code"], e["failure_reason"], e["messages"]) for e in dash["errors"]
    ]
    assert [r[1] for r in cells(page, "#messages-table")] == [m["email"] for m in dash["messages"]]
    page.select_option("select[name=status]", "failed")
    page.click("form.filters button")
    page.wait_for_url("**status=failed**")
    assert [r[1] for r in cells(page, "#messages-table")] == ["carol@x.net"]

    # Tracking tab, times in the configured zone.
    page.goto(f"/deliveries/{did}/tracking")
    shoot(page, "delivery-tracking")
    events = api.get(f"/api/deliveries/{did}/tracking").json()["events"]
    rows = cells(page, "#events")
    assert [r[1] for r in rows] == [e["type"] for e in events]
    assert rows[0][0] == "2024-03-01 10:04:00"  # 09:04 UTC, shown in Paris
    assert "Europe/Paris" in page.text_content("p.tz")
    # What a visitor sent is text on the page, never markup.
    assert rows[-2][5] == EVIL_UA and rows[-2][3] == EVIL_URL
    assert page.eval_on_selector_all("#events script, #events b", "n => n.length") == 0
    page.select_option("select[name=type]", "open")
    page.click("form.filters button")
    page.wait_for_url("**type=open**")
    assert [r[1] for r in cells(page, "#events")] == ["open", "open"]

    # Indicators, their chart drawn from the same numbers.
    page.goto(f"/deliveries/{did}/reports/indicators")
    page.wait_for_function("() => window.Chart && Chart.getChart(document.querySelector('canvas'))")
    shoot(page, "delivery-indicators")
    report = api.get(f"/api/deliveries/{did}/reports/indicators").json()
    shown_ind = page.eval_on_selector_all(
        "#indicators tbody tr", "rs => rs.map(r => [r.dataset.key, r.cells[1].textContent])"
    )
    assert len(shown_ind) > 20
    for key, text in shown_ind:
        assert text == str(report[key]), key
    domains = cells(page, "#domains")
    assert [[r[0], int(r[1]), int(r[3]), int(r[4])] for r in domains] == [
        [d["domain"], d["sent"], d["opens"], d["clicks"]] for d in report["domains"]
    ]
    charted = page.evaluate(
        "() => Chart.getChart(document.querySelector('canvas')).data.datasets.map(d => d.data)"
    )
    assert charted == [
        [d["opens"] for d in report["domains"]],
        [d["clicks"] for d in report["domains"]],
    ]

    # CSV export from the page equals the JSON.
    with page.expect_download() as download:
        page.click("a.export")
    text = Path(download.value.path()).read_text()
    exported = {r["domain"]: int(r["clicks"]) for r in csv.DictReader(io.StringIO(text))}
    assert exported == {d["domain"]: d["clicks"] for d in report["domains"]}

    # Recipient profile and its tracking tab.
    page.goto("/recipients/alice@example.com")
    shoot(page, "recipient")
    alice = api.get("/api/recipients/alice@example.com").json()
    clicks = cells(page, "#clicks")
    assert [(r[1], r[2]) for r in clicks] == [(c["url"], c["label"]) for c in alice["clicks"]]
    assert clicks[0][2] == "<b>Shop</b>"  # the label as text
    assert page.problems == []  # no script error, no CSP violation


def test_labels_and_tracking_switch_and_csrf(page: Any, site: tuple[str, Scenario]) -> None:
    base, scenario = site
    sign_in(page)
    page.goto(f"/deliveries/{scenario.draft_id}")
    page.fill("#tracked-urls input[name=label]", "<img src=x onerror=alert(1)>")
    page.click("#tracked-urls form.inline button >> nth=0")
    page.wait_for_url(f"**/deliveries/{scenario.draft_id}#urls")
    assert page.input_value("#tracked-urls input[name=label]") == "<img src=x onerror=alert(1)>"
    page.click("text=Tracked: switch off")
    page.wait_for_selector("text=Untracked: switch on")
    shoot(page, "delivery-draft-urls")
    # A form posted without the session's CSRF token (as another site would) is refused,
    # although the browser sends the session cookie with it.
    link_id = page.get_attribute("#tracked-urls tr[data-url-id]", "data-url-id")
    forged = page.request.post(
        f"/deliveries/{scenario.draft_id}/urls/{link_id}", form={"label": "forged"}
    )
    assert forged.status == 403
    assert page.input_value("#tracked-urls input[name=label]") != "forged"
    # Without a session or token the API answers 401; with the session it answers.
    assert page.request.get("/api/deliveries").status == 200
    assert httpx.get(f"{base}/api/deliveries", timeout=10).status_code == 401
    page.click("text=Sign out")
    page.wait_for_url("**/signin")
    assert page.request.get("/api/deliveries").status == 401
    assert page.problems == []
