"""Reports: read-only views over the aggregates (never the raw tracking logs, except
the per-recipient click list, which is the logs themselves)."""
