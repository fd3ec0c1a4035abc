"""``msgtrack serve``: everything in one process on the embedded default.

The tracking endpoints, the admin API and the ingestion loop share one port and one
event loop (uvicorn). The public ``msgtrack tracking-server`` uses the faster
hand-written HTTP layer instead; both call the same ``TrackingApp``.
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


def run_serve(ctx: Context, host: str, port: int) -> None:
    import uvicorn

    from msgtrack.tracking.app import TrackingApp
    from msgtrack.tracking.asgi import tracking_asgi
    from msgtrack.tracking.eventlog import EventLog
    from msgtrack.web.app import create_app

    event_log = EventLog.from_settings(ctx.settings)
    app = tracking_asgi(TrackingApp(ctx, event_log), fallback=create_app(ctx))
    stop = threading.Event()
    loop_thread = threading.Thread(
        target=ingestion_loop, args=(ctx, stop), name="ingest", daemon=True
    )
    loop_thread.start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        stop.set()
        loop_thread.join(timeout=30)
        event_log.close()
        try:  # load what was logged until the end
            ingest_once(ctx)
        except IngestBusy:
            pass
