"""``msgtrack recompute`` speed: events replayed per second for one big delivery.

    python benchmarks/bench_recompute.py --backend postgresql --messages 100000 --events 1000000
    python benchmarks/bench_recompute.py --backend sqlite --messages 100000 --events 1000000

The delivery, its messages and its events are those of ``bench_reports.py`` (the same
generator: opens, clicks over a Zipf of links, opt-outs, mirrors, web pages, purchases,
~50 user agents, visitor cookies), built once into ``benchmarks/out/recompute-data-BACKEND``
(or the PostgreSQL database ``msgtrack_bench_recompute``) and kept: a later run with the
same ``--messages`` and ``--events`` only recomputes (``--rebuild`` builds anew). The
events go in as ``tracking_logs`` rows in bulk; then ``recompute.recompute`` rebuilds the
delivery ``--rounds`` times, each timed after a VACUUM ANALYZE (PostgreSQL), and after
each round the counters are checked against the rows (events per type, buckets), so a
faster recompute that counts wrong fails here. The first round after a build starts
from the statistics of empty visitor tables (a first recompute of bulk-loaded logs);
later ones from those of the visitors the previous round wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_reports as reports  # noqa: E402  (the same data generator)

OUT = Path(__file__).resolve().parent / "out"


def build(args: argparse.Namespace, home: Path) -> tuple[Any, dict[str, Any]]:
    """The kept data when it matches the arguments, else built anew."""
    meta = reports.read_meta(home)
    kept = meta and meta["messages"] == args.messages and meta["events"] == args.events
    if kept and not args.rebuild:
        return reports.open_context(args, home, create=False), meta
    reports.drop_data(args, home)
    home.mkdir(parents=True)
    ctx = reports.open_context(args, home, create=True)
    print(f"building {args.messages:,} messages, {args.events:,} events", flush=True)
    started = time.monotonic()
    meta = reports.build_base(args, ctx, home)
    pop = reports.load_population(ctx, meta["delivery_id"])
    reports.bulk_rows(ctx, pop, 0, args.events)
    reports.vacuum_analyze(ctx)
    meta["events"] = args.events
    reports.write_meta(home, meta)
    print(f"  built in {time.monotonic() - started:.0f} s", flush=True)
    return ctx, meta


def check(ctx: Any, delivery_id: int) -> dict[str, int]:
    """The rebuilt counters against the rows they count (exits on a difference):
    ``bench_reports``' checks of the delivery's counters and buckets, and the messages'
    own totals and firsts, which recompute holds in memory between writes."""
    from sqlalchemy import func, select

    from msgtrack.storage.schema import delivery_indicators, messages, tracking_logs

    if not reports.event_counts(ctx, delivery_id)["consistent"]:
        raise SystemExit("the delivery's counters disagree with its rows")
    with ctx.engine.connect() as conn:
        row = conn.execute(
            select(delivery_indicators).where(delivery_indicators.c.delivery_id == delivery_id)
        ).one()
        opens, clicks, opened = conn.execute(
            select(
                func.sum(messages.c.open_count),
                func.sum(messages.c.click_count),
                func.count(messages.c.first_event_at),
            ).where(messages.c.delivery_id == delivery_id)
        ).one()
        opening = conn.execute(
            select(func.count(func.distinct(tracking_logs.c.message_id))).where(
                tracking_logs.c.delivery_id == delivery_id,
                tracking_logs.c.type.in_(["open", "click", "opt-out", "mirror"]),
            )
        ).scalar_one()
    found = {
        "message opens": int(opens or 0),
        "message clicks": int(clicks or 0),
        "messages opened": int(opened),
        "recipient_opens": int(row.recipient_opens),
    }
    expected = {
        "message opens": int(row.total_opens),
        "message clicks": int(row.total_clicks),
        "messages opened": int(opening),
        "recipient_opens": int(opening),
    }
    if found != expected:
        raise SystemExit(f"rebuilt {found} != rows {expected}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=10_000, help="events per page")
    parser.add_argument("--pg-database", default="msgtrack_bench_recompute")
    parser.add_argument("--home", help="default benchmarks/out/recompute-data-BACKEND")
    parser.add_argument("--rebuild", action="store_true", help="build the data anew")
    args = parser.parse_args()
    args.peers, args.timezone = 0, "Europe/Paris"  # what bench_reports' builder reads
    home = Path(args.home) if args.home else OUT / f"recompute-data-{args.backend}"
    args.home = str(home)
    ctx, meta = build(args, home)
    from msgtrack.ingest.recompute import recompute

    seconds = []
    for n in range(1, args.rounds + 1):
        # What autovacuum does between two recomputes (each leaves the delivery's rows
        # rewritten). The first round after a build starts from the statistics of empty
        # visitor tables, as a first recompute of bulk-loaded tracking logs does.
        reports.vacuum_analyze(ctx)
        started = time.monotonic()
        recompute(ctx, meta["delivery_id"], batch_size=args.batch_size)
        seconds.append(time.monotonic() - started)
        counters = check(ctx, meta["delivery_id"])
        print(
            f"round {n}: {seconds[-1]:.1f} s, {args.events / seconds[-1]:,.0f} events/s "
            f"(counters match the rows: {counters})",
            flush=True,
        )
    best = min(seconds)
    summary = {
        "backend": args.backend,
        "messages": args.messages,
        "events": args.events,
        "batch_size": args.batch_size,
        "seconds": seconds,
        "events_per_s_best": args.events / best,
        "events_per_s_median": args.events / statistics.median(seconds),
        "date": time.strftime("%Y-%m-%d"),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(summary))
    OUT.mkdir(exist_ok=True)
    (OUT / f"recompute-{args.backend}.json").write_text(json.dumps(summary, indent=1))
    ctx.close()


if __name__ == "__main__":
    main()
