"""Every report of the catalog in real headless Chromium, for a delivery and globally:
each number a page marks with ``data-json="path.to.value"`` equals the API's JSON at that
path, the page's CSV export link answers, and nothing errs (no script error, no CSP
violation). A screenshot of each page goes to ``screenshots/``.

Reports add their own checks (switching views, overlays) in their own test files; this
one holds every report to the rule that the page shows what the API says.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pytest

from browser_fixtures import shoot, sign_in
from msgtrack.reports.catalog import available
from test_web_api import Scenario

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def at_path(data: Any, path: str) -> Any:
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def shown_values(page: Any) -> list[tuple[str, str]]:
    return page.eval_on_selector_all(
        "[data-json]", "els => els.map(e => [e.dataset.json, e.textContent.trim()])"
    )


def check_page(page: Any, api: httpx.Client, path: str, shot: str) -> int:
    """Open ``path``; every marked value equals the API's; returns how many were checked."""
    page.goto(path)
    page.wait_for_load_state("networkidle")
    shoot(page, shot)
    data = api.get("/api" + path).json()
    values = shown_values(page)
    for json_path, text in values:
        expected = at_path(data, json_path)
        assert text == ("" if expected is None else str(expected)), (path, json_path)
    export = page.get_attribute("a.export", "href")
    assert export and export.startswith("/api/") and "format=csv" in export
    got = api.get(export)
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv")
    assert next(csv.reader(io.StringIO(got.text)))  # a header row at least
    return len(values)


def test_every_report_shows_what_the_api_says(page: Any, site: tuple[str, Scenario]) -> None:
    base, scenario = site
    did = scenario.delivery_id
    api = httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {scenario.token}"}, timeout=10
    )
    sign_in(page)
    for report in available():
        checked = check_page(
            page, api, f"/deliveries/{did}/reports/{report.name}", f"report-{report.name}"
        )
        assert checked > 0, f"{report.name}: no value marked with data-json"
        # The tab bar leads to every report.
        tabs = page.eval_on_selector_all("nav.tabs a", "as => as.map(a => a.textContent)")
        assert [r.title for r in available()] == tabs[2:]
        check_page(page, api, f"/reports/{report.name}", f"global-{report.name}")
    assert page.problems == []


def test_global_reports_take_a_date_range_from_their_form(
    page: Any,
    site: tuple[str, Scenario],
) -> None:
    sign_in(page)
    page.goto("/reports/indicators")
    page.fill("input[name=since]", "2001-01-01")
    page.fill("input[name=until]", "2001-01-31")
    page.click("form.range button")
    page.wait_for_url("**since=2001-01-01**")
    assert page.text_content("[data-json=total_clicks]") == "0"
    # The range follows the tabs.
    href = page.get_attribute("nav.tabs a:last-child", "href")
    assert href is not None and "since=2001-01-01" in href and "until=2001-01-31" in href
    shoot(page, "global-indicators-range")
    assert page.problems == []
