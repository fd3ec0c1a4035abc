"""``recompute`` rebuilds exactly what ingestion kept incrementally."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select, update

from factories import (
    T0,
    Delivery,
    add_delivery,
    add_message,
    add_recipient,
    counters_snapshot,
    ev,
    seal,
    write_segment,
)
from msgtrack.context import Context
from msgtrack.ingest.loader import ingest_once
from msgtrack.ingest.lock import IngestBusy, ingest_lock
from msgtrack.ingest.recompute import recompute
from msgtrack.reports.indicators import delivery_indicators
from msgtrack.storage import send_stats
from msgtrack.storage.schema import (
    delivery_indicators as indicators_table,
)
from msgtrack.storage.schema import (
    delivery_persons,
    domain_aliases,
    domain_sends,
    domain_stats,
    event_buckets,
    failure_stats,
    messages,
    send_buckets,
)
from msgtrack.tracking.events import Event
from test_reports_send import build_sent

T0_BUCKET = datetime(2001, 1, 1, tzinfo=UTC)
DOMAINS = ["gmail.com", "googlemail.com", "orange.fr", "example.org", "mail.example"]
KINDS = ["open", "open", "click", "click", "opt-out", "mirror", "unsubscribe"]


def build(ctx: Context, rng: random.Random) -> tuple[list[Delivery], list[Event]]:
    """Deliveries with messages of every status, and events scattered over them."""
    deliveries: list[Delivery] = []
    targets: list[tuple[Delivery, int]] = []
    with ctx.engine.begin() as conn:
        conn.execute(insert(domain_aliases).values(alias="googlemail.com", domain="gmail.com"))
        recipients = []
        for i in range(40):
            email = f"r{i}@{rng.choice(DOMAINS)}"
            recipients.append((add_recipient(conn, email), email))
        for n in range(3):
            d = add_delivery(
                conn,
                f"D{n}",
                to_deliver=0,
                links=[
                    ("https://shop.example/p/{{ recipient.id }}", "P"),
                    ("https://example.org/", "E"),
                ],
            )
            deliveries.append(d)
            for rid, email in rng.sample(recipients, 25):
                status = rng.choice(["sent"] * 6 + ["failed", "pending"])
                mid = add_message(
                    conn,
                    d.id,
                    rid,
                    email,
                    status=status,
                    text_only=rng.random() < 0.2,
                    seed=rng.random() < 0.1,
                )
                if status == "sent":
                    targets.append((d, mid))
    events = []
    for _ in range(400):
        d, mid = rng.choice(targets)
        kind = rng.choice(KINDS)
        link = rng.randrange(2)
        events.append(
            ev(
                kind,
                d,
                mid,
                T0 + rng.uniform(0, 3600),
                url_id=d.links[link] if kind == "click" else None,
                values=(str(mid),) if kind == "click" and link == 0 else (),
                visitor=rng.choice([None, *[f"v{i}" for i in range(15)]]),
            )
        )
    return deliveries, events


def ingest_in_pieces(ctx: Context, rng: random.Random, events: list[Event]) -> None:
    """Several segments, appended to between passes of various batch sizes."""
    names = ["n1-aaaa-000001.log", "n1-aaaa-000002.log", "n2-bbbb-000001.log"]
    rng.shuffle(events)  # times out of order within and across segments
    for i in range(0, len(events), 50):
        write_segment(ctx.settings.events_dir, rng.choice(names), events[i : i + 50])
        if rng.random() < 0.5:
            ingest_once(ctx, batch_size=rng.choice([1, 7, 30, 5000]))
    for name in names:
        path = ctx.settings.events_dir / name
        if path.exists():
            seal(path)
    ingest_once(ctx, batch_size=13)


def buckets_snapshot(ctx: Context) -> list[tuple[object, ...]]:
    """The non-zero time buckets (a first that moved earlier leaves a zero row behind)."""
    b = event_buckets
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(b).where(b.c.events != 0).order_by(*b.primary_key.columns))
        return [tuple(r) for r in rows]


def firsts_from_rows(ctx: Context) -> dict[tuple[int, str], int]:
    """Firsts per (delivery, metric) as messages and persons say: what the first buckets
    must add up to."""
    out: dict[tuple[int, str], int] = {}
    with ctx.engine.connect() as conn:
        for d, first_event, first_click in conn.execute(
            select(messages.c.delivery_id, messages.c.first_event_at, messages.c.first_click_at)
        ):
            out[(d, "recipient_open")] = out.get((d, "recipient_open"), 0) + (
                first_event is not None
            )
            out[(d, "recipient_click")] = out.get((d, "recipient_click"), 0) + (
                first_click is not None
            )
        for d, _, _ in conn.execute(select(delivery_persons)):
            out[(d, "person_click")] = out.get((d, "person_click"), 0) + 1
    return {k: v for k, v in out.items() if v}


def firsts_from_buckets(ctx: Context) -> dict[tuple[int, str], int]:
    out: dict[tuple[int, str], int] = {}
    for d, metric, _, _, events, _, _ in buckets_snapshot(ctx):
        if metric in ("recipient_open", "recipient_click", "person_click"):
            out[(d, metric)] = out.get((d, metric), 0) + events
    return {k: v for k, v in out.items() if v}


def scramble(ctx: Context, rng: random.Random) -> None:
    """Wrong counters everywhere, as a bug or a hand edit could leave them."""
    with ctx.engine.begin() as conn:
        conn.execute(
            update(indicators_table).values(
                success=rng.randrange(99),
                recipient_opens=7,
                total_clicks=3,
                person_clicks=0,
                unsubscriptions=9,
            )
        )
        conn.execute(update(messages).values(first_event_at=None, open_count=5, click_count=1))
        conn.execute(update(domain_stats).values(opens=3, sent=1))
        conn.execute(delete(delivery_persons))
        conn.execute(update(event_buckets).values(events=event_buckets.c.events + 1))


@pytest.mark.parametrize("seed", [1, 2])
def test_rebuilt_equals_incremental(ctx: Context, seed: int) -> None:
    rng = random.Random(seed)
    deliveries, events = build(ctx, rng)
    ingest_in_pieces(ctx, rng, events)
    incremental = counters_snapshot(ctx.engine)
    buckets = buckets_snapshot(ctx)
    reports = {d.id: delivery_indicators(ctx.engine, d.id) for d in deliveries}
    assert sum(r["total_clicks"] for r in reports.values() if r) > 0
    assert firsts_from_buckets(ctx) == firsts_from_rows(ctx)
    assert all(r[4] > 0 for r in buckets)  # no first counted negative anywhere

    recompute(ctx)
    assert counters_snapshot(ctx.engine) == incremental
    assert buckets_snapshot(ctx) == buckets

    scramble(ctx, rng)
    recompute(ctx)
    assert counters_snapshot(ctx.engine) == incremental
    assert buckets_snapshot(ctx) == buckets
    assert {d.id: delivery_indicators(ctx.engine, d.id) for d in deliveries} == reports

    # Many pages, and messages written several times over (held 5 at a time).
    scramble(ctx, rng)
    recompute(ctx, batch_size=7, hold=5)
    assert counters_snapshot(ctx.engine) == incremental
    assert buckets_snapshot(ctx) == buckets


def test_recompute_one_delivery_leaves_the_others(ctx: Context) -> None:
    rng = random.Random(3)
    deliveries, events = build(ctx, rng)
    ingest_in_pieces(ctx, rng, events)
    reports = {d.id: delivery_indicators(ctx.engine, d.id) for d in deliveries}
    scramble(ctx, rng)
    first, *rest = deliveries
    recompute(ctx, first.id)
    assert delivery_indicators(ctx.engine, first.id) == reports[first.id]
    for d in rest:
        assert delivery_indicators(ctx.engine, d.id) != reports[d.id]
    with pytest.raises(LookupError):
        recompute(ctx, 99_999)


def test_recompute_waits_for_a_running_ingestion(ctx: Context) -> None:
    rng = random.Random(4)
    deliveries, events = build(ctx, rng)
    ingest_in_pieces(ctx, rng, events)
    reports = {d.id: delivery_indicators(ctx.engine, d.id) for d in deliveries}
    scramble(ctx, rng)
    held = threading.Event()

    def ingestion() -> None:
        with ingest_lock(ctx):
            held.set()
            time.sleep(0.5)

    worker = threading.Thread(target=ingestion)
    worker.start()
    try:
        held.wait(10)
        with pytest.raises(IngestBusy):
            ingest_once(ctx)
        recompute(ctx)
    finally:
        worker.join()
    assert {d.id: delivery_indicators(ctx.engine, d.id) for d in deliveries} == reports


def test_send_side_aggregates_rebuilt_equal_incremental(
    ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sent through the real send path (successes, hard and soft refusals, a seed),
    bounced through the real bounce path (a delivered message failing hard, a soft bounce,
    a soft failure turning hard, a soft bounce of a hard failure, a complaint),
    unsubscriptions ingested: the throughput buckets, per-domain sends and per-reason
    failures rebuilt from the messages equal the ones kept as it happened."""
    sent = build_sent(ctx, tmp_path, monkeypatch)
    ids = [sent.first, sent.second]

    def send_side() -> dict[int, dict[str, object]]:
        with ctx.engine.connect() as conn:
            return {d: send_stats.snapshot(conn, d) for d in ids}

    incremental = send_side()
    counters = counters_snapshot(ctx.engine)
    first = incremental[sent.first]
    assert first["buckets"] and first["failures"]
    assert {r["domain"] for r in first["domains"] if r["unsubscriptions"]} == {
        "a.example",
        "googlemail.com",
    }
    with ctx.engine.connect() as conn:
        ind = conn.execute(
            select(indicators_table).where(indicators_table.c.delivery_id == sent.first)
        ).one()
    # The bounce counters equal the per-domain sums the reports show.
    assert ind.hard_bounces == sum(r["hard"] for r in first["domains"])
    assert ind.soft_bounces == sum(r["soft"] for r in first["domains"])

    recompute(ctx)
    assert send_side() == incremental
    assert counters_snapshot(ctx.engine) == counters

    with ctx.engine.begin() as conn:  # wrong everywhere, as a bug could leave them
        conn.execute(update(send_buckets).values(success=send_buckets.c.success + 3))
        conn.execute(delete(domain_sends).where(domain_sends.c.domain == "a.example"))
        conn.execute(update(failure_stats).values(messages=0))
        conn.execute(
            insert(send_buckets).values(delivery_id=sent.first, bucket=T0_BUCKET, success=9)
        )
    recompute(ctx)
    assert send_side() == incremental
    assert counters_snapshot(ctx.engine) == counters


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_visitor_lookups_follow_the_primary_key_as_a_rebuild_refills_them(ctx: Context) -> None:
    """Statistics taken while a delivery had no visitors make PostgreSQL read every
    visitor of the delivery for each (delivery, visitor) IN (...) lookup; the rebuild's
    refresh lets the lookup descend the primary key for the ids it asks for."""
    from sqlalchemy import text

    from msgtrack.storage import tracking as store

    with ctx.engine.begin() as conn:
        d = add_delivery(conn)
    with ctx.engine.connect() as conn:
        conn.execute(text("ANALYZE delivery_visitors"))  # empty, as before a first rebuild
        conn.commit()
        with conn.begin():
            conn.execute(
                text(
                    "INSERT INTO delivery_visitors (delivery_id, visitor_id, first_at) "
                    "SELECT :d, 'v' || lpad(n::text, 6, '0'), :at "
                    "FROM generate_series(0, 99999) AS n"
                ),
                {"d": d.id, "at": T0_BUCKET},
            )
            ids = ", ".join(f"'v{n:06d}'" for n in range(0, 100_000, 200))
            lookup = (
                "EXPLAIN SELECT * FROM delivery_visitors "
                f"WHERE delivery_id = {d.id} AND visitor_id IN ({ids})"
            )

            def index_condition() -> str:
                plan = "\n".join(r[0] for r in conn.execute(text(lookup)))
                return next(line for line in plan.splitlines() if "Index Cond" in line)

            assert "visitor_id" not in index_condition()  # the whole delivery, filtered
            store.refresh_visitor_statistics(conn)
            assert "visitor_id" in index_condition()  # 500 descents of the primary key
