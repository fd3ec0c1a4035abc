"""Ingestion: events per second loaded into SQLite and PostgreSQL.

    python benchmarks/bench_ingest.py --events 1000000 --backend sqlite
    python benchmarks/bench_ingest.py --events 1000000 --backend postgresql

A delivery to 100,000 recipients; the event log is written by the tracking server's own
``EventLog`` (opens, clicks on 20 links with 1.3 visitors per clicking recipient, a few
opt-out and mirror visits), then one ``ingest_once`` pass is timed: parsing, checksums,
inserts, visitors, and every aggregate.
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import Timer, bench_context, write_recipients_csv  # noqa: E402
from sqlalchemy import select  # noqa: E402

from msgtrack.delivery.analyse import prepare_delivery  # noqa: E402
from msgtrack.delivery.create import create_delivery  # noqa: E402
from msgtrack.ingest.loader import ingest_once  # noqa: E402
from msgtrack.storage.recipients import import_recipients_csv  # noqa: E402
from msgtrack.storage.schema import messages, tracked_urls  # noqa: E402
from msgtrack.tracking.eventlog import EventLog  # noqa: E402
from msgtrack.tracking.events import Event  # noqa: E402

UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    rng = random.Random(7)
    with bench_context(args.backend) as ctx:
        csv_path = ctx.settings.home / "people.csv"
        write_recipients_csv(csv_path, args.recipients)
        import_recipients_csv(ctx, csv_path)
        html = (
            "<html><body>"
            + "".join(f'<a href="https://shop.example/p/{i}">p{i}</a>' for i in range(20))
            + "</body></html>"
        )
        delivery_id = create_delivery(ctx, name="bench", subject="s", html=html, text=None)
        prepare_delivery(ctx, delivery_id)
        with ctx.engine.connect() as conn:
            message_ids = [
                r[0]
                for r in conn.execute(
                    select(messages.c.id).where(messages.c.delivery_id == delivery_id)
                )
            ]
            urls = {
                r.type: []
                for r in conn.execute(
                    select(tracked_urls.c.type).where(tracked_urls.c.delivery_id == delivery_id)
                )
            }
            for r in conn.execute(
                select(tracked_urls.c.id, tracked_urls.c.type).where(
                    tracked_urls.c.delivery_id == delivery_id
                )
            ):
                urls[r.type].append(r.id)
        log = EventLog(
            ctx.settings.events_dir, fsync_interval=1.0, max_bytes=64 * 1024 * 1024, max_age=3600
        )
        visitors: dict[int, list[str]] = {}
        t0 = time.time() - 86400
        with Timer() as t_write:
            for i in range(args.events):
                m = rng.choice(message_ids)
                roll = rng.random()
                kind = (
                    "open"
                    if roll < 0.5
                    else "click"
                    if roll < 0.97
                    else "opt-out"
                    if roll < 0.985
                    else "mirror"
                )
                if kind == "click":
                    seen = visitors.setdefault(m, [secrets.token_urlsafe(16)])
                    if rng.random() < 0.05:
                        seen.append(secrets.token_urlsafe(16))
                    visitor: str | None = rng.choice(seen)
                    url_id = rng.choice(urls["click"])
                else:
                    visitor = None
                    url_id = urls[kind][0]
                log.append(
                    Event(t0 + i * 0.05, kind, delivery_id, m, url_id, visitor, "192.0.2.1", UA)
                )
        log.close()
        with Timer() as t_ingest:
            stats = ingest_once(ctx, batch_size=10_000)
        with Timer() as t_again:
            again = ingest_once(ctx)
    rate = stats.loaded / t_ingest.seconds
    print(f"backend={args.backend} events={args.events} recipients={args.recipients}")
    print(f"event log written in {t_write.seconds:.1f} s")
    print(
        f"ingest: {t_ingest.seconds:.1f} s, {rate:,.0f} events/s (loaded={stats.loaded}, rejected={stats.rejected})"
    )
    print(f"second pass (nothing new): {t_again.seconds:.2f} s, loaded={again.loaded}")


if __name__ == "__main__":
    main()
