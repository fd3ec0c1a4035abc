"""Ingestion loads every event exactly once: checkpoints commit with the rows, replays
skip what is present, bad lines go to the rejects and the rest loads, one lock."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from factories import (
    T0,
    Delivery,
    add_delivery,
    add_message,
    add_recipient,
    count_rows,
    counters_snapshot,
    ev,
    line_offsets,
    seal,
    write_segment,
)
from msgtrack.config import load_settings
from msgtrack.context import Context
from msgtrack.ingest import loader
from msgtrack.ingest.loader import ingest_once
from msgtrack.ingest.lock import IngestBusy, ingest_lock
from msgtrack.storage.schema import (
    ingest_checkpoints,
    ingest_rejects,
    opt_outs,
    tracking_logs,
    unsubscriptions,
    visitors,
)
from msgtrack.tracking.events import encode_event

PERSONAL = "https://shop.example/p/{{ recipient.id }}?n={{ recipient.first_name }}"


@dataclass
class World:
    d: Delivery
    recipients: list[int]
    messages: list[int]


def make_world(ctx: Context, n: int = 3) -> World:
    with ctx.engine.begin() as conn:
        d = add_delivery(
            conn,
            to_deliver=n,
            links=[("https://example.org/a", "A"), (PERSONAL, "Product")],
        )
        rids, mids = [], []
        for i in range(n):
            email = f"user{i}@example.org"
            rid = add_recipient(conn, email, first_name=f"U{i}")
            rids.append(rid)
            mids.append(add_message(conn, d.id, rid, email))
    return World(d, rids, mids)


def checkpoints(ctx: Context) -> dict[str, tuple[int, bool]]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(ingest_checkpoints))
        return {r.segment: (r.offset, bool(r.done)) for r in rows}


def test_events_load_once_with_their_rows(ctx: Context) -> None:
    w = make_world(ctx)
    d, m = w.d, w.messages
    seg = write_segment(
        ctx.settings.events_dir,
        "n1-aaaa-000001.log",
        [
            ev("open", d, m[0], T0 + 1, visitor="v1"),
            ev("click", d, m[0], T0 + 2, url_id=d.links[0], visitor="v1"),
            ev(
                "click", d, m[1], T0 + 3, url_id=d.links[1], visitor="v2", values=("42", "Zoé & co")
            ),
            ev("opt-out", d, m[2], T0 + 4, visitor="v3"),
            ev("mirror", d, m[2], T0 + 5),
            ev("unsubscribe", d, m[2], T0 + 6, visitor="v3", source="one-click"),
        ],
    )
    stats = ingest_once(ctx)
    assert (stats.loaded, stats.duplicates, stats.rejected, stats.segments) == (6, 0, 0, 1)
    assert checkpoints(ctx) == {seg.name: (seg.stat().st_size, False)}

    with ctx.engine.connect() as conn:
        logs = conn.execute(select(tracking_logs).order_by(tracking_logs.c.offset)).all()
        unsubs = conn.execute(select(unsubscriptions)).all()
        opted = conn.execute(select(opt_outs)).all()
        seen = {r.id: r for r in conn.execute(select(visitors))}
    offsets = line_offsets(seg)
    assert [(r.type, r.offset, r.recipient_id) for r in logs] == [
        ("open", offsets[0], w.recipients[0]),
        ("click", offsets[1], w.recipients[0]),
        ("click", offsets[2], w.recipients[1]),
        ("opt-out", offsets[3], w.recipients[2]),
        ("mirror", offsets[4], w.recipients[2]),
    ]
    # Only a personalized link stores where the person went.
    assert [r.url for r in logs] == [
        None,
        None,
        "https://shop.example/p/42?n=Zo%C3%A9%20%26%20co",
        None,
        None,
    ]
    assert logs[0].at.timestamp() == T0 + 1
    assert [(u.offset, u.recipient_id, u.source) for u in unsubs] == [
        (offsets[5], w.recipients[2], "one-click")
    ]
    assert [(o.recipient_id, o.delivery_id, o.source) for o in opted] == [
        (w.recipients[2], d.id, "one-click")
    ]
    assert seen["v1"].recipient_id == w.recipients[0]
    assert seen["v3"].recipient_id is None  # an opt-out visit identifies nobody
    assert seen["v3"].first_seen_at.timestamp() == T0 + 4
    assert seen["v3"].last_seen_at.timestamp() == T0 + 4  # the POST is no tracking event

    before = counters_snapshot(ctx.engine)
    again = ingest_once(ctx)
    assert (again.loaded, again.duplicates, again.rejected, again.segments) == (0, 0, 0, 0)
    assert counters_snapshot(ctx.engine) == before
    assert count_rows(ctx.engine, tracking_logs) == 5


def test_lost_checkpoint_replays_without_doubling(ctx: Context) -> None:
    w = make_world(ctx)
    d, m = w.d, w.messages
    bad = bytearray(encode_event(ev("open", d, m[1], T0 + 9)))
    bad[20] ^= 0x01
    events = [
        ev("open", d, m[0], T0 + 1, visitor="v1"),
        ev("click", d, m[0], T0 + 2, url_id=d.links[0], visitor="v1"),
        bytes(bad),
        ev("click", d, m[0], T0 + 3, url_id=d.links[0], visitor="v2"),
        ev("unsubscribe", d, m[1], T0 + 4),
        ev("unsubscribe", d, m[1], T0 + 5),
    ]
    write_segment(ctx.settings.events_dir, "n1-aaaa-000001.log", events, sealed=True)
    first = ingest_once(ctx, batch_size=2)
    assert (first.loaded, first.rejected) == (5, 1)
    before = counters_snapshot(ctx.engine)
    ind = before["indicators"][d.id]
    assert (ind["total_clicks"], ind["person_clicks"], ind["unsubscriptions"]) == (2, 2, 1)
    rejects_file = ctx.settings.rejects_dir / "n1-aaaa-000001.log.rejects"
    rejects_text = rejects_file.read_text()

    with ctx.engine.begin() as conn:
        conn.execute(delete(ingest_checkpoints))
    replay = ingest_once(ctx, batch_size=4)
    assert (replay.loaded, replay.duplicates, replay.rejected) == (0, 6, 0)
    assert counters_snapshot(ctx.engine) == before
    assert count_rows(ctx.engine, tracking_logs) == 3
    assert count_rows(ctx.engine, unsubscriptions) == 2
    assert count_rows(ctx.engine, ingest_rejects) == 1
    assert rejects_file.read_text() == rejects_text


def test_checkpoint_commits_with_the_rows(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after a batch's rows and counters were written but before its commit
    leaves neither the rows, nor the counters, nor the checkpoint."""
    w = make_world(ctx)
    d, m = w.d, w.messages
    seg = write_segment(
        ctx.settings.events_dir,
        "n1-aaaa-000001.log",
        [ev("open", d, m[i % 3], T0 + i, visitor=f"v{i}") for i in range(4)]
        + [ev("click", d, m[0], T0 + 10, url_id=d.links[0], visitor="v9")],
    )
    real = loader.apply_events
    calls = []

    def fail_on_second_batch(*args, **kwargs):  # type: ignore[no-untyped-def]
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("crash inside the second batch")

    monkeypatch.setattr(loader, "apply_events", fail_on_second_batch)
    with pytest.raises(RuntimeError):
        ingest_once(ctx, batch_size=2)
    offsets = line_offsets(seg)
    assert checkpoints(ctx) == {seg.name: (offsets[2], False)}
    with ctx.engine.connect() as conn:
        assert [r.offset for r in conn.execute(select(tracking_logs.c.offset))] == offsets[:2]
    assert counters_snapshot(ctx.engine)["indicators"][d.id]["total_opens"] == 2

    monkeypatch.setattr(loader, "apply_events", real)
    stats = ingest_once(ctx, batch_size=2)
    assert (stats.loaded, stats.duplicates) == (3, 0)
    ind = counters_snapshot(ctx.engine)["indicators"][d.id]
    assert (ind["total_opens"], ind["total_clicks"], ind["recipient_opens"]) == (4, 1, 3)


def test_bad_lines_are_rejected_and_the_rest_loads(ctx: Context) -> None:
    w = make_world(ctx)
    d, m = w.d, w.messages
    flipped = bytearray(encode_event(ev("open", d, m[0], T0 + 2)))
    flipped[30] ^= 0x20
    torn = encode_event(ev("open", d, m[2], T0 + 7))[:25]
    seg = write_segment(
        ctx.settings.events_dir,
        "n1-aaaa-000001.log",
        [
            ev("open", d, m[0], T0 + 1),
            bytes(flipped),
            b"not an event\n",
            ev("open", d, 999_999, T0 + 3),  # unknown message
            ev("click", d, m[1], T0 + 4, url_id=d.opt_out_url + 1000),  # unknown tracked URL
            replace(ev("open", d, m[1], T0 + 5), delivery_id=777),  # unknown delivery
            ev("click", d, m[1], T0 + 6, url_id=d.links[0]),
            torn,
        ],
        sealed=True,
    )
    stats = ingest_once(ctx)
    assert (stats.loaded, stats.rejected) == (2, 6)
    offsets = line_offsets(seg)
    assert checkpoints(ctx) == {seg.name: (seg.stat().st_size, True)}
    with ctx.engine.connect() as conn:
        rejects = [
            (r.offset, r.reason) for r in conn.execute(select(ingest_rejects).order_by("offset"))
        ]
        loaded = [r.offset for r in conn.execute(select(tracking_logs.c.offset).order_by("offset"))]
    assert loaded == [offsets[0], offsets[6]]
    assert rejects[0] == (offsets[1], "checksum mismatch")
    assert rejects[1][0] == offsets[2]
    assert rejects[2] == (offsets[3], "unknown message 999999")
    assert rejects[3][0] == offsets[4] and "tracked URL" in rejects[3][1]
    assert rejects[4] == (offsets[5], "unknown delivery 777")
    assert rejects[5] == (offsets[7], "truncated line")
    file_lines = (ctx.settings.rejects_dir / f"{seg.name}.rejects").read_text().splitlines()
    assert [tuple(x.split("\t")[:2]) for x in file_lines] == [(str(o), r) for o, r in rejects]
    assert file_lines[1].split("\t")[2] == "not an event"
    assert file_lines[5].split("\t")[2] == torn.decode()
    assert ingest_once(ctx).segments == 0  # done: never read again


def test_partial_last_line_waits_for_its_end(ctx: Context) -> None:
    w = make_world(ctx)
    d, m = w.d, w.messages
    line = encode_event(ev("click", d, m[0], T0 + 2, url_id=d.links[0], visitor="v1"))
    seg = write_segment(
        ctx.settings.events_dir, "n1-aaaa-000001.log", [ev("open", d, m[0], T0 + 1), line[:30]]
    )
    first = ingest_once(ctx)
    assert (first.loaded, first.rejected) == (1, 0)
    assert checkpoints(ctx) == {seg.name: (line_offsets(seg)[1], False)}

    write_segment(ctx.settings.events_dir, seg.name, [line[30:]])
    second = ingest_once(ctx)
    assert (second.loaded, second.rejected) == (1, 0)
    assert checkpoints(ctx) == {seg.name: (seg.stat().st_size, False)}

    seal(seg)
    assert ingest_once(ctx).segments == 1
    assert checkpoints(ctx) == {seg.name: (seg.stat().st_size, True)}
    ind = counters_snapshot(ctx.engine)["indicators"][d.id]
    assert (ind["total_opens"], ind["total_clicks"]) == (1, 1)


def test_torn_tail_of_an_abandoned_segment_is_rejected(ctx: Context) -> None:
    """A writer that died mid-line never finishes it: after a while the tail is final."""
    w = make_world(ctx)
    d, m = w.d, w.messages
    torn = encode_event(ev("open", d, m[1], T0 + 2))[:-5]
    seg = write_segment(
        ctx.settings.events_dir, "n1-aaaa-000001.log", [ev("open", d, m[0], T0 + 1), torn]
    )
    assert ingest_once(ctx).rejected == 0
    old = time.time() - loader.STALE_SECONDS - 60
    os.utime(seg, (old, old))
    stats = ingest_once(ctx)
    assert (stats.loaded, stats.rejected) == (0, 1)
    assert checkpoints(ctx) == {seg.name: (seg.stat().st_size, True)}


def test_segments_load_in_name_order_and_sealed_empty_ones_finish(ctx: Context) -> None:
    w = make_world(ctx)
    d, m = w.d, w.messages
    events_dir = ctx.settings.events_dir
    write_segment(events_dir, "n1-bbbb-000001.log", [ev("open", d, m[0], T0 + 1)])
    write_segment(events_dir, "n1-aaaa-000001.log", [ev("open", d, m[1], T0 + 2)], sealed=True)
    write_segment(events_dir, "n1-aaaa-000002.log", [], sealed=True)
    (events_dir / "notes.txt").write_text("not a segment")
    stats = ingest_once(ctx, progress=(seen := []).append)
    assert (stats.loaded, stats.segments) == (2, 3)
    assert seen == [1, 1]
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(tracking_logs.c.segment).order_by(tracking_logs.c.id)).all()
    assert [r.segment for r in rows] == ["n1-aaaa-000001.log", "n1-bbbb-000001.log"]
    assert checkpoints(ctx)["n1-aaaa-000002.log"] == (0, True)


def test_a_second_ingestion_is_refused_while_one_runs(ctx: Context) -> None:
    make_world(ctx)
    with ingest_lock(ctx), pytest.raises(IngestBusy):
        ingest_once(ctx)
    ingest_once(ctx)  # free again


def test_the_database_lock_covers_ingestions_on_other_machines(
    ctx: Context, tmp_path: Path
) -> None:
    """Another home (another machine) with the same PostgreSQL database is refused too."""
    if ctx.engine.dialect.name != "postgresql":
        pytest.skip("SQLite is local to one machine: the file lock covers it")
    other = Context(replace(load_settings(tmp_path / "other-machine"), db_url=ctx.settings.db_url))
    try:
        with ingest_lock(ctx), pytest.raises(IngestBusy):
            ingest_once(other)
        ingest_once(other)
    finally:
        other.close()


def test_an_overlong_line_is_set_aside_piecewise(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "MAX_LINE", 200)
    w = make_world(ctx)
    d, m = w.d, w.messages
    seg = write_segment(
        ctx.settings.events_dir,
        "n1-aaaa-000001.log",
        [ev("open", d, m[0], T0 + 1), b"x" * 499 + b"\n", ev("open", d, m[1], T0 + 2)],
        sealed=True,
    )
    stats = ingest_once(ctx)
    assert (stats.loaded, stats.rejected) == (2, 3)
    start = line_offsets(seg)[1]
    with ctx.engine.connect() as conn:
        rejects = [
            (r.offset, r.reason) for r in conn.execute(select(ingest_rejects).order_by("offset"))
        ]
        loaded = [r.offset for r in conn.execute(select(tracking_logs.c.offset).order_by("offset"))]
    assert rejects == [
        (start, "line too long"),
        (start + 200, "line too long"),
        (start + 400, "malformed line"),
    ]
    assert loaded == [0, start + 500]
    assert checkpoints(ctx) == {seg.name: (seg.stat().st_size, True)}
