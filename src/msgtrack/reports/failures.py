"""The delivery log qualification list: recorded failure texts with their variable
parts (addresses, ids, numbers) replaced, so that the same error for a thousand
recipients is one line with a count and the first text seen. ``msgtrack bounces
texts`` prints it; the web UI shows it next to the rules, with what the rules in force
now would make of each text, so an edited rule can be checked against real errors."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection, Engine

from msgtrack.delivery.bounces.parse import find_reply_code, find_status
from msgtrack.delivery.bounces.rules import RuleTable, normalize_text
from msgtrack.reports.indicators import connection
from msgtrack.storage.bounces import failure_texts

COLUMNS = ("count", "reason", "type", "status", "text", "first")


def failure_text_groups(conn_or_engine: Connection | Engine) -> list[dict[str, Any]]:
    """One group per normalized text, most frequent first: ``text`` (normalized),
    ``count``, ``first`` (the first text seen), the ``reason``, ``type`` and ``status``
    it was recorded with."""
    groups: dict[str, dict[str, Any]] = {}
    with connection(conn_or_engine) as conn:
        rows = failure_texts(conn)
    for reason, ftype, status, text in rows:
        key = normalize_text(text)
        group = groups.get(key)
        if group is None:
            groups[key] = group = {
                "text": key,
                "count": 0,
                "first": text,
                "reason": reason,
                "type": ftype,
                "status": status or None,
            }
        group["count"] += 1
    return sorted(groups.values(), key=lambda g: -g["count"])


def with_current_rules(groups: list[dict[str, Any]], rules: RuleTable) -> list[dict[str, Any]]:
    """Each group with ``now_reason`` and ``now_type``: what the rules in force would
    qualify its first text to today."""
    out = []
    for g in groups:
        status = g["status"] or find_status(g["first"])
        now = rules.qualify(status, find_reply_code(g["first"]), g["first"])
        out.append({**g, "now_reason": now.reason, "now_type": now.type})
    return out
