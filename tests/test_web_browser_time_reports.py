"""The reports over time in real headless Chromium, on the data of test_reports_time:
switching timescales, views and periods, charts that answer a hover with the table's
numbers, the hot clicks overlay in its sandboxed frame, the CSV download, and a phone's
screen. Screenshots go to ``screenshots/``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from browser_fixtures import cells, serving, shoot, sign_in
from factories import Delivery
from msgtrack.context import Context
from msgtrack.storage.auth import create_api_token
from msgtrack.storage.users import set_user
from test_reports_time import build
from test_web_api import PASSWORD
from test_web_browser_reports import check_page

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def site(ctx: Context, env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, Any]]:
    d = build(ctx)
    with ctx.engine.begin() as conn:
        set_user(conn, "ada", PASSWORD)
        token = create_api_token(conn)
    with serving(env, tmp_path) as base:
        yield base, (d, token)


def api_client(site: tuple[str, Any]) -> httpx.Client:
    base, (_, token) = site
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def switch(page: Any, field: str, value: str) -> None:
    page.click(f"nav.switch a[data-{field}='{value}']")
    page.wait_for_url(f"**{field}={value}**")
    page.wait_for_load_state("networkidle")


def chart_data(page: Any, index: int = 0) -> list[list[float]]:
    return page.evaluate(
        "i => Chart.getChart(document.querySelectorAll('canvas[data-chart]')[i])"
        ".data.datasets.map(s => s.data)",
        index,
    )


def hover_shows_values(page: Any, index: int = 0) -> bool:
    canvas = page.locator("canvas[data-chart]").nth(index)
    box = canvas.bounding_box()
    assert box is not None
    canvas.hover(position={"x": box["width"] * 0.1, "y": box["height"] * 0.4})
    page.wait_for_timeout(100)
    return bool(
        page.evaluate(
            "i => Chart.getChart(document.querySelectorAll('canvas[data-chart]')[i])"
            ".tooltip.getActiveElements().length > 0",
            index,
        )
    )


def test_timescales_views_and_periods(page: Any, site: tuple[str, Any]) -> None:
    d: Delivery = site[1][0]
    api = api_client(site)
    sign_in(page)
    base = f"/deliveries/{d.id}/reports"

    check_page(page, api, f"{base}/tracking-statistics", "time-tracking-statistics-1h")
    assert len(cells(page, "#bins")) == 193
    assert "Europe/Paris" in page.text_content(".chart-figure figcaption")
    switch(page, "timescale", "3h")
    assert len(cells(page, "#bins")) == 65
    check_page(page, api, f"{base}/tracking-statistics?timescale=3h", "time-tracking-statistics-3h")
    # The bar chart draws the table's opens, clicks and transactions columns.
    opens = [int(row[2]) for row in cells(page, "#bins")]
    assert chart_data(page)[0] == opens
    assert hover_shows_values(page)
    switch(page, "timescale", "24h")
    assert [row[2] for row in cells(page, "#bins")] == ["2", "1", *["0"] * 6, "1"]

    page.goto(f"{base}/click-streams")
    assert page.text_content("[data-json='counters.total_clicks']") == "5"
    switch(page, "view", "url")
    assert [row[0] for row in cells(page, "#links")] == [
        "https://b.example/blog",
        "https://a.example/shop",
        "https://c.example/",
    ]
    switch(page, "period", "6h")
    assert "view=url" in page.url  # the other switch is kept
    assert page.text_content("[data-json='counters.total_clicks']") == "4"
    check_page(page, api, f"{base}/click-streams?view=url&period=6h", "time-click-streams-6h")
    assert hover_shows_values(page, 1)

    page.goto(f"{base}/user-activities")
    switch(page, "timescale", "day")
    assert [row[0] for row in cells(page, "#activity")][:2] == ["2024-03-01", "2024-03-02"]
    check_page(page, api, f"{base}/user-activities?timescale=day", "time-user-activities-day")
    assert page.problems == []


def test_hot_clicks_overlay_records_nothing(page: Any, site: tuple[str, Any]) -> None:
    d: Delivery = site[1][0]
    api = api_client(site)
    sign_in(page)
    before = api.get(f"/api/deliveries/{d.id}/tracking").json()
    check_page(page, api, f"/deliveries/{d.id}/reports/hot-clicks", "time-hot-clicks")
    frame = page.frame_locator("iframe.content")
    marks = frame.locator("mark.msgtrack-share")
    marks.first.wait_for()
    assert marks.all_text_contents() == ["28.57 %", "42.86 %", "0 %"]
    # The badge's stylesheet applied inside the frame.
    color = marks.first.evaluate("m => getComputedStyle(m).backgroundColor")
    assert color == "rgb(217, 130, 43)"
    # Original links, not tracking ones; a frame that runs nothing.
    hrefs = frame.locator("a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert hrefs == ["https://a.example/shop", "https://b.example/blog", "https://c.example/"]
    assert page.get_attribute("iframe.content", "sandbox") == ""
    assert "[28.57 %]" in page.text_content("#text-part")
    legend = {row[0]: row[2] for row in cells(page, "#legend")}
    assert legend == {"opt-out": "14.29", "mirror": "14.29"}
    page.wait_for_timeout(500)
    assert api.get(f"/api/deliveries/{d.id}/tracking").json() == before
    assert page.problems == []


def test_csv_download_and_a_phone_screen(page: Any, site: tuple[str, Any]) -> None:
    d: Delivery = site[1][0]
    api = api_client(site)
    sign_in(page)
    page.goto(f"/deliveries/{d.id}/reports/click-streams?view=category")
    with page.expect_download() as info:
        page.click("a.export")
    download = info.value
    assert download.suggested_filename == f"delivery-{d.id}-click-streams-links.csv"
    got = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    wanted = api.get(f"/api/deliveries/{d.id}/reports/click-streams?view=category").json()
    assert [(r["key"], int(r["clicks"])) for r in got] == [
        (r["key"], r["clicks"]) for r in wanted["links"]
    ]
    page.set_viewport_size({"width": 390, "height": 844})
    for name in ("tracking-statistics", "click-streams", "browsers"):
        page.goto(f"/deliveries/{d.id}/reports/{name}")
        page.wait_for_load_state("networkidle")
        # Nothing wider than the phone but the tables, which scroll inside themselves.
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, name
        shoot(page, f"phone-{name}")
    assert page.problems == []
