"""Ingestion: the event log into the database exactly once, and the counters it moves."""

from msgtrack.ingest.loader import IngestStats, ingest_once
from msgtrack.ingest.lock import IngestBusy
from msgtrack.ingest.recompute import recompute

__all__ = ["IngestBusy", "IngestStats", "ingest_once", "recompute"]
