"""``msgtrack recompute``: rebuild a delivery's counters from the rows they summarize.

Send-time counters come back from the messages (success = sent and not seed, errors =
failed, text_only = text-only messages, per-domain sends = sent messages, seeds
included, as sending counts them), unsubscriptions from the distinct recipients who
unsubscribed, and every event counter from replaying the tracking logs in (time, id)
order through ``aggregate.apply_events``, the same function ingestion uses, so rebuilt
equals incremental by construction.

Bounce counters (hard/soft bounces, complaints, new quarantines) have no log to be
rebuilt from yet and are kept as they are.

It holds the ingestion lock (an ingestion moving counters mid-rebuild would be lost or
counted twice) and rebuilds each delivery in one transaction, so readers never see a
half-rebuilt delivery. Within it, the messages' firsts and counts are held in memory
from page to page and each message is written once (per ``HOLD_MESSAGES`` held), and on
PostgreSQL the visitor tables are re-ANALYZEd as they refill (pages 2, 4, 8, ...), so
their lookups keep to the primary key (``benchmarks/bench_recompute.py``).
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from msgtrack.context import Context
from msgtrack.ingest.aggregate import CountedEvent, HeldMessages, apply_events
from msgtrack.ingest.lock import ingest_lock
from msgtrack.storage import send_stats
from msgtrack.storage import tracking as store

# An ingestion pass is short: wait for it rather than fail.
LOCK_WAIT_SECONDS = 60.0
BATCH_SIZE = 5000  # events per page
HOLD_MESSAGES = 100_000  # messages held between writes: ~30 MB


def recompute(
    ctx: Context,
    delivery_id: int | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    hold: int = HOLD_MESSAGES,
) -> None:
    """Rebuild one delivery (or all). Waits for a running ingestion to finish (raises
    IngestBusy after ``LOCK_WAIT_SECONDS``); LookupError for an unknown delivery.
    ``batch_size`` events are replayed at a time; up to ``hold`` messages' totals are
    kept in memory between writes (see ``HeldMessages``)."""
    with ingest_lock(ctx, wait=LOCK_WAIT_SECONDS) as conn:
        with conn.begin():
            if delivery_id is None:
                ids = store.all_delivery_ids(conn)
            elif store.existing_deliveries(conn, [delivery_id]):
                ids = [delivery_id]
            else:
                raise LookupError(f"no delivery {delivery_id}")
        for one in ids:
            with conn.begin():
                rebuild_delivery(conn, one, batch_size, hold)


def rebuild_delivery(
    conn: Connection,
    delivery_id: int,
    batch_size: int = BATCH_SIZE,
    hold: int = HOLD_MESSAGES,
) -> None:
    """Reset and recount one delivery inside the caller's transaction."""
    store.lock_indicator_row(conn, delivery_id)
    store.reset_event_aggregates(conn, delivery_id)
    store.set_send_counts(conn, delivery_id, store.send_counts(conn, delivery_id))
    send_stats.rebuild(conn, delivery_id)
    store.set_unsubscriptions(
        conn, delivery_id, store.unsubscribed_recipient_count(conn, delivery_id)
    )
    after = None
    pages = 0
    held = HeldMessages(limit=hold)
    while True:
        page = store.logged_events_page(conn, delivery_id, after, max(1, batch_size))
        if not page:
            held.flush(conn)
            return
        pages += 1
        if pages > 1 and pages & (pages - 1) == 0:  # pages 2, 4, 8...: as visitors double
            store.refresh_visitor_statistics(conn)  # (a one-page delivery needs none)
        apply_events(
            conn,
            [
                CountedEvent(
                    e.delivery_id,
                    e.message_id,
                    e.type,
                    e.visitor_id,
                    e.at,
                    e.amount,
                    e.articles,
                    e.tracked_url_id,
                    e.user_agent,
                )
                for e in page
            ],
            held=held,
        )
        after = (page[-1].at, page[-1].id)
