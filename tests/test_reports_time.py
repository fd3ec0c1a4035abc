"""The reports over time and links — URLs and click streams, hot clicks, tracking
statistics, user activities — on both backends, from events ingested for real.

Every expected number below is worked out by hand from the scenario's timeline (written
next to it), never read back from what ingestion stored.
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from factories import (
    T0,
    Delivery,
    _bump,
    add_delivery,
    add_message,
    add_recipient,
    ev,
    write_segment,
)
from msgtrack.context import Context
from msgtrack.ingest.loader import ingest_once
from msgtrack.reports import click_streams, hot_clicks, tracking_statistics, user_activities
from msgtrack.reports.registry import ReportError, ReportQuery, Scope
from msgtrack.reports.timeline import local_bins, local_label
from msgtrack.storage.auth import create_api_token
from msgtrack.storage.schema import deliveries, tracked_urls
from msgtrack.storage.users import set_user
from msgtrack.web.app import create_app
from test_web_api import PASSWORD, sign_in

PARIS = ZoneInfo("Europe/Paris")  # UTC+1 in early March 2024
UTC_ZONE = ZoneInfo("UTC")
START = datetime.fromtimestamp(T0, UTC)  # 2024-03-01 09:00 UTC, 10:00 in Paris
MIN, HOUR, DAY = 60, 3600, 86400
HTML = (
    "<!doctype html><html><head><title>News</title></head><body><p>Hello</p>"
    '<a href="https://a.example/shop" title="Shop">Shop now</a> '
    "<a href='https://b.example/blog'>Blog</a> "
    '<a href="https://c.example/">Nobody clicks</a></body></html>'
)
TEXT = "Shop: https://a.example/shop\nBlog (https://b.example/blog).\n"

# (kind, message, seconds after the send start, link, visitor, amount)
TIMELINE: list[tuple[str, str, int, str | None, str | None, float | None]] = [
    ("open", "m1", 5 * MIN, None, None, None),  # bucket 0
    ("click", "m1", 10 * MIN, "A", "v1", None),  # bucket 0
    ("open", "m2", 50 * MIN, None, None, None),  # bucket 0:45
    ("click", "m1", 2 * HOUR, "A", "v1", None),
    ("click", "m2", 3 * HOUR + 10 * MIN, "B", "v2", None),
    ("click", "m2", 4 * HOUR, "B", "v3", None),  # forwarded: another browser
    ("open", "m3", 25 * HOUR, None, None, None),  # 2024-03-02 10:00 UTC
    ("opt-out", "m3", 25 * HOUR + 5 * MIN, None, None, None),
    ("mirror", "m3", 26 * HOUR, None, None, None),
    ("transaction", "m2", 27 * HOUR, None, "v2", 40.5),
    ("click", "m1", 30 * HOUR, "B", "v1", None),  # 2024-03-02 15:00 UTC
    ("open", "m4", 8 * DAY, None, None, None),  # after the first 7 days
]


def build(ctx: Context) -> Delivery:
    """The delivery of TIMELINE (4 messages sent, 3 links), ingested; and its peers for
    the platform average."""
    with ctx.engine.begin() as conn:
        d = add_delivery(
            conn,
            "Spring",
            to_deliver=4,
            links=[
                ("https://a.example/shop", "Shop"),
                ("https://b.example/blog", "Blog"),
                ("https://c.example/", "Nobody"),
            ],
        )
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == d.id)
            .values(started_at=START, html=HTML, text=TEXT)
        )
        for url_id, category in zip(d.links, ("product", "content", ""), strict=True):
            conn.execute(
                update(tracked_urls).where(tracked_urls.c.id == url_id).values(category=category)
            )
        ids = {}
        for name in ("m1", "m2", "m3", "m4"):
            rid = add_recipient(conn, f"{name}@example.com")
            ids[name] = add_message(conn, d.id, rid, f"{name}@example.com")
        # Peers: (days before the send, typology, success, recipient_opens,
        # recipient_clicks, person_clicks, total_clicks). Only the first two qualify.
        for days, typology, *counts in (
            (30, "normal", 10, 5, 2, 3, 4),
            (60, "normal", 30, 15, 3, 3, 6),
            (7 * 31, "normal", 100, 100, 100, 100, 100),  # more than six months before
            (10, "proof", 100, 100, 100, 100, 100),  # proofs never count
            (-3, "normal", 100, 100, 100, 100, 100),  # sent after this one
        ):
            peer = add_delivery(conn, f"peer {days}")
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == peer.id)
                .values(started_at=START - timedelta(days=days), typology=typology)
            )
            names = ("success", "recipient_opens", "recipient_clicks", "person_clicks")
            _bump(conn, peer.id, **dict(zip(names, counts[:4], strict=True)))
            _bump(conn, peer.id, total_clicks=counts[4])
    links = dict(zip("ABC", d.links, strict=True))
    events = [
        ev(
            kind,
            d,
            ids[who],
            T0 + t,
            url_id=links[link] if link else None,
            visitor=visitor,
        )
        for kind, who, t, link, visitor, _ in TIMELINE
    ]
    events = [replace(e, amount=amount) for e, (*_, amount) in zip(events, TIMELINE, strict=True)]
    write_segment(ctx.settings.events_dir, "n1-time-000001.log", events, sealed=True)
    ingest_once(ctx)
    return d


def at(seconds: int, tz: ZoneInfo = PARIS) -> str:
    return (START + timedelta(seconds=seconds)).astimezone(tz).isoformat()


def run(conn: Any, report: Any, d: Delivery, tz: ZoneInfo = PARIS, **query: Any) -> Any:
    data = report.build(conn, Scope(d.id, None, None, tz), ReportQuery(**query))
    assert data is not None
    return data


def test_click_streams(ctx: Context) -> None:
    d = build(ctx)
    with ctx.engine.connect() as conn:
        data = run(conn, click_streams, d)
        # 5 clicks by 3 browsers from 2 messages; 4 messages had an event; 4 sent.
        assert data["counters"] == {
            "recipient_opens": 4,
            "recipient_clicks": 2,
            "person_clicks": 3,
            "total_clicks": 5,
            "success": 4,
        }
        # Pooled over the two qualifying peers: (2+3)/(5+15), (3+3)/(10+30), (4+6)/40.
        assert {r["indicator"]: (r["value"], r["platform_average"]) for r in data["rates"]} == {
            "raw_reactivity": (50.0, 25.0),
            "distinct_click_rate": (75.0, 15.0),
            "cumulated_click_rate": (125.0, 25.0),
        }
        assert data["platform_deliveries"] == 2
        assert data["start"] == at(0)
        assert data["links"] == [
            {"key": "Blog", "clicks": 3, "percent": 60.0},
            {"key": "Shop", "clicks": 2, "percent": 40.0},
            {"key": "Nobody", "clicks": 0, "percent": 0.0},
        ]
        by_url = run(conn, click_streams, d, view="url")["links"]
        assert [(r["key"], r["clicks"]) for r in by_url] == [
            ("https://b.example/blog", 3),
            ("https://a.example/shop", 2),
            ("https://c.example/", 0),
        ]
        by_category = run(conn, click_streams, d, view="category")["links"]
        assert [(r["key"], r["clicks"]) for r in by_category] == [
            ("content", 3),
            ("product", 2),
            ("(none)", 0),
        ]
        # Paris days: four clicks on the 1st, one on the 2nd.
        assert data["days"] == [
            {"day": "2024-03-01", "clicks": 4},
            {"day": "2024-03-02", "clicks": 1},
        ]
        # The first 6 hours: the 30 h click and the opens after 1 h are left out.
        six = run(conn, click_streams, d, period="6h")
        assert six["counters"] == {
            "recipient_opens": 2,
            "recipient_clicks": 2,
            "person_clicks": 3,
            "total_clicks": 4,
            "success": 4,
        }
        assert six["period_end"] == at(6 * HOUR)
        assert {r["indicator"]: r["value"] for r in six["rates"]}["raw_reactivity"] == 100.0
        assert six["days"] == [{"day": "2024-03-01", "clicks": 4}]
        # The platform average is the peers' whole-time one, whatever the period.
        assert [r["platform_average"] for r in six["rates"]] == [25.0, 15.0, 25.0]
        week = run(conn, click_streams, d, period="7d")
        assert week["counters"]["recipient_opens"] == 3  # m4 opened on day 8
        assert week["counters"]["total_clicks"] == 5
        with pytest.raises(ReportError):
            run(conn, click_streams, d, view="domain")
        with pytest.raises(ReportError):
            run(conn, click_streams, d, period="1y")


def test_tracking_statistics(ctx: Context) -> None:
    d = build(ctx)
    with ctx.engine.connect() as conn:
        data = run(conn, tracking_statistics, d)
        assert data["totals"] == {"opens": 4, "clicks": 5, "transactions": 1}
        rows = data["rows"]
        assert len(rows) == 8 * 24 + 1  # hour 0 to hour 192, empty hours included
        assert [r["hours_since_send"] for r in rows] == list(range(193))
        first = rows[0]
        assert first["start"] == at(0)
        assert (first["opens"], first["clicks"], first["cumulated_opens"]) == (2, 1, 2)
        assert (
            first["cumulated_opens_percent"] == 50.0 and first["cumulated_clicks_percent"] == 20.0
        )
        assert rows[27]["transactions"] == 1 and rows[27]["amount"] == 40.5
        assert rows[30]["clicks"] == 1 and rows[30]["cumulated_clicks"] == 5
        assert rows[-1]["cumulated_opens_percent"] == 100.0
        assert sum(r["opens"] for r in rows) == 4 and sum(r["clicks"] for r in rows) == 5
        # 50 % of opens: the second open, in the 0:45 bucket, so reached at 1:00. 80 and
        # 90 %: the fourth, on day 8. Clicks: the 3rd (3:10), 4th (4:00) and 5th (30:00).
        milestones = {(m["metric"], m["percent"]): m for m in data["milestones"]}
        assert milestones[("opens", 50)]["elapsed_seconds"] == HOUR
        assert milestones[("opens", 50)]["elapsed"] == "1 h"
        assert milestones[("opens", 50)]["reached_at"] == at(HOUR)
        assert milestones[("opens", 80)]["elapsed_seconds"] == 8 * DAY + 15 * MIN
        assert milestones[("opens", 90)]["elapsed"] == "8 d 15 min"
        assert milestones[("clicks", 50)]["elapsed"] == "3 h 15 min"
        assert milestones[("clicks", 80)]["elapsed_seconds"] == 4 * HOUR + 15 * MIN
        assert milestones[("clicks", 90)]["elapsed"] == "1 d 6 h 15 min"

        three = run(conn, tracking_statistics, d, timescale="3h")["rows"]
        assert len(three) == 65  # bins 0..64
        assert [(r["hours_since_send"], r["opens"]) for r in three if r["opens"]] == [
            (0, 2),
            (24, 1),
            (192, 1),
        ]
        assert three[1]["clicks"] == 2  # 3:10 and 4:00
        day = run(conn, tracking_statistics, d, timescale="24h")["rows"]
        assert [(r["opens"], r["clicks"], r["transactions"]) for r in day] == [
            (2, 4, 0),
            (1, 1, 1),
            *[(0, 0, 0)] * 6,
            (1, 0, 0),
        ]
        with pytest.raises(ReportError):
            run(conn, tracking_statistics, d, timescale="2h")


def test_user_activities_in_the_configured_zone(ctx: Context) -> None:
    d = build(ctx)
    with ctx.engine.connect() as conn:
        hours = run(conn, user_activities, d)
        assert hours["timezone"] == "Europe/Paris"
        assert hours["totals"] == {"opens": 4, "clicks": 5, "transactions": 1}
        first = hours["rows"][0]
        assert (first["label"], first["opens"], first["clicks"]) == ("2024-03-01 10:00", 2, 1)
        assert first["start"] == at(0)
        days = run(conn, user_activities, d, timescale="day")["rows"]
        assert [r["label"] for r in days] == [f"2024-03-{n:02d}" for n in range(1, 10)]
        assert [(r["opens"], r["clicks"], r["transactions"], r["amount"]) for r in days[:2]] == [
            (2, 4, 0, 0.0),
            (1, 1, 1, 40.5),
        ]
        assert days[8]["opens"] == 1
        halves = run(conn, user_activities, d, timescale="30min")["rows"]
        assert [(r["label"], r["opens"], r["clicks"]) for r in halves[:2]] == [
            ("2024-03-01 10:00", 1, 1),
            ("2024-03-01 10:30", 1, 0),
        ]
        # In UTC the same events fall an hour earlier on the clock.
        utc = run(conn, user_activities, d, UTC_ZONE)["rows"][0]
        assert utc["label"] == "2024-03-01 09:00"
        with pytest.raises(ReportError):
            run(conn, user_activities, d, timescale="week")


def test_local_bins_follow_daylight_saving_time() -> None:
    # Paris skips 02:00-03:00 on 2024-03-31 and repeats 02:00-03:00 on 2024-10-27.
    spring = datetime(2024, 3, 30, 23, 0, tzinfo=UTC)  # local midnight of the 31st
    hours = list(local_bins(spring, spring + timedelta(hours=22, minutes=45), "1h", PARIS))
    assert len(hours) == 23
    assert [local_label(h, "1h", PARIS) for h in hours[1:3]] == [
        "2024-03-31 01:00",
        "2024-03-31 03:00",
    ]
    autumn = datetime(2024, 10, 26, 22, 0, tzinfo=UTC)
    hours = list(local_bins(autumn, autumn + timedelta(hours=24, minutes=45), "1h", PARIS))
    assert len(hours) == 25
    labels = [local_label(h, "1h", PARIS) for h in hours[2:4]]
    assert labels == ["2024-10-27 02:00 CEST", "2024-10-27 02:00 CET"]
    days = list(local_bins(spring, spring + timedelta(days=1, hours=1), "day", PARIS))
    assert [local_label(x, "day", PARIS) for x in days] == ["2024-03-31", "2024-04-01"]


def test_hot_clicks_overlay(ctx: Context) -> None:
    d = build(ctx)
    with ctx.engine.connect() as conn:
        data = run(conn, hot_clicks, d)
    # 5 clicks + 1 opt-out visit + 1 mirror view = 7 visits of tracked links.
    assert data["total_visits"] == 7
    assert [(r["label"], r["clicks"], r["share"]) for r in data["links"]] == [
        ("Shop", 2, 28.57),
        ("Blog", 3, 42.86),
        ("Nobody", 0, 0.0),
    ]
    assert data["legend"] == [
        {"type": "opt-out", "visits": 1, "share": 14.29},
        {"type": "mirror", "visits": 1, "share": 14.29},
    ]
    html = data["html"]
    shop = '<a href="https://a.example/shop" title="Shop">'
    assert shop + '<mark class="msgtrack-share">28.57 %</mark>Shop now</a>' in html
    assert (
        "<a href='https://b.example/blog'><mark class=\"msgtrack-share\">42.86 %</mark>Blog</a>"
        in html
    )
    assert '<mark class="msgtrack-share">0 %</mark>Nobody clicks' in html
    # Nothing else of the content changed: remove the badges and the stylesheet, get it back.
    stripped = html.replace(hot_clicks.STYLESHEET, "")
    for share in ("28.57", "42.86", "0"):
        stripped = stripped.replace(f'<mark class="msgtrack-share">{share} %</mark>', "")
    assert stripped == HTML
    assert data["text"] == (
        "Shop: https://a.example/shop [28.57 %]\nBlog (https://b.example/blog [42.86 %]).\n"
    )


def csv_rows(answer: Any) -> list[dict[str, str]]:
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(answer.text)))


def test_api_pages_csv_and_global_range(ctx: Context) -> None:
    d = build(ctx)
    with ctx.engine.begin() as conn:
        token = create_api_token(conn)
        set_user(conn, "ada", PASSWORD)
    client = TestClient(create_app(ctx), base_url="http://testserver")
    api = {"Authorization": f"Bearer {token}"}
    base = f"/api/deliveries/{d.id}/reports"
    streams = client.get(f"{base}/click-streams", params={"view": "category"}, headers=api)
    assert streams.status_code == 200 and streams.json()["timezone"] == "UTC"
    links = csv_rows(client.get(f"{base}/click-streams?view=category&format=csv", headers=api))
    assert links == [
        {"key": r["key"], "clicks": str(r["clicks"]), "percent": str(r["percent"])}
        for r in streams.json()["links"]
    ]
    stats = client.get(f"{base}/tracking-statistics?timescale=3h", headers=api).json()
    exported = csv_rows(
        client.get(f"{base}/tracking-statistics?timescale=3h&format=csv", headers=api)
    )
    assert [int(r["opens"]) for r in exported] == [r["opens"] for r in stats["rows"]]
    milestones = csv_rows(
        client.get(f"{base}/tracking-statistics?format=csv&table=milestones", headers=api)
    )
    assert len(milestones) == 6 and milestones[0]["elapsed"] == "1 h"
    assert client.get(f"{base}/tracking-statistics?timescale=7h", headers=api).status_code == 400
    assert client.get(f"{base}/click-streams?period=1y", headers=api).status_code == 400
    assert client.get(f"{base}/nope", headers=api).status_code == 422
    assert client.get(f"/api/deliveries/{10**9}/reports/hot-clicks", headers=api).status_code == 404

    # Global: the deliveries started in the range; no platform average, no period.
    first = START.date()
    week = {"since": str(first - timedelta(days=1)), "until": str(first + timedelta(days=1))}
    pooled = client.get("/api/reports/click-streams", params=week, headers=api).json()
    assert pooled["counters"]["total_clicks"] == 5
    assert all(r["platform_average"] is None for r in pooled["rates"])
    later = {"since": str(first + timedelta(days=1)), "until": str(first + timedelta(days=20))}
    nothing = client.get("/api/reports/user-activities", params=later, headers=api).json()
    assert nothing["rows"] == [] and nothing["totals"]["clicks"] == 0
    assert (
        client.get("/api/reports/click-streams", params={**week, "period": "6h"}, headers=api)
    ).status_code == 400
    reversed_range = {"since": str(first), "until": str(first - timedelta(days=1))}
    assert (
        client.get("/api/reports/hot-clicks", params=reversed_range, headers=api).status_code == 400
    )

    # The pages: the switches are links keeping the other parameters.
    sign_in(client)
    page = client.get(f"/deliveries/{d.id}/reports/click-streams?period=6h")
    assert page.status_code == 200
    assert f'href="/deliveries/{d.id}/reports/click-streams?period=6h&amp;view=url"' in page.text
    content = client.get(f"/deliveries/{d.id}/reports/hot-clicks/content")
    assert content.status_code == 200 and "28.57 %" in content.text
    policy = content.headers["content-security-policy"]
    assert policy.startswith("sandbox;") and "script-src" not in policy
    assert "frame-ancestors 'self'" in policy
    signed_out = TestClient(create_app(ctx), base_url="http://testserver")
    answer = signed_out.get(
        f"/deliveries/{d.id}/reports/hot-clicks/content", follow_redirects=False
    )
    assert answer.status_code == 303


def test_a_delivery_without_events_or_start(ctx: Context) -> None:
    with ctx.engine.begin() as conn:
        d = add_delivery(conn, "Draft", links=[("https://a.example/", "A")], state="draft")
    with ctx.engine.connect() as conn:
        stats = run(conn, tracking_statistics, d)
        assert stats["rows"] == [] and stats["start"] is None
        assert all(m["reached_at"] is None for m in stats["milestones"])
        streams = run(conn, click_streams, d, period="24h")
        assert streams["links"] == [{"key": "A", "clicks": 0, "percent": 0.0}]
        assert streams["days"] == []
        assert run(conn, user_activities, d)["rows"] == []
        assert run(conn, hot_clicks, d)["total_visits"] == 0
        missing = Scope(10**9, None, None, PARIS)
        for report in (click_streams, tracking_statistics, user_activities, hot_clicks):
            assert report.build(conn, missing, ReportQuery()) is None
    assert date(2024, 3, 1) == START.date()
