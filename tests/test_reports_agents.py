"""User agents: parsing, the per-delivery visitor and agent counters ingestion keeps, and
the breakdown-of-opens, browsers and operating-systems reports built on them, on both
backends, through the real ingestion and the real API.

Expected numbers are computed here from the events themselves (a plain recount of the
scenario), never read back from what the code under test stored.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from factories import T0, Delivery, add_delivery, add_message, add_recipient, ev, write_segment
from msgtrack.context import Context
from msgtrack.ingest.agents import parse_agent
from msgtrack.ingest.loader import ingest_once
from msgtrack.ingest.recompute import recompute
from msgtrack.reports import breakdown_of_opens, browsers, operating_systems
from msgtrack.reports.registry import ReportError, ReportQuery, Scope
from msgtrack.storage.auth import create_api_token
from msgtrack.storage.schema import agent_buckets, deliveries, delivery_visitors
from msgtrack.storage.users import set_user
from msgtrack.web.app import create_app
from test_web_api import PASSWORD, sign_in

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)
ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36"
)
OUTLOOK = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)"
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"
FIREFOX_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:133.0) Gecko/20100101 Firefox/133.0"
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
EMPTY = ""
SCRIPT = "<script>alert('ua')</script>"
MARKUP_BOT = "<img src=x onerror=alert(1)> bot"  # the parser keeps "> bot" as its name

# What each user agent must be parsed into: browser, version, OS, version, device class.
PARSED = {
    CHROME: ("Chrome", "131", "Windows", "10", "desktop"),
    IPHONE: ("Mobile Safari", "17", "iOS", "17", "mobile"),
    IPAD: ("Mobile Safari", "17", "iOS", "17", "tablet"),
    ANDROID: ("Chrome Mobile", "131", "Android", "14", "mobile"),
    OUTLOOK: ("Outlook", "2016", "Windows", "10", "desktop"),
    THUNDERBIRD: ("Thunderbird", "128", "Linux", "", "desktop"),
    FIREFOX_MAC: ("Firefox", "133", "Mac OS X", "10.15", "desktop"),
    BOT: ("Googlebot", "2", "Other", "", "bot"),
    EMPTY: ("Other", "", "Other", "", "other"),
    SCRIPT: ("Other", "", "Other", "", "other"),
    MARKUP_BOT: ("> bot", "", "Other", "", "bot"),
}
PARIS = ZoneInfo("Europe/Paris")
HOUR = 3600.0
DAY = 86400.0


def test_user_agents_parse_into_names_major_versions_and_device_classes() -> None:
    for ua, expected in PARSED.items():
        a = parse_agent(ua)
        assert (a.browser, a.browser_version, a.os, a.os_version, a.device_class) == expected, ua
    assert parse_agent(None) == parse_agent("")
    before = parse_agent.cache_info().hits
    parse_agent(CHROME)
    assert parse_agent.cache_info().hits == before + 1  # parsed once per distinct string


# -- the scenario --------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One event of the scenario: kind, recipient, seconds after T0, visitor, agent."""

    kind: str
    who: str
    t: float
    visitor: str | None
    ua: str


# Times span two UTC days, and 23:30 UTC is already the next day in Paris.
HITS = [
    Hit("open", "alice", 0, "va", CHROME),  # webmail in Chrome: the beacon carries cookies
    Hit("click", "alice", 60, "va", CHROME),
    Hit("click", "alice", DAY, "va", CHROME),
    Hit("open", "bob", 2 * HOUR, None, IPHONE),
    Hit("click", "bob", 2 * HOUR + 30, "vb", IPHONE),
    Hit("open", "carol", 3 * HOUR, None, ANDROID),
    Hit("click", "carol", 3 * HOUR + 5, "vc", ANDROID),
    Hit("open", "carol", 14 * HOUR + 30 * 60, None, ANDROID),  # 23:30 UTC, 00:30 in Paris
    Hit("open", "dave", 4 * HOUR, None, OUTLOOK),
    Hit("open", "dave", 5 * HOUR, None, OUTLOOK),  # same reader again: still one visitor
    Hit("open", "dave", DAY + HOUR, None, IPAD),  # the same message read on a tablet
    Hit("open", "erin", 6 * HOUR, None, THUNDERBIRD),
    Hit("mirror", "erin", 6 * HOUR + 10, None, THUNDERBIRD),
    Hit("click", "frank", 7 * HOUR, "vbot", BOT),
    Hit("open", "frank", 8 * HOUR, None, EMPTY),
    Hit("open", "grace", 9 * HOUR, None, SCRIPT),
    Hit("click", "grace", 9 * HOUR + 1, "vm", MARKUP_BOT),
    Hit("open", "heidi", DAY + 2 * HOUR, None, FIREFOX_MAC),
    Hit("click", "heidi", DAY + 2 * HOUR + 1, "vh", FIREFOX_MAC),
]
PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]


@dataclass
class Scenario:
    delivery: Delivery
    messages: dict[str, int]
    other: Delivery
    other_messages: dict[str, int]


def build(ctx: Context) -> Scenario:
    """The delivery with HITS, and a second delivery (started ten days later) where alice
    opens once in Chrome; both ingested for real."""
    with ctx.engine.begin() as conn:
        d = add_delivery(
            conn, "Agents", to_deliver=len(PEOPLE), links=[("https://a.example/", "A")]
        )
        other = add_delivery(conn, "Later", to_deliver=1, links=[("https://b.example/", "B")])
        ids = {}
        for name in PEOPLE:
            rid = add_recipient(conn, f"{name}@example.com")
            ids[name] = add_message(conn, d.id, rid, f"{name}@example.com")
        later = {"alice": add_message(conn, other.id, ids["alice"], "alice@example.com")}
        start = datetime.fromtimestamp(T0, UTC)
        for delivery_id, started in ((d.id, start), (other.id, start + timedelta(days=10))):
            conn.execute(
                update(deliveries).where(deliveries.c.id == delivery_id).values(started_at=started)
            )
    return Scenario(d, ids, other, later)


def events_of(s: Scenario, hits: list[Hit]) -> list[Any]:
    return [
        ev(
            h.kind,
            s.delivery,
            s.messages[h.who],
            T0 + h.t,
            url_id=s.delivery.links[0] if h.kind == "click" else None,
            visitor=h.visitor,
            ua=h.ua,
        )
        for h in hits
    ]


def ingest(ctx: Context, s: Scenario) -> None:
    write_segment(ctx.settings.events_dir, "n1-aaaa-000001.log", events_of(s, HITS), sealed=True)
    write_segment(
        ctx.settings.events_dir,
        "n1-aaaa-000002.log",
        [ev("open", s.other, s.other_messages["alice"], T0 + 10 * DAY, visitor="va", ua=CHROME)],
        sealed=True,
    )
    ingest_once(ctx)


# -- expectations, recounted from HITS -----------------------------------------------------


def expected(dimension: str, hits: list[Hit], tz: ZoneInfo) -> dict[str, Any]:
    """Visitors (a cookie, or a message read with one user agent; under the agent of its
    first event), pages and opens per name and per version, and per local day."""
    col = {"browser": (0, 1), "os": (2, 3)}[dimension]
    firsts: dict[Any, Hit] = {}
    for h in sorted(hits, key=lambda h: h.t):
        firsts.setdefault(h.visitor or (h.who, h.ua), h)
    names: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    versions: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    days: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])

    def add(h: Hit, i: int) -> None:
        p = PARSED[h.ua]
        name, version = p[col[0]], p[col[1]]
        names[name][i] += 1
        versions[(name, version)][i] += 1
        hour = datetime.fromtimestamp(T0 + h.t, UTC).replace(minute=0, second=0)
        day = hour.astimezone(tz)
        days[(day.date().isoformat(), name)][min(i, 1)] += 1

    for h in firsts.values():
        add(h, 0)
    for h in hits:
        add(h, 1)
        if h.kind == "open":
            p = PARSED[h.ua]
            names[p[col[0]]][2] += 1
            versions[(p[col[0]], p[col[1]])][2] += 1
    total = len(firsts)
    return {
        "visitors": total,
        "names": {n: (v, p, o, round(100 * v / total, 2)) for n, (v, p, o) in names.items()},
        "versions": {k: (v, p, o) for k, (v, p, o) in versions.items()},
        "days": {k: tuple(v) for k, v in days.items()},
    }


def check_dimension(data: dict[str, Any], want: dict[str, Any]) -> None:
    assert data["totals"]["visitors"] == want["visitors"]
    assert data["totals"]["pages"] == len(HITS)
    got = {
        r["name"]: (r["visitors"], r["pages"], r["opens"], r["usage_rate"]) for r in data["rows"]
    }
    assert got == want["names"]
    # Most visitors first.
    assert [r["visitors"] for r in data["rows"]] == sorted(
        (r["visitors"] for r in data["rows"]), reverse=True
    )
    versions = {
        (r["name"], r["version"]): (r["visitors"], r["pages"], r["opens"]) for r in data["versions"]
    }
    assert versions == want["versions"]
    days = {(r["day"], r["name"]): (r["visitors"], r["pages"]) for r in data["history"]}
    assert days == want["days"]
    # The chart's series add up to the pages of each day.
    chart = data["history_chart"]
    per_day: dict[str, int] = defaultdict(int)
    for (day, _), (_, pages) in want["days"].items():
        per_day[day] += pages
    assert {r["day"]: sum(r["pages"]) for r in chart["days"] if sum(r["pages"])} == per_day


def test_reports_count_what_the_events_say(ctx: Context) -> None:
    s = build(ctx)
    ingest(ctx, s)
    scope = Scope(s.delivery.id, None, None, PARIS)
    with ctx.engine.connect() as conn:
        for report, dimension in ((browsers, "browser"), (operating_systems, "os")):
            data = report.REPORT.build(conn, scope, ReportQuery())
            assert data is not None and data["timezone"] == "Europe/Paris"
            check_dimension(data, expected(dimension, HITS, PARIS))
        # Days in UTC differ: carol's 23:30 open is on the first day.
        data = browsers.REPORT.build(
            conn, Scope(s.delivery.id, None, None, ZoneInfo("UTC")), ReportQuery()
        )
        assert data is not None
        check_dimension(data, expected("browser", HITS, ZoneInfo("UTC")))

        opens = [h for h in HITS if h.kind == "open"]
        for view, column in (("browser", 0), ("os", 2), ("device", 4)):
            for mobile in (False, True):
                kept = [h for h in opens if not mobile or PARSED[h.ua][4] in ("mobile", "tablet")]
                counts: dict[str, int] = defaultdict(int)
                for h in kept:
                    counts[PARSED[h.ua][column]] += 1
                got = breakdown_of_opens.build(conn, scope, ReportQuery(view=view, mobile=mobile))
                assert got is not None
                assert got["view"] == view and got["mobile"] is mobile
                assert got["total_opens"] == len(kept)
                assert {r["name"]: r["opens"] for r in got["rows"]} == counts
                assert {r["name"]: r["share"] for r in got["rows"]} == {
                    k: round(100 * v / len(kept), 2) for k, v in counts.items()
                }
        with pytest.raises(ReportError):
            breakdown_of_opens.build(conn, scope, ReportQuery(view="nonsense"))
        missing = Scope(10**9, None, None, PARIS)
        for report in (browsers, operating_systems, breakdown_of_opens):
            assert report.REPORT.build(conn, missing, ReportQuery()) is None


def snapshot(ctx: Context, delivery_id: int) -> dict[str, Any]:
    with ctx.engine.connect() as conn:
        v = delivery_visitors
        b = agent_buckets
        return {
            "visitors": sorted(
                tuple(r) for r in conn.execute(select(v).where(v.c.delivery_id == delivery_id))
            ),
            "buckets": sorted(
                tuple(r) for r in conn.execute(select(b).where(b.c.delivery_id == delivery_id))
            ),
        }


def test_recompute_equals_incremental_even_when_earlier_events_arrive_late(
    ctx: Context,
) -> None:
    s = build(ctx)
    # Every event newest first, in one pass; then, in a second pass, earlier events: alice's
    # visitor turns out to have come first in Firefox (it moves from Chrome to Firefox) and
    # dave first read in Outlook an hour earlier (same agent, earlier hour).
    late = list(reversed(HITS))
    early = [
        Hit("open", "alice", -HOUR, "va", FIREFOX_MAC),
        Hit("open", "dave", 3 * HOUR, None, OUTLOOK),
    ]
    write_segment(ctx.settings.events_dir, "n1-aaaa-000001.log", events_of(s, late), sealed=True)
    ingest_once(ctx)
    write_segment(ctx.settings.events_dir, "n1-aaaa-000002.log", events_of(s, early), sealed=True)
    ingest_once(ctx)
    incremental = snapshot(ctx, s.delivery.id)
    assert incremental["buckets"] and incremental["visitors"]
    scope = Scope(s.delivery.id, None, None, PARIS)
    with ctx.engine.connect() as conn:
        data = browsers.REPORT.build(conn, scope, ReportQuery())
    assert data is not None
    check_dimension_rows = expected("browser", [*late, *early], PARIS)["names"]
    assert {
        r["name"]: (r["visitors"], r["pages"], r["opens"], r["usage_rate"]) for r in data["rows"]
    } == check_dimension_rows
    recompute(ctx, s.delivery.id)
    assert snapshot(ctx, s.delivery.id) == incremental


# -- the API -------------------------------------------------------------------------------


def csv_of(answer: Any) -> list[dict[str, str]]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(answer.text)))


def as_text(rows: list[dict[str, Any]], columns: list[str]) -> list[dict[str, str]]:
    return [{c: "" if r[c] is None else str(r[c]) for c in columns} for r in rows]


def test_api_json_csv_views_and_global_range(ctx: Context) -> None:
    s = build(ctx)
    ingest(ctx, s)
    with ctx.engine.begin() as conn:
        token = create_api_token(conn)
    client = TestClient(create_app(ctx), base_url="http://testserver")
    api = {"Authorization": f"Bearer {token}"}
    did = s.delivery.id
    for name, report in (
        ("browsers", browsers.REPORT),
        ("operating-systems", operating_systems.REPORT),
        ("breakdown-of-opens", breakdown_of_opens.REPORT),
    ):
        path = f"/api/deliveries/{did}/reports/{name}"
        data = client.get(path, headers=api).json()
        assert data["timezone"] == "UTC"
        for table, columns in report.tables.items():
            rows = csv_of(client.get(path, params={"format": "csv", "table": table}, headers=api))
            assert rows == as_text(data[table], list(columns)), (name, table)
        assert (
            client.get(path, params={"format": "csv", "table": "nope"}, headers=api).status_code
            == 400
        )
        assert client.get(f"/api/deliveries/{10**9}/reports/{name}", headers=api).status_code == 404

    path = f"/api/deliveries/{did}/reports/breakdown-of-opens"
    for view in ("browser", "os", "device"):
        for mobile in ("false", "true"):
            data = client.get(path, params={"view": view, "mobile": mobile}, headers=api).json()
            assert data["view"] == view and data["mobile"] is (mobile == "true")
            rows = csv_of(
                client.get(
                    path, params={"view": view, "mobile": mobile, "format": "csv"}, headers=api
                )
            )
            assert rows == as_text(data["rows"], ["name", "opens", "share"])
    device = client.get(path, params={"view": "device", "mobile": "true"}, headers=api).json()
    assert {r["name"] for r in device["rows"]} == {"mobile", "tablet"}
    assert client.get(path, params={"view": "nonsense"}, headers=api).status_code == 400

    # Global: the date range picks the deliveries started in it.
    first_day = datetime.fromtimestamp(T0, UTC).date()
    only_first = client.get(
        "/api/reports/browsers",
        params={
            "since": str(first_day - timedelta(days=1)),
            "until": str(first_day + timedelta(days=2)),
        },
        headers=api,
    ).json()
    assert only_first["totals"] == {
        "visitors": expected("browser", HITS, ZoneInfo("UTC"))["visitors"],
        "pages": len(HITS),
        "opens": sum(h.kind == "open" for h in HITS),
    }
    both = client.get(
        "/api/reports/browsers",
        params={"since": str(first_day), "until": str(first_day + timedelta(days=10))},
        headers=api,
    ).json()
    assert both["totals"]["pages"] == len(HITS) + 1
    assert both["totals"]["visitors"] == only_first["totals"]["visitors"] + 1
    chrome = next(r for r in both["rows"] if r["name"] == "Chrome")
    assert chrome["opens"] == sum(h.kind == "open" and h.ua == CHROME for h in HITS) + 1
    later = client.get(
        "/api/reports/breakdown-of-opens",
        params={
            "since": str(first_day + timedelta(days=10)),
            "until": str(first_day + timedelta(days=10)),
        },
        headers=api,
    ).json()
    assert later["total_opens"] == 1 and later["rows"] == [
        {"name": "Chrome", "opens": 1, "share": 100.0}
    ]


def test_pages_show_names_as_text(ctx: Context) -> None:
    """The markup a visitor puts in a user agent reaches the page escaped."""
    s = build(ctx)
    ingest(ctx, s)
    with ctx.engine.begin() as conn:
        set_user(conn, "ada", PASSWORD)
    client = TestClient(create_app(ctx), base_url="http://testserver")
    sign_in(client)
    for name in ("browsers", "breakdown-of-opens"):
        page = client.get(f"/deliveries/{s.delivery.id}/reports/{name}")
        assert page.status_code == 200, page.text
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
        # The markup bot only clicked: it is a browser, never an opener.
        assert ("&gt; bot" in page.text) is (name == "browsers")
        assert "Times in UTC" in page.text
