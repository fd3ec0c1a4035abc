"""Killing an ingestion at any moment and running it again loses and duplicates nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import func, select

from factories import (
    T0,
    add_delivery,
    add_message,
    add_recipient,
    counters_snapshot,
    ev,
    write_segment,
)
from msgtrack.context import Context
from msgtrack.ingest.loader import IngestBusy, ingest_once
from msgtrack.ingest.recompute import recompute
from msgtrack.storage.schema import ingest_checkpoints, messages, tracking_logs, unsubscriptions
from msgtrack.tracking.events import Event

EVENTS = 50_000
MESSAGES = 500
KINDS = ["open"] * 5 + ["click"] * 3 + ["opt-out", "mirror"]

INGEST = """
from msgtrack.context import Context
from msgtrack.ingest.loader import ingest_once
ingest_once(Context(), batch_size=1000)
"""


def generate(ctx: Context, rng: random.Random) -> list[Event]:
    with ctx.engine.begin() as conn:
        d = add_delivery(
            conn,
            to_deliver=MESSAGES,
            links=[(f"https://example.org/{i}", f"L{i}") for i in range(3)],
        )
        mids = []
        for i in range(MESSAGES):
            email = f"r{i}@d{i % 7}.example"
            mids.append(add_message(conn, d.id, add_recipient(conn, email), email))
    events = []
    for i in range(EVENTS):
        kind = "unsubscribe" if i % 1000 == 999 else rng.choice(KINDS)
        events.append(
            ev(
                kind,
                d,
                rng.choice(mids),
                T0 + rng.uniform(0, 86_400),
                url_id=rng.choice(d.links) if kind == "click" else None,
                visitor=f"v{rng.randrange(800)}" if rng.random() < 0.8 else None,
            )
        )
    # Three segments, written out of time order; the last one unsealed.
    events_dir = ctx.settings.events_dir
    third = EVENTS // 3
    write_segment(events_dir, "n1-run1-000001.log", events[:third], sealed=True)
    write_segment(events_dir, "n1-run1-000002.log", events[third : 2 * third], sealed=True)
    write_segment(events_dir, "n2-run2-000001.log", events[2 * third :])
    return events


def expected(events: list[Event]) -> dict[str, object]:
    tracked = [e for e in events if e.kind != "unsubscribe"]
    by_kind = Counter(e.kind for e in tracked)
    first_event: dict[int, float] = {}
    first_click: dict[int, float] = {}
    for e in tracked:
        assert e.message_id is not None
        first_event[e.message_id] = min(e.t, first_event.get(e.message_id, e.t))
        if e.kind == "click":
            first_click[e.message_id] = min(e.t, first_click.get(e.message_id, e.t))
    return {
        "total_opens": by_kind["open"],
        "total_clicks": by_kind["click"],
        "opt_outs": by_kind["opt-out"],
        "mirror_views": by_kind["mirror"],
        "recipient_opens": len(first_event),
        "recipient_clicks": len(first_click),
        "person_clicks": len({e.visitor_id for e in tracked if e.kind == "click" and e.visitor_id}),
        "unsubscriptions": len({e.message_id for e in events if e.kind == "unsubscribe"}),
        "first_event": first_event,
        "first_click": first_click,
        "opens": Counter(e.message_id for e in tracked if e.kind == "open"),
        "clicks": Counter(e.message_id for e in tracked if e.kind == "click"),
    }


def wait_for_progress(ctx: Context, proc: subprocess.Popen[bytes]) -> None:
    """Until the ingestion has committed at least one batch (or ended)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        with ctx.engine.connect() as conn:
            if conn.execute(select(func.count()).select_from(ingest_checkpoints)).scalar_one():
                return
        time.sleep(0.02)


def ingest_until_free(ctx: Context) -> None:
    """A killed ingestion's database session may take a moment to end on the server."""
    for _ in range(100):
        try:
            ingest_once(ctx)
            return
        except IngestBusy:
            time.sleep(0.1)
    raise AssertionError("the lock of the killed ingestion was never released")


def test_killed_ingestion_resumes_with_exact_counts(ctx: Context, env: dict[str, str]) -> None:
    rng = random.Random(os.environ.get("MSGTRACK_TEST_SEED", "crash"))
    events = generate(ctx, rng)
    want = expected(events)

    proc = subprocess.Popen([sys.executable, "-c", INGEST], env=env)
    try:
        wait_for_progress(ctx, proc)
        time.sleep(rng.uniform(0, 0.5))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    with ctx.engine.connect() as conn:
        part = conn.execute(select(func.count()).select_from(tracking_logs)).scalar_one()
    assert part < len(events), "the kill came too late to interrupt anything"

    ingest_until_free(ctx)

    with ctx.engine.connect() as conn:
        loaded = conn.execute(select(func.count()).select_from(tracking_logs)).scalar_one()
        distinct = conn.execute(
            select(func.count()).select_from(
                select(tracking_logs.c.segment, tracking_logs.c.offset).distinct().subquery()
            )
        ).scalar_one()
        unsubs = conn.execute(select(func.count()).select_from(unsubscriptions)).scalar_one()
        rows = conn.execute(
            select(
                messages.c.id,
                messages.c.first_event_at,
                messages.c.first_click_at,
                messages.c.open_count,
                messages.c.click_count,
            )
        ).all()
    n_unsub = sum(1 for e in events if e.kind == "unsubscribe")
    assert (loaded, distinct, unsubs) == (len(events) - n_unsub, len(events) - n_unsub, n_unsub)

    snapshot = counters_snapshot(ctx.engine)
    (indicators,) = snapshot["indicators"].values()
    for name in (
        "total_opens",
        "total_clicks",
        "opt_outs",
        "mirror_views",
        "recipient_opens",
        "recipient_clicks",
        "person_clicks",
        "unsubscriptions",
    ):
        assert indicators[name] == want[name], name

    def at(t: float | None) -> datetime | None:
        return None if t is None else datetime.fromtimestamp(t, UTC)

    first_event, first_click = want["first_event"], want["first_click"]
    opens, clicks = want["opens"], want["clicks"]
    assert isinstance(first_event, dict) and isinstance(first_click, dict)
    assert isinstance(opens, Counter) and isinstance(clicks, Counter)
    for r in rows:
        assert (r.first_event_at, r.first_click_at, r.open_count, r.click_count) == (
            at(first_event.get(r.id)),
            at(first_click.get(r.id)),
            opens[r.id],
            clicks[r.id],
        )

    # And what was kept incrementally across the crash is what a rebuild finds.
    recompute(ctx)
    assert counters_snapshot(ctx.engine) == snapshot
