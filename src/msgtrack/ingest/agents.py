"""User agents at ingestion: each event's user agent parsed into browser, operating system
and device class, counted per delivery and hour, and its visitor counted once per
delivery — what the breakdown-of-opens, browsers and operating-systems reports read.

Parsing uses ua-parser (the maintained Python port of the uap-core rules, with its
precompiled ``ua-parser-builtins``). It costs about a millisecond per string, but a
campaign's events carry few distinct user agents, so results are cached per string.

Like ``aggregate.apply_events`` (which calls ``apply_agents``) everything is
order-independent: buckets are sums, and a visitor's first event is the minimum of
(time, agent), so an earlier event arriving late moves the visitor (its count leaves the
old hour and agent for the new ones) and recompute equals incremental ingestion.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING

import ua_parser

from msgtrack.storage import agents as store
from msgtrack.storage.agents import Agent, VisitorFirst

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from msgtrack.ingest.aggregate import CountedEvent

OTHER = "Other"  # what the parser calls what it does not know
NAME_MAX = 100  # agent_buckets.name
VERSION_MAX = 40  # agent_buckets.version

# Device classes (SPEC §7: desktop / mobile, plus what else shows up in opens).
DESKTOP, MOBILE, TABLET, BOT, UNKNOWN = "desktop", "mobile", "tablet", "bot", "other"
MOBILE_OS = frozenset(
    {
        "iOS",
        "Android",
        "Windows Phone",
        "Windows Mobile",
        "BlackBerry OS",
        "BlackBerry Tablet OS",
        "KaiOS",
        "Firefox OS",
        "Symbian OS",
        "Tizen",
        "webOS",
        "HarmonyOS",
    }
)
DESKTOP_OS = frozenset(
    {
        "Windows",
        "Mac OS X",
        "Linux",
        "Ubuntu",
        "Debian",
        "Fedora",
        "Red Hat",
        "SUSE",
        "Mint",
        "Kubuntu",
        "Chrome OS",
        "FreeBSD",
        "OpenBSD",
        "NetBSD",
        "Solaris",
    }
)
TABLET_HINTS = ("iPad", "Kindle", "Tablet", "Nexus 7", "Nexus 9", "Nexus 10")
CACHE_SIZE = 4096  # distinct user agents kept parsed


def _version(*parts: str | None) -> str:
    """The major version (and more parts when asked), or "" when unknown."""
    known = [p for p in parts if p]
    return ".".join(known[: len(parts)])[:VERSION_MAX] if parts and parts[0] else ""


def _device_class(ua: str, parsed: ua_parser.Result) -> str:
    device = parsed.device.family if parsed.device else OTHER
    brand = (parsed.device.brand or "") if parsed.device else ""
    os_family = parsed.os.family if parsed.os else OTHER
    browser = parsed.user_agent.family if parsed.user_agent else OTHER
    if device == "Spider":
        return BOT
    if "Proxy" in browser:  # e.g. Gmail's image proxy: the reader's device is unknown
        return UNKNOWN
    if (
        any(h in device for h in TABLET_HINTS)
        or "Tablet" in brand
        or (os_family == "Android" and "Mobile" not in ua)
    ):
        return TABLET
    if os_family in MOBILE_OS or device in ("iPhone", "iPod") or "Mobile" in browser:
        return MOBILE
    if os_family in DESKTOP_OS or os_family.startswith("Windows") or device == "Mac":
        return DESKTOP
    return UNKNOWN


@lru_cache(maxsize=CACHE_SIZE)
def parse_agent(ua: str | None) -> Agent:
    """A user agent string as browser, OS (names and major versions) and device class."""
    if not ua:
        return Agent(OTHER, "", OTHER, "", UNKNOWN)
    parsed = ua_parser.parse(ua)
    browser, os_ = parsed.user_agent, parsed.os
    os_family = os_.family if os_ else OTHER
    # macOS kept "10" as its major for 15 years: its minor is what people name.
    os_version = (
        _version(os_.major, os_.minor)
        if os_ and os_family == "Mac OS X" and os_.major == "10"
        else _version(os_.major if os_ else None)
    )
    return Agent(
        (browser.family if browser else OTHER)[:NAME_MAX],
        _version(browser.major if browser else None),
        os_family[:NAME_MAX],
        os_version,
        _device_class(ua, parsed),
    )


def visitor_key(e: CountedEvent) -> str | None:
    """Who the event counts as a visitor: the visitor cookie, or (cookieless, a mail
    client loading the beacon) the message read with that user agent; None if neither."""
    if e.visitor_id:
        return e.visitor_id
    if e.message_id is None:
        return None
    digest = hashlib.blake2b((e.user_agent or "").encode(), digest_size=8).hexdigest()
    return f"m{e.message_id}:{digest}"


def _hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def apply_agents(conn: Connection, events: Sequence[CountedEvent]) -> None:
    """Count ``events`` (rows just inserted, never a replay) into agent buckets and
    delivery visitors."""
    if not events:
        return
    # (delivery, hour, agent) -> [events, opens, clicks, visitors]
    counts: dict[tuple[int, datetime, Agent], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    firsts: dict[tuple[int, str], VisitorFirst] = {}
    for e in events:
        agent = parse_agent(e.user_agent)
        row = counts[(e.delivery_id, _hour(e.at), agent)]
        row[0] += 1
        row[1] += e.type == "open"
        row[2] += e.type == "click"
        key = visitor_key(e)
        if key is not None:
            seen = firsts.get((e.delivery_id, key))
            if seen is None or (e.at, agent) < (seen.at, seen.agent):
                firsts[(e.delivery_id, key)] = VisitorFirst(e.at, agent)

    known = store.visitor_firsts(conn, firsts)
    new: dict[tuple[int, str], VisitorFirst] = {}
    moved: dict[tuple[int, str], VisitorFirst] = {}
    for pair, first in firsts.items():
        old = known.get(pair)
        if old is None:
            new[pair] = first
        elif (first.at, first.agent) < (old.at, old.agent):
            moved[pair] = first
            counts[(pair[0], _hour(old.at), old.agent)][3] -= 1
        else:
            continue
        counts[(pair[0], _hour(first.at), first.agent)][3] += 1
    store.add_visitors(conn, new)
    store.move_visitors(conn, moved)

    rows = []
    for (delivery_id, hour, a), (n, opens, clicks, visitors) in counts.items():
        if not (n or visitors):
            continue
        for dimension, name, version in (
            ("browser", a.browser, a.browser_version),
            ("os", a.os, a.os_version),
        ):
            rows.append(
                {
                    "delivery_id": delivery_id,
                    "bucket": hour,
                    "dimension": dimension,
                    "name": name,
                    "version": version,
                    "device_class": a.device_class,
                    "events": n,
                    "opens": opens,
                    "clicks": clicks,
                    "visitors": visitors,
                }
            )
    store.add_to_buckets(conn, rows)
