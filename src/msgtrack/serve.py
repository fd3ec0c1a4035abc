"""``msgtrack serve``: everything in one process on the embedded default.

The tracking endpoints, the admin API and the ingestion loop share one port and one
event loop (uvicorn). The public ``msgtrack tracking-server`` uses the faster
hand-written HTTP layer instead; both call the same ``TrackingApp``. With a bounce
mailbox configured (``MSGTRACK_BOUNCE_MAILBOX``), a second thread reads it every
``MSGTRACK_BOUNCE_SCAN_INTERVAL`` seconds, as ``msgtrack bounces process`` would.
"""

from __future__ import annotations

import logging
import threading

from msgtrack.context import Context
from msgtrack.ingest.loader import IngestBusy, ingest_once

log = logging.getLogger("msgtrack.serve")


def ingestion_loop(ctx: Context, stop: threading.Event) -> None:
    """Load new events every few seconds until ``stop`` is set."""
    while not stop.is_set():
        try:
            ingest_once(ctx)
        except IngestBusy:
            pass  # a cron `msgtrack ingest` is running; next turn
        except Exception:  # keep the loop alive; the next pass retries from the checkpoint
            log.exception("ingestion pass failed")
        stop.wait(ctx.settings.ingest_interval)


def bounce_loop(ctx: Context, source: str, stop: threading.Event) -> None:
    """Read the bounce mailbox ``source`` at each interval until ``stop`` is set."""
    from msgtrack.delivery.bounces.mailbox import process_mailbox
    from msgtrack.delivery.bounces.process import BounceProcessor

    while not stop.is_set():
        processor = BounceProcessor(ctx)
        try:
            process_mailbox(source, processor.process, cafile=ctx.settings.imap_cafile)
        except Exception:  # a mailbox down or a bad message: the next pass retries
            log.exception("bounce mailbox pass failed")
        stats = processor.stats.as_dict()
        if stats["read"]:
            log.info("bounce mailbox: %s", ", ".join(f"{k} {v}" for k, v in stats.items()))
        stop.wait(ctx.settings.bounce_scan_interval)


def run_serve(ctx: Context, host: str, port: int) -> None:
    import uvicorn

    from msgtrack.tracking.app import TrackingApp
    from msgtrack.tracking.asgi import tracking_asgi
    from msgtrack.tracking.eventlog import EventLog
    from msgtrack.web.app import create_app

    event_log = EventLog.from_settings(ctx.settings)
    app = tracking_asgi(TrackingApp(ctx, event_log), fallback=create_app(ctx))
    stop = threading.Event()
    threads = [
        threading.Thread(target=ingestion_loop, args=(ctx, stop), name="ingest", daemon=True)
    ]
    if source := ctx.settings.bounce_mailbox:
        threads.append(
            threading.Thread(
                target=bounce_loop, args=(ctx, source, stop), name="bounces", daemon=True
            )
        )
    for thread in threads:
        thread.start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        event_log.close()
        try:  # load what was logged until the end
            ingest_once(ctx)
        except IngestBusy:
            pass
