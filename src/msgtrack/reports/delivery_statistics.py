"""Delivery statistics: per internet domain, what sending made of the messages and what
their recipients did, each also in %.

Read from ``domain_sends`` (send side) and ``domain_stats`` (tracking side), never from
the messages or the tracking logs. Per domain (merged under its alias table's name; the
20 with the most messages to deliver, the rest summed as ``others``):

- ``to_deliver``: messages to deliver after analysis;
- ``processed``: messages that got a final status, ``delivered`` + ``errors``
  (delivered = sent, seeds excluded, as ``success``; errors = failed);
- ``hard_bounces``: failed hard; ``soft_bounces``: failed soft, or delivered and then
  bounced soft (those count as delivered too); ``delivered``, ``errors``, hard and soft
  bounces in % of ``processed``;
- ``sent``: messages sent, seeds included (they are tracked too); ``opens``, ``clicks``:
  distinct messages opened / clicked (SPEC §6), ``unsubscriptions`` (distinct
  recipients) and ``complaints``, in % of ``sent``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Connection

from msgtrack.reports.indicators import rate
from msgtrack.reports.registry import Report, ReportQuery, Scope
from msgtrack.storage import send_stats as store
from msgtrack.storage.tracking import delivery_header

OF_PROCESSED = ("delivered", "errors", "hard_bounces", "soft_bounces")
COLUMNS = (
    "domain", "to_deliver", "processed", "sent",
    "delivered", "delivered_percent", "errors", "errors_percent",
    "hard_bounces", "hard_bounces_percent", "soft_bounces", "soft_bounces_percent",
    "opens", "opens_percent", "clicks", "clicks_percent",
    "unsubscriptions", "unsubscriptions_percent", "complaints", "complaints_percent",
)  # fmt: skip


def domain_row(domain: str, c: Mapping[str, int]) -> dict[str, Any]:
    """One line of the table from the stored counters of a domain (or their sums)."""
    values = {
        "delivered": c["delivered"],
        "errors": c["errors"],
        "hard_bounces": c["hard"],
        "soft_bounces": c["soft"],
        "opens": c["opens"],
        "clicks": c["clicks"],
        "unsubscriptions": c["unsubscriptions"],
        "complaints": c["complaints"],
    }
    processed = c["delivered"] + c["errors"]
    out: dict[str, Any] = {
        "domain": domain,
        "to_deliver": c["processed"],
        "processed": processed,
        "sent": c["sent"],
    }
    for key, value in values.items():
        out[key] = value
        out[f"{key}_percent"] = rate(value, processed if key in OF_PROCESSED else c["sent"])
    return out


def build(conn: Connection, scope: Scope, query: ReportQuery) -> dict[str, Any] | None:
    d = scope.delivery_id
    if d is not None and delivery_header(conn, d) is None:
        return None
    rows, total = store.domain_send_table(conn, d, scope.since, scope.until)
    return {
        "scope": scope.describe(),
        "domains": [domain_row(r["domain"], r) for r in rows],
        "total": domain_row("total", total),
    }


REPORT = Report(
    name="delivery-statistics",
    title="Delivery statistics",
    build=build,
    tables={"domains": COLUMNS},
)
