"""Reports at scale: every report page and API call of a delivery of 1 million messages,
measured with 10 thousand, 100 thousand, 1 million and 10 million tracking events, on
SQLite and PostgreSQL, over HTTP against a real ``msgtrack serve`` (issue 4, "Speed").

    # smoke run (a few minutes)
    python benchmarks/bench_reports.py --backend sqlite --messages 20000 --steps 1000,10000,100000

    # the issue's run: 1 M messages, events grown 10 k -> 10 M (hours; the machine is shared)
    nice -n 10 python benchmarks/bench_reports.py --backend sqlite
    nice -n 10 python benchmarks/bench_reports.py --backend postgresql

    # measure again on the data kept by a previous run (no generation)
    python benchmarks/bench_reports.py --backend sqlite --reuse
    python benchmarks/bench_reports.py --backend postgresql --reuse

    # the curve and tables again from the saved results, without measuring
    python benchmarks/bench_reports.py --backend sqlite --report-only

What is built, and how (each aggregate stays consistent with the rows it summarizes):

- Recipients (``--messages``, default 1,000,000) inserted in bulk (the driver's
  executemany on SQLite, COPY on PostgreSQL): realistic mail domains (gmail.com,
  yahoo.com, orange.fr, ... and a long tail of company domains, so the per-domain tables
  have an "others" row), 4 % text-only, a customer id and a city in their fields.
- The delivery is the newsletter of ``bench_render.py`` (~10 KB HTML, 30 tracked links of
  which two personalized, text part, opt-out and mirror links) created by
  ``msgtrack.delivery.create.create_delivery`` and analysed by
  ``msgtrack.delivery.analyse.prepare_delivery`` (the real INSERT ... SELECT of the
  messages). Sending is simulated by two bulk UPDATEs: every message sent over ~2 hours
  (sizes as rendered: ~12 KB, ~3 KB text-only), then 2.8 % failed with real SMTP
  answers and their qualified reasons (user unknown, invalid domain, mailbox full,
  account disabled, policy rejection, unreachable). Three small peer deliveries sent in
  the previous weeks feed the platform averages, the delivery list and the global reports.
- Tracking events: each one generated deterministically (the same events whatever the
  steps). Mix: ~45 % opens, ~45 % clicks over the links with a long tail (Zipf), 1.5 %
  opt-out visits, 2.5 % mirror views, 4 % web pages and 1 % purchases with an amount
  (session mode: attached to the message), and 0.3 % confirmed unsubscriptions;
  activity skewed over the recipients (a few heavy readers, most open once or never;
  text-only messages never open); times spread over 7 days after each message's send,
  decaying; ~50 user agents (Apple Mail, Gmail's and Yahoo's image proxies, Outlook,
  Thunderbird, desktop and mobile browsers, tablets, a scanner bot), in coherent
  mail-client/browser pairs per recipient; a visitor cookie per clicking browser, 5 %
  forwarded to a second one.
- Loading them (``--load auto``, the default): up to ``--ingest-limit`` (1 M) events are
  written as real event-log segments (``encode_event``, the tracking server's line
  format) and loaded by the real ingestion (``ingest_once``, batches of 10,000), which
  fills every table the product fills (tracking logs, visitors, persons, opt-outs, every
  counter and bucket). Beyond that, the new events are bulk-inserted as ``tracking_logs``
  (and ``unsubscriptions``) rows with the storage layer's own ``add_tracking_logs``
  (COPY / executemany), then ``msgtrack recompute`` (``recompute.recompute``) rebuilds
  every counter, time bucket, visitor and agent aggregate of the delivery from its
  tracking logs, and the send-side aggregates from its messages, with the very
  ``apply_events`` ingestion uses (rebuilt == incremental is tested by the project).
  Why: on this shared 2-core machine, ingestion of a delivery of 1 M messages ran at
  ~1,100-1,300 events/s (9 M more events: 2-2.5 hours per backend), recompute at
  ~2,700 events/s (1 M events of a 200,000-message delivery in 376 s), so bulk +
  recompute of 10 M takes about an hour, on either backend (``--load ingest`` or
  ``--load recompute`` force one way). (Those rates were measured while ingestion still
  looked visitors up by visitor id alone, which no index served; it now asks one delivery
  at a time, along the primary key.) After each load the counters are checked against the rows
  (opens, clicks, opt-outs, mirror views, pages; event buckets per type).
- Events grow cumulatively through ``--steps`` (default 10 k, 100 k, 1 M, 10 M).
  PostgreSQL gets a VACUUM ANALYZE after each load (what autovacuum does on its own a
  little later); SQLite gets nothing (the product never runs ANALYZE).

At each step a real ``msgtrack serve`` is started on 127.0.0.1 and measured from this
process over HTTP with httpx (keep-alive, one request at a time): each report of
``msgtrack.reports.catalog.available()`` (read when measuring, so reports added later
are included) as a page (signed in with the session cookie) and as API JSON (API token),
for the delivery and globally; the dashboard and its API (first page, a page deep in the
message keyset, the failed messages); the tracking tab and its API (first page, a page
~10,000 events deep reached through the ``next`` links, a page in the middle of the
keyset (a cursor of the form ``next`` has, 36 hours after the send), two rare types); the
delivery list; the heaviest clicker's recipient page; a few report variants (other
views, periods and timescales) as API calls. One warm-up, then ``--requests`` (30)
requests each, bounded by ``--max-seconds`` per address; p50 and p95 (nearest rank)
per address. Generation runs niced; the measuring server and client run at
``--measure-nice`` (0), one measurement at a time on the machine (a lock in
benchmarks/out/), so a run per backend can go side by side.
Streamed CSV exports (the tracking tab and the message list) are read up to
``--export-mb`` MB each (the first N MB, then the connection is closed): time to first
byte, MB/s, and the serve process's resident memory (VmRSS before, the highest sampled
during, after).

Output: tables on stdout and in benchmarks/out/bench_reports-{backend}.md, raw numbers in
benchmarks/out/bench_reports-{backend}.json, the curve (p95 against events, log x) in
benchmarks/out/bench_reports-{backend}.png when matplotlib is importable (it is not a
dependency: ``pip install matplotlib`` by hand). The data is kept for ``--reuse`` in
benchmarks/out/reports-data-{backend}/ (and the PostgreSQL database
``msgtrack_bench_reports``); ``--drop`` removes it at the end.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_render import newsletter  # noqa: E402
from common import Timer  # noqa: E402

OUT = Path(__file__).parent / "out"
PG_ROOT = os.environ.get("MSGTRACK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
PG_DB = "msgtrack_bench_reports"
LIMIT_MS = 150.0
CHUNK = 10_000  # events per deterministic generation chunk
SEND_MS = 7  # one message every 7 ms: 1 M messages in ~2 hours
PASSWORD = "bench reports password"
SEED = 4

# -- what the data looks like --------------------------------------------------------------

# Mail domains of a French/European audience, by share; the long tail makes "others".
DOMAINS = [
    ("gmail.com", 27.0), ("orange.fr", 8.0), ("hotmail.com", 6.5), ("yahoo.com", 4.5),
    ("free.fr", 5.0), ("hotmail.fr", 4.0), ("outlook.fr", 2.5), ("outlook.com", 3.0),
    ("icloud.com", 4.0), ("sfr.fr", 3.0), ("laposte.net", 3.0), ("wanadoo.fr", 2.5),
    ("yahoo.fr", 3.0), ("live.fr", 1.5), ("gmx.de", 1.5), ("web.de", 1.2),
    ("aol.com", 0.8), ("msn.com", 0.7), ("protonmail.com", 0.6), ("neuf.fr", 0.8),
    ("bbox.fr", 0.7), ("me.com", 0.6), ("googlemail.com", 0.3), ("t-online.de", 0.8),
    ("libero.it", 0.6), ("telefonica.net", 0.4), ("skynet.be", 0.5), ("bluewin.ch", 0.4),
]  # fmt: skip
COMPANY_DOMAINS = 400  # acme-123.example-style company domains sharing the rest
COMPANY_SHARE = 11.0
FIRST_NAMES = [
    ("Camille", "camille"), ("Léa", "lea"), ("Chloé", "chloe"), ("Manon", "manon"),
    ("Inès", "ines"), ("Jade", "jade"), ("Louise", "louise"), ("Emma", "emma"),
    ("Lucas", "lucas"), ("Hugo", "hugo"), ("Théo", "theo"), ("Nathan", "nathan"),
    ("Raphaël", "raphael"), ("Jules", "jules"), ("Farid", "farid"), ("Dmitri", "dmitri"),
    ("Anna", "anna"), ("Jonas", "jonas"), ("Sofia", "sofia"), ("Marco", "marco"),
]  # fmt: skip
LAST_NAMES = [
    ("Martin", "martin"), ("Bernard", "bernard"), ("Dubois", "dubois"), ("Thomas", "thomas"),
    ("Robert", "robert"), ("Richard", "richard"), ("Petit", "petit"), ("Durand", "durand"),
    ("Leroy", "leroy"), ("Moreau", "moreau"), ("Müller", "muller"), ("Schmidt", "schmidt"),
    ("García", "garcia"), ("Rossi", "rossi"), ("Nguyen", "nguyen"), ("Benali", "benali"),
]  # fmt: skip
CITIES = ["Paris", "Lyon", "Marseille", "Toulouse", "Lille", "Nantes", "Bordeaux", "Berlin"]
TEXT_ONLY_SHARE = 0.04

# (share, failure_type, failure_code, SMTP answer): 2.8 % of the messages fail.
FAILURE_SHARE = 0.028
FAILURES = [
    (0.42, "hard", "user_unknown",
     "550 5.1.1 <{email}>: Recipient address rejected: User unknown in virtual mailbox table"),
    (0.08, "hard", "user_unknown",
     "550-5.1.1 The email account that you tried to reach does not exist. Please try "
     "double-checking the recipient's email address for typos or unnecessary spaces."),
    (0.09, "hard", "invalid_domain",
     "550 5.1.2 <{email}>: Host or domain name not found. Name service error for "
     "name={domain} type=MX: Host not found"),
    (0.14, "soft", "mailbox_full",
     "452 4.2.2 The email account that you tried to reach is over quota."),
    (0.07, "soft", "account_disabled",
     "550 5.2.1 The email account that you tried to reach is disabled."),
    (0.12, "soft", "rejected",
     "554 5.7.1 Service unavailable; Client host [198.51.100.17] blocked using zen.spamhaus.org"),
    (0.08, "soft", "unreachable",
     "421 4.4.2 {domain}: Connection timed out"),
]  # fmt: skip

# User agents: (mail client that loads the beacon, browser that follows the links, weight).
# Several versions per family; a recipient keeps one pair (chosen from its message id).
IPHONE_MAIL = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_7_10 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
]
IPHONE_SAFARI = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_7_10 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
]
IPAD_MAIL = [
    "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"
]
IPAD_SAFARI = [
    "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1"
]
GMAIL_PROXY = [
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
]
YAHOO_PROXY = ["YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"]
WIN_CHROME = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.0.0 Safari/537.36",
]
WIN_EDGE = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.0.0",
]
WIN_FIREFOX = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0",
]
MAC_CHROME = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
]
MAC_SAFARI = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
]
MAC_FIREFOX = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:133.0) Gecko/20100101 Firefox/133.0"
]
MAC_MAIL = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
]
LINUX_FIREFOX = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
]
LINUX_CHROME = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
]
CHROME_OS = [
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
]
OUTLOOK = [
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)",
    "Mozilla/4.0 (compatible; ms-office; MSOffice 16)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; Trident/7.0; .NET4.0C; .NET4.0E; Microsoft Outlook 16.0.5446; ms-office; MSOffice 16)",
]
THUNDERBIRD = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.16.0",
]
ANDROID_WEBVIEW = [
    "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240905.003; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/131.0.6778.39 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-A536B Build/TP1A.220624.014; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/130.0.6723.107 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; 23049PCD8G Build/UKQ1.231003.002; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/129.0.6668.100 Mobile Safari/537.36",
]
ANDROID_CHROME = [
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.0.0 Mobile Safari/537.36",
]
SAMSUNG = [
    "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-A546B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
]
ANDROID_FIREFOX = ["Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0"]
ANDROID_TABLET = [
    "Mozilla/5.0 (Linux; Android 13; SM-X205) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
]
OPERA = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 OPR/115.0.0.0"
]
IE11 = ["Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko"]
OUTLOOK_IOS = ["Outlook-iOS/723.4027091.prod.iphone (4.2446.0)"]
SCANNER = [
    "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
]
PROFILES = [
    (IPHONE_MAIL, IPHONE_SAFARI, 26), (GMAIL_PROXY, WIN_CHROME, 12), (GMAIL_PROXY, MAC_CHROME, 3),
    (ANDROID_WEBVIEW, ANDROID_CHROME, 11), (OUTLOOK, WIN_EDGE, 6), (OUTLOOK, WIN_CHROME, 3),
    (MAC_MAIL, MAC_SAFARI, 7), (YAHOO_PROXY, WIN_FIREFOX, 2), (YAHOO_PROXY, WIN_CHROME, 2),
    (WIN_CHROME, WIN_CHROME, 5), (WIN_FIREFOX, WIN_FIREFOX, 4), (WIN_EDGE, WIN_EDGE, 2),
    (MAC_FIREFOX, MAC_FIREFOX, 1), (ANDROID_WEBVIEW, SAMSUNG, 4), (THUNDERBIRD, LINUX_FIREFOX, 1),
    (THUNDERBIRD, WIN_FIREFOX, 1), (IPAD_MAIL, IPAD_SAFARI, 3), (ANDROID_TABLET, ANDROID_TABLET, 1),
    (LINUX_CHROME, LINUX_CHROME, 1), (CHROME_OS, CHROME_OS, 1), (ANDROID_FIREFOX, ANDROID_FIREFOX, 1),
    (OPERA, OPERA, 0.5), (IE11, IE11, 0.3), (OUTLOOK_IOS, IPHONE_SAFARI, 1), (SCANNER, SCANNER, 0.4),
]  # fmt: skip
USER_AGENTS = sorted({ua for o, c, _ in PROFILES for ua in (*o, *c)})

# Event mix (kind, share); "unsubscribe" is the confirmation POST, not an event.
KINDS = [
    ("open", 0.45), ("click", 0.447), ("opt-out", 0.015), ("mirror", 0.025),
    ("web", 0.04), ("transaction", 0.01), ("unsubscribe", 0.003),
]  # fmt: skip
OPENERS = 0.40  # share of the HTML messages that open at all
CLICKERS = 0.12  # share of the sent messages that click (the most engaged openers)
SKEW = 1.3  # rank = floor(n * u ** SKEW): a few heavy readers, a long tail
WEEK = 7 * 86400.0


def weighted_table(items: list[tuple[Any, float]], size: int = 10_000) -> list[Any]:
    """A lookup table in which each item fills a share of the slots."""
    total = sum(w for _, w in items)
    table: list[Any] = []
    for item, w in items:
        table += [item] * max(1, round(size * w / total))
    return table


def mix(n: int) -> int:
    """A cheap deterministic hash of an integer (Knuth's multiplicative)."""
    return (n * 2654435761 + 0x9E3779B9) & 0xFFFFFFFF


def visitor_cookie(message_id: int, k: int) -> str:
    """The visitor cookie of a recipient's k-th browser (22 characters like the server's)."""
    digest = hashlib.blake2b(f"{message_id}:{k}".encode(), digest_size=16).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


# -- the home and the database ---------------------------------------------------------------


def data_home(args: argparse.Namespace) -> Path:
    return Path(args.home) if args.home else OUT / f"reports-data-{args.backend}"


def db_url(args: argparse.Namespace, home: Path) -> str:
    if args.backend == "postgresql":
        return f"{PG_ROOT}/{args.pg_database}"
    return f"sqlite:///{home / 'msgtrack.db'}"


def server_env(args: argparse.Namespace, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSGTRACK_")}
    env.update(
        MSGTRACK_HOME=str(home),
        MSGTRACK_DB=db_url(args, home),
        MSGTRACK_TIMEZONE=args.timezone,
        PYTHONUNBUFFERED="1",
    )
    return env


def drop_data(args: argparse.Namespace, home: Path) -> None:
    if args.backend == "postgresql":
        import psycopg

        with psycopg.connect(f"{PG_ROOT}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{args.pg_database}" WITH (FORCE)')
    if home.exists():
        shutil.rmtree(home)


def open_context(args: argparse.Namespace, home: Path, *, create: bool) -> Any:
    from msgtrack.config import load_settings
    from msgtrack.context import Context
    from msgtrack.setup import ensure_ready

    if create and args.backend == "postgresql":
        import psycopg

        with psycopg.connect(f"{PG_ROOT}/postgres", autocommit=True) as admin:
            exists = admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (args.pg_database,)
            ).fetchone()
            if not exists:
                admin.execute(f'CREATE DATABASE "{args.pg_database}"')
    for k, v in server_env(args, home).items():
        if k.startswith("MSGTRACK_"):
            os.environ[k] = v
    ctx = Context(load_settings(home))
    if args.backend == "postgresql" and os.getpriority(os.PRIO_PROCESS, 0) > 0:
        # The generation is niced; so are the PostgreSQL backends doing its work (a
        # measuring server's own connections keep the usual priority).
        from sqlalchemy import event

        @event.listens_for(ctx.engine, "connect")
        def _nice_backend(dbapi_conn: Any, _record: Any) -> None:
            with dbapi_conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                pid = cur.fetchone()[0]
            try:
                os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0))
            except (PermissionError, ProcessLookupError):
                pass

    if create:
        ensure_ready(ctx)
    return ctx


def read_meta(home: Path) -> dict[str, Any] | None:
    path = home / "bench_meta.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_meta(home: Path, meta: dict[str, Any]) -> None:
    path = home / "bench_meta.json"
    path.write_text(json.dumps(meta, indent=2, sort_keys=True))


# -- building the base: recipients, deliveries, messages ----------------------------------------


def _sqlite_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def insert_recipients(ctx: Any, count: int) -> None:
    """``count`` recipients in bulk; recipient i (from 1) is user number i."""
    rng = random.Random(SEED)
    company = [
        (f"{w}-{n}.example", 1.0)
        for n, w in zip(
            range(COMPANY_DOMAINS),
            itertools.cycle(
                ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell"]
            ),
        )
    ]
    domains = weighted_table(
        DOMAINS + [(d, COMPANY_SHARE / COMPANY_DOMAINS * w) for d, w in company], 100_000
    )
    now = datetime.now(UTC)
    cols = ("email", "email_key", "first_name", "last_name", "email_format", "fields",
            "created_at", "updated_at")  # fmt: skip
    pg = ctx.engine.dialect.name == "postgresql"
    batch: list[tuple[Any, ...]] = []

    def flush(conn: Any) -> None:
        if not batch:
            return
        if pg:
            raw = conn.connection.driver_connection
            with (
                raw.cursor() as cur,
                cur.copy(f"COPY recipients ({', '.join(cols)}) FROM STDIN") as copy,
            ):
                for row in batch:
                    copy.write_row(row)
        else:
            conn.exec_driver_sql(
                f"INSERT INTO recipients ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                batch,
            )
        batch.clear()

    with ctx.engine.begin() as conn:
        for i in range(1, count + 1):
            first, first_slug = FIRST_NAMES[rng.randrange(len(FIRST_NAMES))]
            last, last_slug = LAST_NAMES[rng.randrange(len(LAST_NAMES))]
            email = f"{first_slug}.{last_slug}.{i}@{domains[rng.randrange(len(domains))]}"
            fmt = "text" if rng.random() < TEXT_ONLY_SHARE else "html"
            fields = json.dumps({"customer_id": f"C{i:07d}", "city": CITIES[i % len(CITIES)]})
            created = now - timedelta(days=30 + rng.randrange(900))
            stamp = created if pg else _sqlite_time(created)
            batch.append((email, email, first, last, fmt, fields, stamp, stamp))
            if len(batch) >= 50_000:
                flush(conn)
        flush(conn)


def simulate_send(
    ctx: Any, delivery_id: int, started: datetime, share_failed: float
) -> dict[str, Any]:
    """What a send run leaves: every message sent (one every SEND_MS ms, sizes as
    rendered), then a share failed with real SMTP answers and qualified reasons. Returns
    what event generation needs to know of the messages."""
    from sqlalchemy import bindparam, func, select, text, update

    from msgtrack.storage.schema import deliveries, messages

    m = messages
    pg = ctx.engine.dialect.name == "postgresql"
    with ctx.engine.begin() as conn:
        first_id = conn.execute(
            select(func.min(m.c.id)).where(m.c.delivery_id == delivery_id)
        ).scalar_one()
        if pg:
            at = "(:t0 + (id - :first) * :ms * interval '1 millisecond')"
            t0: Any = started
        else:
            at = (
                "(strftime('%Y-%m-%d %H:%M:%S', :t0, '+' || ((id - :first) * :ms / 1000) "
                "|| ' seconds') || '.000000')"
            )
            t0 = started.strftime("%Y-%m-%d %H:%M:%S")
        conn.execute(
            text(
                f"UPDATE messages SET status = 'sent', attempts = 1, sent_at = {at}, "
                f"done_at = {at}, size_bytes = CASE WHEN text_only THEN 3000 + id % 500 "
                "ELSE 12100 + id % 700 END WHERE delivery_id = :d"
            ),
            {"t0": t0, "first": first_id, "ms": SEND_MS, "d": delivery_id},
        )
        rows = conn.execute(
            select(m.c.id, m.c.recipient_id, m.c.email, m.c.domain, m.c.text_only)
            .where(m.c.delivery_id == delivery_id)
            .order_by(m.c.id)
        ).all()
        rng = random.Random(SEED + delivery_id)
        table = weighted_table([(f, f[0]) for f in FAILURES], 1000)
        failed_updates = []
        failed: set[int] = set()
        for r in rows:
            if rng.random() >= share_failed:
                continue
            _, ftype, code, answer = table[rng.randrange(len(table))]
            sent_at = started + timedelta(milliseconds=(r.id - first_id) * SEND_MS)
            done = (
                sent_at if ftype == "hard" else sent_at + timedelta(seconds=60 + 300 + 900 + 3600)
            )
            failed.add(r.id)
            failed_updates.append(
                {
                    "b_id": r.id,
                    "b_type": ftype,
                    "b_code": code,
                    "b_reason": answer.format(email=r.email, domain=r.domain),
                    "b_attempts": 1 if ftype == "hard" else 5,
                    "b_done": done,
                }
            )
        if failed_updates:
            conn.execute(
                update(m)
                .where(m.c.id == bindparam("b_id"))
                .values(
                    status="failed",
                    failure_type=bindparam("b_type"),
                    failure_code=bindparam("b_code"),
                    failure_reason=bindparam("b_reason"),
                    attempts=bindparam("b_attempts"),
                    sent_at=None,
                    done_at=bindparam("b_done", type_=m.c.done_at.type),
                ),
                failed_updates,
            )
        last = (
            started + timedelta(milliseconds=(rows[-1].id - first_id) * SEND_MS)
            if rows
            else started
        )
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id)
            .values(state="sent", started_at=started, sent_at=last + timedelta(minutes=1))
        )
    sent = [r for r in rows if r.id not in failed]
    return {
        "first_id": first_id,
        "started": started.timestamp(),
        "ids": [r.id for r in sent],
        "recipients": [r.recipient_id for r in sent],
        "text_only": [bool(r.text_only) for r in sent],
        "failed": len(failed),
    }


def add_peer_delivery(ctx: Any, name: str, started: datetime, size: int, offset: int) -> int:
    """A small delivery sent earlier (the platform average's pool): created for real,
    its messages inserted directly for recipients offset .. offset + size (analysis
    would target all the recipients), counted as analysis counts them."""
    from sqlalchemy import func, insert, select, update

    from msgtrack.delivery.create import create_delivery
    from msgtrack.storage import send_stats
    from msgtrack.storage.deliveries import count_text_only, record_analysis
    from msgtrack.storage.schema import deliveries, messages, recipients

    html, text = newsletter()
    did = create_delivery(
        ctx, name=name, subject="News for {{ recipient.first_name }}", html=html, text=text
    )
    r = recipients
    with ctx.engine.begin() as conn:
        people = conn.execute(
            select(r.c.id, r.c.email, r.c.email_format)
            .where(r.c.id > offset)
            .order_by(r.c.id)
            .limit(size)
        ).all()
        conn.execute(
            insert(messages),
            [
                {
                    "delivery_id": did,
                    "recipient_id": p.id,
                    "email": p.email,
                    "domain": p.email.rsplit("@", 1)[1],
                    "status": "pending",
                    "text_only": p.email_format == "text",
                }
                for p in people
            ],
        )
        n = conn.execute(select(func.count()).where(messages.c.delivery_id == did)).scalar_one()
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == did)
            .values(state="prepared", prepared_at=started, initial_population=n, to_deliver=n)
        )
        record_analysis(
            conn, did, {"initial_population": n, "to_deliver": n}, count_text_only(conn, did)
        )
        send_stats.record_processed(conn, did)
    return did


# -- events ---------------------------------------------------------------------------------


@dataclass
class Population:
    """What event generation knows of one delivery's sent messages."""

    delivery_id: int
    ids: list[int]
    recipients: list[int]
    text_only: list[bool]
    started: float
    first_id: int
    open_url: int
    opt_out_url: int
    mirror_url: int
    links: list[tuple[int, tuple[str, ...]]]  # (tracked URL id, its personalization fields)
    link_table: list[int] = field(default_factory=list)  # indexes into links, Zipf-weighted
    order: list[int] = field(default_factory=list)  # engagement order: indexes into ids

    def prepare(self) -> None:
        rng = random.Random(SEED * 31 + self.delivery_id)
        self.order = list(range(len(self.ids)))
        rng.shuffle(self.order)
        self.link_table = weighted_table(
            [
                (i, 1.0 / (rank + 1) ** 1.1)
                for rank, i in enumerate(rng.sample(range(len(self.links)), len(self.links)))
            ],
            10_000,
        )


def load_population(ctx: Any, delivery_id: int) -> Population:
    from sqlalchemy import func, select

    from msgtrack.links.personalize import parse_url_template
    from msgtrack.storage.schema import deliveries, messages, tracked_urls

    m, u = messages, tracked_urls
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(m.c.id, m.c.recipient_id, m.c.text_only)
            .where(m.c.delivery_id == delivery_id, m.c.status == "sent")
            .order_by(m.c.id)
        ).all()
        first_id = conn.execute(
            select(func.min(m.c.id)).where(m.c.delivery_id == delivery_id)
        ).scalar_one()
        started = conn.execute(
            select(deliveries.c.started_at).where(deliveries.c.id == delivery_id)
        ).scalar_one()
        urls = conn.execute(
            select(u.c.id, u.c.type, u.c.url)
            .where(u.c.delivery_id == delivery_id)
            .order_by(u.c.ordinal)
        ).all()
    by_type = {t.type: t.id for t in urls if t.type != "click"}
    links = [
        (t.id, tuple(e.removeprefix("recipient.") for e in parse_url_template(t.url).expressions))
        for t in urls
        if t.type == "click"
    ]
    pop = Population(
        delivery_id,
        [r.id for r in rows],
        [r.recipient_id for r in rows],
        [bool(r.text_only) for r in rows],
        started.timestamp(),
        first_id,
        by_type["open"],
        by_type["opt-out"],
        by_type["mirror"],
        links,
    )
    pop.prepare()
    return pop


def events(pop: Population, start: int, stop: int, now: float) -> Iterator[Any]:
    """Events number start .. stop - 1 of the delivery, the same ones whatever the steps
    (each CHUNK comes from its own seeded generator)."""
    from msgtrack.tracking.events import Event

    kinds = weighted_table(KINDS, 10_000)
    profiles = weighted_table([((o, c), w) for o, c, w in PROFILES], 1000)
    n_sent = len(pop.ids)
    openers = max(1, int(n_sent * OPENERS))
    clickers = max(1, int(n_sent * CLICKERS))
    for chunk in range(start // CHUNK, (stop - 1) // CHUNK + 1):
        rng = random.Random(f"{SEED}:{pop.delivery_id}:{chunk}")
        for n in range(chunk * CHUNK, (chunk + 1) * CHUNK):
            kind = kinds[rng.randrange(len(kinds))]
            u = rng.random()
            pick = rng.random()
            delay_roll = rng.random()
            delay_u = rng.random()
            extra = rng.random()
            if n < start:
                continue
            if n >= stop:
                return
            # Who: opens among the openers (never text-only: no beacon), the rest among
            # the engaged clickers (who are the top of the openers).
            span = openers if kind == "open" else clickers
            rank = int(span * u**SKEW)
            index = pop.order[rank % n_sent]
            if kind == "open" and pop.text_only[index]:
                index = pop.order[(rank + 1 + int(pick * 97)) % n_sent]
                if pop.text_only[index]:
                    kind = "mirror"
            mid = pop.ids[index]
            rid = pop.recipients[index]
            sent_at = pop.started + (mid - pop.first_id) * SEND_MS / 1000
            # When: most within hours of the send, a long tail over the week.
            if delay_roll < 0.55:
                delay = -math.log(1 - delay_u) * 2 * 3600
            elif delay_roll < 0.88:
                delay = -math.log(1 - delay_u) * 20 * 3600
            else:
                delay = delay_u * WEEK
            t = min(sent_at + 30 + delay, sent_at + WEEK, now - 60)
            mail_ua, browser_ua = profiles[mix(mid) % len(profiles)]
            h = mix(mid ^ 0x5BD1E995)
            ip = f"{(h >> 24) % 200 + 11}.{(h >> 16) & 255}.{(h >> 8) & 255}.{h & 255 or 1}"
            browser = browser_ua[h % len(browser_ua)]
            k = 0 if extra < 0.95 else (1 if extra < 0.99 else 2)  # forwarded: another browser
            if kind == "open":
                yield Event(t, "open", pop.delivery_id, mid, pop.open_url, None, ip,
                            mail_ua[h % len(mail_ua)])  # fmt: skip
            elif kind == "click":
                url_id, names = pop.links[pop.link_table[int(pick * len(pop.link_table))]]
                values = tuple(
                    f"C{rid:07d}" if f == "customer_id" else CITIES[rid % len(CITIES)]
                    for f in names
                )
                yield Event(t, "click", pop.delivery_id, mid, url_id, visitor_cookie(mid, k),
                            ip if k == 0 else f"203.0.113.{k}", browser, values)  # fmt: skip
            elif kind in ("opt-out", "mirror"):
                url = pop.opt_out_url if kind == "opt-out" else pop.mirror_url
                yield Event(t, kind, pop.delivery_id, mid, url, visitor_cookie(mid, 0), ip, browser)
            elif kind == "unsubscribe":
                yield Event(t, "unsubscribe", pop.delivery_id, mid, pop.opt_out_url,
                            visitor_cookie(mid, 0), ip, browser,
                            source="one-click" if pick < 0.6 else "form")  # fmt: skip
            else:  # web pages and purchases after a click (session mode)
                amount = (
                    round(math.exp(3.6 + 0.7 * (pick - 0.5) * 3), 2)
                    if kind == "transaction"
                    else None
                )
                yield Event(min(t + 120, now - 30), kind, pop.delivery_id, mid, None, visitor_cookie(mid, 0), ip,
                            browser, amount=amount,
                            articles=1 + int(pick * 4) if kind == "transaction" else None)  # fmt: skip


def write_segments(ctx: Any, pop: Population, start: int, stop: int, tag: str) -> tuple[int, int]:
    """The events as sealed event-log segments (~64 MB each); (files, bytes)."""
    from msgtrack.tracking.events import encode_event

    events_dir = ctx.settings.events_dir
    events_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    files, size, f, seq = 0, 0, None, 0
    written = 0
    name = ""
    try:
        for ev in events(pop, start, stop, now):
            if f is None or written > 64 * 1024 * 1024:
                if f is not None:
                    f.close()
                    (events_dir / f"{name}.sealed").touch()
                seq += 1
                name = f"bench-{tag}-{pop.delivery_id}x{start}-{seq:06d}.log"
                f = open(events_dir / name, "xb")
                files += 1
                written = 0
            line = encode_event(ev)
            f.write(line)
            written += len(line)
            size += len(line)
    finally:
        if f is not None:
            f.close()
            (events_dir / f"{name}.sealed").touch()
    return files, size


def bulk_rows(ctx: Any, pop: Population, start: int, stop: int) -> int:
    """``--load recompute``: the events inserted as tracking_logs (and unsubscriptions)
    rows the way ingestion builds them, without counting anything."""
    from sqlalchemy import select

    from msgtrack.links.personalize import parse_url_template
    from msgtrack.storage import tracking as store
    from msgtrack.storage.schema import tracked_urls

    with ctx.engine.connect() as conn:
        templates = {
            r.id: parse_url_template(r.url)
            for r in conn.execute(
                select(tracked_urls.c.id, tracked_urls.c.url).where(
                    tracked_urls.c.delivery_id == pop.delivery_id
                )
            )
        }
    recipient_of = dict(zip(pop.ids, pop.recipients, strict=True))
    rows: list[dict[str, Any]] = []
    unsubs: list[dict[str, Any]] = []
    segment = f"bulk-{pop.delivery_id}-{start}"
    count = 0

    def flush() -> None:
        with ctx.engine.begin() as conn:
            store.add_tracking_logs(conn, rows)
            store.add_unsubscriptions(conn, unsubs)
        rows.clear()
        unsubs.clear()

    for n, ev in enumerate(events(pop, start, stop, time.time())):
        common = {
            "segment": segment, "offset": n, "delivery_id": ev.delivery_id,
            "message_id": ev.message_id, "recipient_id": recipient_of[ev.message_id],
            "at": datetime.fromtimestamp(ev.t, UTC), "ip": ev.ip, "user_agent": ev.user_agent,
        }  # fmt: skip
        if ev.kind == "unsubscribe":
            unsubs.append({**common, "source": ev.source})
        else:
            tpl = templates.get(ev.url_id) if ev.url_id is not None else None
            rows.append({
                **common, "tracked_url_id": ev.url_id, "type": ev.kind, "visitor_id": ev.visitor_id,
                "url": tpl.resolve(ev.values) if tpl is not None and tpl.personalized else None,
                "amount": ev.amount, "articles": ev.articles,
            })  # fmt: skip
        count += 1
        if len(rows) >= 20_000:
            flush()
    flush()
    return count


def load_events(
    ctx: Any, pop: Population, start: int, stop: int, how: str, tag: str
) -> dict[str, float]:
    """Events start .. stop - 1 into the database, counted: timings of each part."""
    out: dict[str, float] = {}
    _load(ctx, pop, start, stop, how, tag, out)
    return out


def _load(
    ctx: Any, pop: Population, start: int, stop: int, how: str, tag: str, out: dict[str, float]
) -> None:
    from msgtrack.ingest.loader import ingest_once
    from msgtrack.ingest.recompute import recompute

    if how == "ingest":
        with Timer() as tw:
            files, size = write_segments(ctx, pop, start, stop, tag)
        with Timer() as ti:
            stats = ingest_once(ctx, batch_size=10_000)
        out.update(write_s=tw.seconds, ingest_s=ti.seconds, loaded=stats.loaded,
                   rejected=stats.rejected, segment_mb=size / 1e6)  # fmt: skip
        if stats.rejected:
            print(f"  warning: {stats.rejected} lines rejected by ingestion", flush=True)
        # The segments are loaded: their lines are in the database now.
        for path in ctx.settings.events_dir.glob(f"bench-{tag}-{pop.delivery_id}x{start}-*"):
            path.unlink()
    else:
        with Timer() as tb:
            out["loaded"] = bulk_rows(ctx, pop, start, stop)
        with Timer() as tr:
            recompute(ctx, pop.delivery_id, batch_size=10_000)
        out.update(bulk_s=tb.seconds, recompute_s=tr.seconds)


def vacuum_analyze(ctx: Any) -> float:
    if ctx.engine.dialect.name != "postgresql":
        return 0.0
    with Timer() as t:
        with ctx.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    return t.seconds


def finish_pending(ctx: Any, home: Path, meta: dict[str, Any]) -> None:
    """A load that was interrupted: an ingestion resumes from its checkpoints (exactly
    once); anything else cannot be resumed and is refused."""
    pending = meta.get("pending")
    if not pending:
        return
    if pending["how"] != "ingest":
        raise SystemExit(f"an interrupted {pending['how']} load left the data unusable: rebuild it")
    from msgtrack.ingest.loader import ingest_once

    print(f"finishing the interrupted ingestion {pending['start']:,} -> {pending['stop']:,}")
    with Timer() as t:
        ingest_once(ctx, batch_size=10_000)
    for path in ctx.settings.events_dir.glob("bench-main-*"):
        path.unlink()
    meta["events"] = pending["stop"]
    meta["generation"]["steps"][str(pending["stop"])] = {
        "how": "ingest (resumed)",
        "total_s": t.seconds,
    }
    meta.pop("pending")
    write_meta(home, meta)


def build_base(args: argparse.Namespace, ctx: Any, home: Path) -> dict[str, Any]:
    """Recipients, the big delivery, its messages and the peers; meta for the rest."""
    from msgtrack.delivery.analyse import prepare_delivery
    from msgtrack.delivery.create import create_delivery
    from msgtrack.ingest.recompute import recompute
    from msgtrack.storage.auth import create_api_token
    from msgtrack.storage.users import set_user

    times: dict[str, float] = {}
    now = datetime.now(UTC).replace(microsecond=0)
    # Sent 8 days ago at 09:00 UTC: its week of events is over, within the global
    # reports' default 30 days (for about three weeks of --reuse).
    started = (now - timedelta(days=8)).replace(hour=9, minute=0, second=0)
    with Timer() as t:
        insert_recipients(ctx, args.messages)
    times["recipients_s"] = t.seconds
    print(f"  {args.messages:,} recipients in {t.seconds:.1f} s", flush=True)
    html, text = newsletter()
    with Timer() as t:
        did = create_delivery(ctx, name="Spring sale — newsletter", subject="News for {{ recipient.first_name }}",
                              html=html, text=text)  # fmt: skip
        prepare_delivery(ctx, did)
    times["analysis_s"] = t.seconds
    with Timer() as t:
        sent = simulate_send(ctx, did, started, FAILURE_SHARE)
    times["send_s"] = t.seconds
    print(f"  delivery {did}: analysis {times['analysis_s']:.1f} s, send simulated in {t.seconds:.1f} s "
          f"({sent['failed']:,} failed)", flush=True)  # fmt: skip
    peers = []
    with Timer() as t:
        for n in range(args.peers):
            when = started - timedelta(days=7 * (n + 1))
            size = min(5000, args.messages)
            pid = add_peer_delivery(
                ctx, f"Weekly news #{40 - n}", when, size, (n * 7919) % max(1, args.messages - size)
            )
            simulate_send(ctx, pid, when, FAILURE_SHARE)
            pop = load_population(ctx, pid)
            load_events(ctx, pop, 0, size * 4, "ingest", "peer")
            peers.append(pid)
    times["peers_s"] = t.seconds
    with Timer() as t:
        recompute(ctx, did)  # the send-side aggregates, from the messages
    times["recompute_base_s"] = t.seconds
    with ctx.engine.begin() as conn:
        set_user(conn, "bench", PASSWORD)
        token = create_api_token(conn, "bench_reports")
    return {
        "backend": args.backend,
        "messages": args.messages,
        "delivery_id": did,
        "peer_ids": peers,
        "events": 0,
        "token": token,
        "started": started.isoformat(),
        "generation": {"base": times, "steps": {}},
    }


def event_counts(ctx: Any, delivery_id: int) -> dict[str, int]:
    from sqlalchemy import func, select

    from msgtrack.storage.schema import (
        agent_buckets,
        delivery_indicators,
        delivery_persons,
        delivery_visitors,
        event_buckets,
        tracking_logs,
        unsubscriptions,
        visitors,
    )

    out = {}
    with ctx.engine.connect() as conn:
        for name, table in (
            ("tracking_logs", tracking_logs), ("unsubscriptions", unsubscriptions),
            ("event_buckets", event_buckets), ("agent_buckets", agent_buckets),
            ("delivery_visitors", delivery_visitors), ("delivery_persons", delivery_persons),
        ):  # fmt: skip
            out[name] = int(conn.execute(
                select(func.count()).select_from(table).where(table.c.delivery_id == delivery_id)
            ).scalar_one())  # fmt: skip
        out["visitors"] = int(conn.execute(select(func.count()).select_from(visitors)).scalar_one())
        # The counters the reports read agree with the rows they summarize.
        by_type = dict(
            conn.execute(
                select(tracking_logs.c.type, func.count())
                .where(tracking_logs.c.delivery_id == delivery_id)
                .group_by(tracking_logs.c.type)
            ).all()
        )
        ind = conn.execute(
            select(delivery_indicators).where(delivery_indicators.c.delivery_id == delivery_id)
        ).one()
        buckets = dict(
            conn.execute(
                select(event_buckets.c.metric, func.sum(event_buckets.c.events))
                .where(event_buckets.c.delivery_id == delivery_id)
                .group_by(event_buckets.c.metric)
            ).all()
        )
        expected = {
            "total_opens": by_type.get("open", 0),
            "total_clicks": by_type.get("click", 0),
            "opt_outs": by_type.get("opt-out", 0),
            "mirror_views": by_type.get("mirror", 0),
            "visited_pages": by_type.get("web", 0) + by_type.get("transaction", 0),
        }
        wrong = {k: (getattr(ind, k), v) for k, v in expected.items() if getattr(ind, k) != v}
        wrong.update(
            {
                f"event_buckets {t}": (int(buckets.get(t) or 0), n)
                for t, n in by_type.items()
                if int(buckets.get(t) or 0) != n
            }
        )
        out["consistent"] = not wrong
        if wrong:
            print(f"  warning: counters disagree with the rows: {wrong}", flush=True)
    return out


# -- measuring ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int, field_name: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


class Server:
    """``msgtrack serve`` in a subprocess, on the benchmark's home."""

    def __init__(self, args: argparse.Namespace, home: Path, log: Path) -> None:
        import httpx

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "msgtrack", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=server_env(args, home), stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"msgtrack serve exited {self.proc.returncode}: see {log}")
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"msgtrack serve did not answer /health: see {log}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def ready_server(
    args: argparse.Namespace, home: Path, log: Path, meta: dict[str, Any]
) -> tuple[Server, Any]:
    """A started server and a client signed in to it. Other people edit the working tree
    while this runs: when the server cannot start or answer, wait (up to --serve-wait
    minutes) rather than lose the step."""
    import httpx

    deadline = time.monotonic() + args.serve_wait * 60
    while True:
        server = None
        try:
            server = Server(args, home, log)
            client = httpx.Client(base_url=server.base, timeout=120, follow_redirects=False)
            sign_in(client)
            probe = client.get(
                f"/api/deliveries/{meta['delivery_id']}",
                headers={"Authorization": f"Bearer {meta['token']}"},
            )
            if probe.status_code != 200:
                raise SystemExit(f"the API answers {probe.status_code}")
            return server, client
        except (SystemExit, Exception) as exc:
            if server is not None:
                server.stop()
            if time.monotonic() > deadline:
                raise
            print(f"  msgtrack serve not usable ({exc}): retrying in 60 s", flush=True)
            time.sleep(60)


def sign_in(client: Any) -> None:
    form = client.get("/signin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    if csrf is None:
        raise SystemExit("no CSRF token in the sign-in form")
    done = client.post(
        "/signin", data={"csrf": csrf.group(1), "username": "bench", "password": PASSWORD}
    )
    if done.status_code not in (200, 303) or "msgtrack_session" not in client.cookies:
        raise SystemExit(f"sign-in failed: {done.status_code}")


@dataclass
class Address:
    label: str  # shown in the tables
    path: str
    api: bool
    group: str  # delivery report, global report, screen


def addresses(meta: dict[str, Any], api: Any, heavy_email: str) -> list[Address]:
    """Every address measured: the catalog's reports (read now, so reports added since the
    data was built are included) and the screens of issue 4."""
    catalog = importlib.import_module("msgtrack.reports.catalog")
    did = meta["delivery_id"]
    out: list[Address] = []
    for report in catalog.available():
        n = report.name
        out += [
            Address(f"report {n}", f"/deliveries/{did}/reports/{n}", False, "delivery report"),
            Address(f"report {n}", f"/api/deliveries/{did}/reports/{n}", True, "delivery report"),
        ]
    for report in catalog.available():
        n = report.name
        out += [
            Address(f"global {n}", f"/reports/{n}", False, "global report"),
            Address(f"global {n}", f"/api/reports/{n}", True, "global report"),
        ]
    names = {r.name for r in catalog.available()}
    variants = [
        ("click-streams", "view=category&period=24h"), ("click-streams", "view=url&period=6h"),
        ("tracking-statistics", "timescale=24h"), ("user-activities", "timescale=30min"),
        ("breakdown-of-opens", "view=device&mobile=true"), ("throughput", "timescale=15min"),
        ("non-deliverables", "view=domain"),
    ]  # fmt: skip
    for n, q in variants:
        if n in names:
            out.append(
                Address(
                    f"report {n}?{q}", f"/api/deliveries/{did}/reports/{n}?{q}", True, "variant"
                )
            )
    # A page of messages in the middle of the keyset, and the failed ones.
    mid = meta.get("middle_message_id")
    deep_cursor = meta.get("deep_cursor")
    middle_cursor = meta.get("middle_cursor")
    screens = [
        ("dashboard", f"/deliveries/{did}", f"/api/deliveries/{did}"),
        ("dashboard messages deep", f"/deliveries/{did}?after={mid}", f"/api/deliveries/{did}?after={mid}"),
        ("dashboard failed messages", f"/deliveries/{did}?status=failed", f"/api/deliveries/{did}?status=failed"),
        ("tracking tab", f"/deliveries/{did}/tracking", f"/api/deliveries/{did}/tracking"),
        ("tracking tab deep", f"/deliveries/{did}/tracking?before={deep_cursor}",
         f"/api/deliveries/{did}/tracking?before={deep_cursor}"),
        ("tracking tab middle", f"/deliveries/{did}/tracking?before={middle_cursor}",
         f"/api/deliveries/{did}/tracking?before={middle_cursor}"),
        ("tracking tab type=transaction", f"/deliveries/{did}/tracking?type=transaction",
         f"/api/deliveries/{did}/tracking?type=transaction"),
        ("tracking tab type=opt-out", f"/deliveries/{did}/tracking?type=opt-out",
         f"/api/deliveries/{did}/tracking?type=opt-out"),
        ("deliveries list", "/deliveries", "/api/deliveries"),
        ("recipient (heaviest clicker)", f"/recipients/{heavy_email}", f"/api/recipients/{heavy_email}"),
    ]  # fmt: skip
    for label, page, api_path in screens:
        if "None" in page:
            continue
        out.append(Address(label, page, False, "screen"))
        out.append(Address(label, api_path, True, "screen"))
    out.append(
        Address("indicators (first API)", f"/api/deliveries/{did}/indicators", True, "screen")
    )
    return out


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def time_address(
    client: Any, addr: Address, headers: dict[str, str], n: int, budget: float
) -> dict[str, Any]:
    times: list[float] = []
    statuses: set[int] = set()
    size = 0
    began = time.monotonic()
    import httpx

    for i in range(n + 1):
        t0 = time.perf_counter()
        try:
            r = client.get(addr.path, headers=headers)
        except httpx.TransportError as exc:  # the server died (another session's edit?)
            statuses.add(0)
            print(f"    {addr.path}: {exc!r}", flush=True)
            break
        body = r.content
        dt = (time.perf_counter() - t0) * 1000
        statuses.add(r.status_code)
        size = len(body)
        if i > 0:  # the first one warms up
            times.append(dt)
        if i >= 5 and time.monotonic() - began > budget:
            break
    if not times:
        times = [float("nan")]
    return {
        "p50": statistics.median(times),
        "p95": nearest_rank(times, 0.95),
        "max": max(times),
        "n": len(times),
        "status": sorted(statuses),
        "bytes": size,
    }


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_kb(pid)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, rss_kb(self.pid))


def time_export(
    client: Any, path: str, headers: dict[str, str], limit_mb: float, pid: int
) -> dict[str, Any]:
    """Read a streamed CSV up to ``limit_mb`` MB (then close): first byte, rate, memory."""
    before = rss_kb(pid)
    sampler = RssSampler(pid)
    sampler.start()
    t0 = time.perf_counter()
    first = None
    size = 0
    lines = 0
    complete = True
    with client.stream("GET", path, headers=headers, timeout=600) as r:
        status = r.status_code
        for chunk in r.iter_bytes():
            if first is None:
                first = time.perf_counter() - t0
            size += len(chunk)
            lines += chunk.count(b"\n")
            if size >= limit_mb * 1e6:
                complete = False
                break
    total = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    time.sleep(0.5)
    return {
        "status": status,
        "ttfb_ms": (first or total) * 1000,
        "seconds": total,
        "mb": size / 1e6,
        "rows": max(0, lines - 1),
        "mb_per_s": size / 1e6 / total if total else 0,
        "complete": complete,
        "rss_before_mb": before / 1024,
        "rss_peak_mb": sampler.peak / 1024,
        "rss_after_mb": rss_kb(pid) / 1024,
    }


def deep_cursor(client: Any, did: int, headers: dict[str, str], hops: int) -> str | None:
    """The ``next`` cursor after ``hops`` pages of 500 events (as a user paging would get)."""
    cursor = None
    for _ in range(hops):
        params = {"limit": 500, **({"before": cursor} if cursor else {})}
        r = client.get(f"/api/deliveries/{did}/tracking", params=params, headers=headers)
        r.raise_for_status()
        nxt = r.json().get("next")
        if not nxt:
            break
        cursor = nxt
    return cursor


def middle_cursor(ctx: Any, pop: Population) -> str | None:
    """A cursor (the form the API's ``next`` has) at the event 36 hours after the send:
    about the middle of the keyset, millions of events deep at 10 M."""
    from sqlalchemy import select

    from msgtrack.reports.deliveries import encode_cursor
    from msgtrack.storage.schema import tracking_logs as t

    at = datetime.fromtimestamp(pop.started + 36 * 3600, UTC)
    with ctx.engine.connect() as conn:
        row = conn.execute(
            select(t.c.at, t.c.id)
            .where(t.c.delivery_id == pop.delivery_id, t.c.at >= at)
            .order_by(t.c.at, t.c.id)
            .limit(1)
        ).first()
    return None if row is None else encode_cursor(row.at, row.id)


def heaviest_clicker(ctx: Any, pop: Population) -> tuple[str, int]:
    from sqlalchemy import select

    from msgtrack.storage.schema import messages

    mid = pop.ids[pop.order[0]]
    with ctx.engine.connect() as conn:
        row = conn.execute(
            select(messages.c.email, messages.c.click_count).where(messages.c.id == mid)
        ).one()
    return row.email, int(row.click_count)


def measure(
    args: argparse.Namespace, ctx: Any, home: Path, meta: dict[str, Any], pop: Population
) -> dict[str, Any]:
    # Generation runs niced (the machine is shared); the server and the client measuring
    # it run at --measure-nice (default 0, the usual priority), or a niced server would
    # be timed against everything else the machine does.
    # One measurement at a time on this machine (a run per backend may go side by side:
    # their generations are niced, their measurements are not, so they take turns).
    import fcntl

    lock = open(OUT / ".measure.lock", "w")
    began = time.monotonic()
    fcntl.flock(lock, fcntl.LOCK_EX)
    if time.monotonic() - began > 1:
        print(f"  waited {time.monotonic() - began:.0f} s for another measurement", flush=True)
    base_nice = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, args.measure_nice)
    except PermissionError:
        print(f"  (cannot leave nice {base_nice} to measure: measuring niced)", flush=True)
    try:
        return _measure(args, ctx, home, meta, pop)
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, base_nice)
        except PermissionError:
            pass
        lock.close()


def _measure(
    args: argparse.Namespace, ctx: Any, home: Path, meta: dict[str, Any], pop: Population
) -> dict[str, Any]:
    from urllib.parse import quote

    import httpx

    did = meta["delivery_id"]
    heavy, heavy_clicks = heaviest_clicker(ctx, pop)
    meta["middle_message_id"] = pop.ids[len(pop.ids) // 2]
    log = results_stem(args).with_name(results_stem(args).name + "-serve.log")
    server, client = ready_server(args, home, log, meta)
    results: dict[str, Any] = {"addresses": {}, "exports": {}}
    try:
        api = {"Authorization": f"Bearer {meta['token']}"}
        meta["middle_cursor"] = quote(middle_cursor(ctx, pop) or "", safe="")
        meta["deep_cursor"] = quote(deep_cursor(client, did, api, args.deep_hops) or "", safe="")
        results["rss_start_mb"] = rss_kb(server.proc.pid) / 1024
        todo = addresses(meta, api, quote(heavy, safe="@"))
        print(f"  measuring {len(todo)} addresses, {args.requests} requests each "
              f"(recipient {heavy}: {heavy_clicks} clicks)", flush=True)  # fmt: skip
        for addr in todo:
            if server.proc.poll() is not None:  # died: start another one
                print(f"    msgtrack serve exited {server.proc.returncode}: restarted", flush=True)
                server.stop()
                client.close()
                server, client = ready_server(args, home, log, meta)
            headers = api if addr.api else {}
            r = time_address(client, addr, headers, args.requests, args.max_seconds)
            key = ("API " if addr.api else "page ") + addr.label
            results["addresses"][key] = {
                **r,
                "path": addr.path,
                "group": addr.group,
                "api": addr.api,
            }
            flag = "" if r["status"] == [200] else f"  status {r['status']}"
            print(f"    {key:58s} p50 {r['p50']:8.1f}  p95 {r['p95']:8.1f} ms{flag}", flush=True)
        results["rss_after_pages_mb"] = rss_kb(server.proc.pid) / 1024
        exports = [
            ("tracking CSV", f"/api/deliveries/{did}/tracking?format=csv"),
            ("messages CSV", f"/api/deliveries/{did}?format=csv"),
        ]
        for label, path in exports:
            try:
                e = time_export(client, path, api, args.export_mb, server.proc.pid)
            except httpx.HTTPError as exc:
                print(f"    export {label}: {exc!r}", flush=True)
                continue
            results["exports"][label] = {**e, "path": path}
            print(f"    export {label:16s} first byte {e['ttfb_ms']:7.1f} ms, {e['mb']:7.1f} MB "
                  f"({e['rows']:,} rows) in {e['seconds']:6.1f} s = {e['mb_per_s']:5.1f} MB/s; "
                  f"RSS {e['rss_before_mb']:.0f} -> peak {e['rss_peak_mb']:.0f} -> {e['rss_after_mb']:.0f} MB"
                  + ("" if e["complete"] else f" (first {args.export_mb:g} MB)"), flush=True)  # fmt: skip
        results["rss_end_mb"] = rss_kb(server.proc.pid) / 1024
        results["vmhwm_mb"] = rss_kb(server.proc.pid, "VmHWM") / 1024
    finally:
        client.close()
        server.stop()
    results["heaviest_clicker"] = {"email": heavy, "clicks": heavy_clicks}
    results["load"] = os.getloadavg()
    results["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    return results


# -- output -------------------------------------------------------------------------------------


def fmt_events(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size:
            v = n / size
            return f"{v:g}{unit}" if v == int(v) else f"{v:.1f}{unit}"
    return str(n)


def render(saved: dict[str, Any]) -> str:
    steps = sorted(saved["steps"], key=int)
    lines = []
    meta = saved.get("meta", {})
    lines.append(
        f"## {saved['backend']}: {meta.get('messages', 0):,} messages, events {', '.join(fmt_events(int(s)) for s in steps)}"
    )
    lines.append("")
    head = (
        "| address | "
        + " | ".join(f"p50 / p95 @ {fmt_events(int(s))}" for s in steps)
        + f" | max p95 | < {LIMIT_MS:g} ms | growth |"
    )
    lines.append(head)
    lines.append("|" + "---|" * (len(steps) + 4))
    keys: list[str] = []
    for s in steps:
        for k in saved["steps"][s]["addresses"]:
            if k not in keys:
                keys.append(k)
    failures = []
    for k in keys:
        cells = []
        p95s = []
        for s in steps:
            a = saved["steps"][s]["addresses"].get(k)
            if a is None:
                cells.append("—")
                continue
            bad = "" if a["status"] == [200] else f" ({','.join(map(str, a['status']))})"
            cells.append(f"{a['p50']:.0f} / {a['p95']:.0f}{bad}")
            p95s.append(a["p95"])
        worst = max(p95s) if p95s else float("nan")
        ok = worst < LIMIT_MS
        growth = (p95s[-1] / p95s[0]) if len(p95s) > 1 and p95s[0] > 0 else float("nan")
        if not ok:
            failures.append(k)
        lines.append(
            f"| {k} | "
            + " | ".join(cells)
            + f" | {worst:.0f} | {'pass' if ok else '**FAIL**'} | ×{growth:.1f} |"
        )
    lines.append("")
    lines.append(
        f"{len(keys) - len(failures)} of {len(keys)} addresses under {LIMIT_MS:g} ms at every step."
    )
    lines.append("")
    lines.append(
        "Streamed exports (read up to the first N MB, then closed; RSS of the serve process):"
    )
    lines.append("")
    lines.append(
        "| export | events | first byte | read | rows | MB/s | RSS before → peak → after |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for s in steps:
        for label, e in saved["steps"][s].get("exports", {}).items():
            lines.append(
                f"| {label} | {fmt_events(int(s))} | {e['ttfb_ms']:.0f} ms | {e['mb']:.1f} MB in {e['seconds']:.1f} s"
                f"{'' if e['complete'] else ' (bounded)'} | {e['rows']:,} | {e['mb_per_s']:.1f} | "
                f"{e['rss_before_mb']:.0f} → {e['rss_peak_mb']:.0f} → {e['rss_after_mb']:.0f} MB |"
            )
    lines.append("")
    lines.append(
        "| events | rows (tracking_logs, event_buckets, agent_buckets, delivery_visitors, delivery_persons) | load | serve RSS start → end | load avg |"
    )
    lines.append("|---|---|---|---|---|")
    for s in steps:
        st = saved["steps"][s]
        c = st.get("counts", {})
        g = st.get("generation", {})
        load = ", ".join(
            f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}" for k, v in g.items()
        )
        lines.append(
            f"| {fmt_events(int(s))} | {c.get('tracking_logs', 0):,}, {c.get('event_buckets', 0):,}, {c.get('agent_buckets', 0):,}, "
            f"{c.get('delivery_visitors', 0):,}, {c.get('delivery_persons', 0):,} | {load} | "
            f"{st.get('rss_start_mb', 0):.0f} → {st.get('rss_end_mb', 0):.0f} MB | "
            f"{' '.join(f'{x:.1f}' for x in st.get('load', []))} |"
        )
    return "\n".join(lines) + "\n"


def plot(saved: dict[str, Any], path: Path) -> bool:
    """p95 against events (log-log), one panel per group of addresses: pages solid, API
    calls dashed in the same colour; the slowest of each panel in black; 150 ms in red."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = sorted(saved["steps"], key=int)
    xs = [int(s) for s in steps]
    rows: dict[str, dict[str, Any]] = {}
    for s in steps:
        for k, a in saved["steps"][s]["addresses"].items():
            rows.setdefault(k, a)
    panels = [
        ("delivery reports", ("delivery report",)),
        ("global reports (last 30 days)", ("global report",)),
        ("screens, lists, report variants", ("screen", "variant")),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(18, 7.5), sharey=True)
    cmap = plt.get_cmap("tab20")
    for ax, (title, groups) in zip(axes, panels, strict=True):
        names: list[str] = []
        worst: list[list[float]] = []
        for k, a in rows.items():
            if a.get("group") not in groups:
                continue
            name = k.split(" ", 1)[1]
            if name not in names:
                names.append(name)
            ys = [saved["steps"][s]["addresses"].get(k, {}).get("p95", float("nan")) for s in steps]
            worst.append(ys)
            ax.plot(xs, ys, marker=".", linewidth=1, linestyle="--" if a.get("api") else "-",
                    color=cmap(names.index(name) % 20),
                    label=f"{name} ({'API' if a.get('api') else 'page'})")  # fmt: skip
        if worst:
            top = [
                max((v for v in col if v == v), default=float("nan"))
                for col in zip(*worst, strict=True)
            ]
            ax.plot(xs, top, color="black", linewidth=2.5, label="slowest")
        ax.axhline(LIMIT_MS, color="red", linewidth=1, label=f"{LIMIT_MS:g} ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tracking events in the database")
        ax.set_title(f"{title} — {saved['backend']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(
            fontsize=5.5, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False
        )
    axes[0].set_ylabel("p95 (ms), 30 sequential requests after a warm-up")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def results_stem(args: argparse.Namespace) -> Path:
    """benchmarks/out/bench_reports-BACKEND, with the data folder's name when not the default."""
    name = f"bench_reports-{args.backend}"
    if args.home and Path(args.home).resolve() != (OUT / f"reports-data-{args.backend}").resolve():
        name += "-" + Path(args.home).name
    return OUT / name


def save(args: argparse.Namespace, saved: dict[str, Any]) -> None:
    OUT.mkdir(exist_ok=True)
    stem = results_stem(args)
    stem.with_suffix(".json").write_text(json.dumps(saved, indent=1, default=str))
    text = render(saved)
    stem.with_suffix(".md").write_text(text)
    print()
    print(text)
    if plot(saved, stem.with_suffix(".png")):
        print(f"curve: {stem.with_suffix('.png')}")
    else:
        print("(matplotlib not importable: no curve, the tables are above)")


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--steps", default="10000,100000,1000000,10000000",
                        help="cumulative event counts at which to measure")  # fmt: skip
    parser.add_argument("--requests", type=int, default=30, help="timed requests per address")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time budget per address")
    parser.add_argument(
        "--export-mb", type=float, default=50.0, help="read at most this much of each export"
    )
    parser.add_argument(
        "--deep-hops", type=int, default=20, help="pages of 500 events before the deep page"
    )
    parser.add_argument(
        "--peers", type=int, default=3, help="small earlier deliveries (platform average)"
    )
    parser.add_argument("--load", choices=["auto", "ingest", "recompute"], default="auto",
                        help="real ingestion of event-log segments, or bulk tracking_logs + recompute")  # fmt: skip
    parser.add_argument("--ingest-limit", type=int, default=1_000_000,
                        help="--load auto: ingest up to this many events, recompute beyond")  # fmt: skip
    parser.add_argument("--serve-wait", type=float, default=120,
                        help="minutes to wait for a working msgtrack serve")  # fmt: skip
    parser.add_argument("--measure-nice", type=int, default=0,
                        help="priority of the server and client while measuring")  # fmt: skip
    parser.add_argument("--timezone", default="Europe/Paris")
    parser.add_argument(
        "--home", help="where the data is kept (default benchmarks/out/reports-data-BACKEND)"
    )
    parser.add_argument("--pg-database", default=PG_DB)
    parser.add_argument("--reuse", action="store_true",
                        help="measure the data a previous run kept (generate only steps beyond it)")  # fmt: skip
    parser.add_argument(
        "--report-only", action="store_true", help="print and plot the saved results"
    )
    parser.add_argument("--drop", action="store_true", help="remove the data at the end")
    args = parser.parse_args()
    steps = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    home = data_home(args)
    results_path = results_stem(args).with_suffix(".json")
    OUT.mkdir(exist_ok=True)

    if args.report_only:
        save(args, json.loads(results_path.read_text()))
        return

    meta = read_meta(home) if args.reuse else None
    if args.reuse and meta is None:
        raise SystemExit(f"--reuse: no data in {home}")
    if meta is not None and meta["messages"] != args.messages:
        print(
            f"--reuse: the data has {meta['messages']:,} messages (not {args.messages:,}): measuring it as it is"
        )
    saved: dict[str, Any] = {"backend": args.backend, "steps": {}}
    if args.reuse and results_path.exists():
        saved = json.loads(results_path.read_text())
    print(f"uptime: {os.getloadavg()}", flush=True)
    if meta is None:
        drop_data(args, home)
        home.mkdir(parents=True)
        ctx = open_context(args, home, create=True)
        print(f"building {args.messages:,} messages on {args.backend} in {home}", flush=True)
        with Timer() as t:
            meta = build_base(args, ctx, home)
        meta["generation"]["base"]["total_s"] = t.seconds
        vacuum_analyze(ctx)
        write_meta(home, meta)
    else:
        ctx = open_context(args, home, create=False)
    saved["meta"] = {k: v for k, v in meta.items() if k != "token"}
    pop = load_population(ctx, meta["delivery_id"])

    finish_pending(ctx, home, meta)
    todo = [s for s in steps if s > meta["events"]]
    if args.reuse and not todo:
        todo = [meta["events"]]  # nothing to add: measure the data as it is
    for step in todo:
        if step > meta["events"]:
            how = args.load
            if how == "auto":
                how = "ingest" if step <= args.ingest_limit else "recompute"
            print(f"events {meta['events']:,} -> {step:,} ({how})", flush=True)
            meta["pending"] = {"start": meta["events"], "stop": step, "how": how}
            write_meta(home, meta)
            with Timer() as t:
                g = load_events(ctx, pop, meta["events"], step, how, "main")
            g["vacuum_s"] = vacuum_analyze(ctx)
            g["total_s"] = t.seconds + g["vacuum_s"]
            g["how"] = how
            rate = (step - meta["events"]) / t.seconds
            print(f"  loaded in {t.seconds:.1f} s ({rate:,.0f} events/s): {g}", flush=True)
            meta["events"] = step
            meta.pop("pending", None)
            meta["generation"]["steps"][str(step)] = g
            write_meta(home, meta)
        print(f"measuring at {step:,} events (load {os.getloadavg()[0]:.1f})", flush=True)
        r = measure(args, ctx, home, meta, pop)
        r["counts"] = event_counts(ctx, meta["delivery_id"])
        r["generation"] = meta["generation"]["steps"].get(str(step), {})
        saved["steps"][str(step)] = r
        saved["meta"] = {k: v for k, v in meta.items() if k != "token"}
        write_meta(home, meta)
        results_path.write_text(json.dumps(saved, indent=1, default=str))
    ctx.close()
    save(args, saved)
    if args.drop:
        drop_data(args, home)


if __name__ == "__main__":
    main()
