"""The web UI in real headless Chromium (Debian's ``/usr/bin/chromium`` driven by
Playwright) against a real ``msgtrack serve``: sign in, every screen of a delivery with
known data, the numbers shown equal to the API's JSON, CSV export, escaping, CSRF.

A screenshot of every page goes to ``screenshots/`` (git-ignored) for reviewers. Without
Chromium or Playwright these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import httpx
import pytest

from browser_fixtures import cells, shoot, sign_in
from test_web_api import EVIL_UA, EVIL_URL, Scenario

# One backend is enough here: the API tests cover both; the browser checks the pages.
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


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
    errors = cells(page, "#errors-by-reason")
    assert [(r[0], r[1], int(r[2])) for r in errors] == [
        (e["reason"], e["failure_type"], e["messages"]) for e in dash["errors_by_reason"]
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
