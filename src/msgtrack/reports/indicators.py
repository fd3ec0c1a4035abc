"""The tracking indicators of a delivery (SPEC §6), from its stored counters.

Reading them touches only ``deliveries``, ``delivery_indicators``, ``domain_stats`` and
``domain_aliases``: ingestion keeps the counters current, so a report never scans the
tracking logs. Integer arithmetic throughout, so rounding is exactly "half up".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine

from msgtrack.reports.registry import Report, ReportQuery, Scope
from msgtrack.storage import reports as reports_store
from msgtrack.storage import tracking as store

TOP_DOMAINS = 20
OTHERS = "others"

# Counters shown as they are stored.
STORED = (
    "success",
    "errors",
    "text_only",
    "recipient_opens",
    "total_opens",
    "recipient_clicks",
    "person_clicks",
    "total_clicks",
    "opt_outs",
    "unsubscriptions",
    "mirror_views",
    "hard_bounces",
    "soft_bounces",
    "complaints",
    "new_quarantines",
)


@contextmanager
def connection(conn_or_engine: Connection | Engine) -> Iterator[Connection]:
    """Use the caller's connection, or borrow one from the engine for this read."""
    if isinstance(conn_or_engine, Connection):
        yield conn_or_engine
    else:
        with conn_or_engine.connect() as conn:
            yield conn


def half_up_div(numerator: int, divisor: int) -> int:
    """numerator ÷ divisor rounded half up, for non-negative numbers; 0 when divisor <= 0."""
    if divisor <= 0:
        return 0
    return (2 * numerator + divisor) // (2 * divisor)


def estimate(value: int, to_deliver: int, text_only: int) -> int:
    """Scale what HTML messages showed to all: value × to_deliver ÷ (to_deliver − text_only)."""
    return half_up_div(value * to_deliver, to_deliver - text_only)


def rate(numerator: int, divisor: int) -> float:
    """numerator ÷ divisor in %, half up to 2 decimals; 0 when divisor is 0."""
    return half_up_div(numerator * 10_000, divisor) / 100


def delivery_indicators(
    conn_or_engine: Connection | Engine, delivery_id: int
) -> dict[str, Any] | None:
    """Every indicator of a delivery and its per-domain table; None if no such delivery."""
    with connection(conn_or_engine) as conn:
        header = store.delivery_header(conn, delivery_id)
        if header is None:
            return None
        counters = store.indicator_counters(conn, delivery_id)
        domains = domain_table(conn, delivery_id, None, None)
    out: dict[str, Any] = {
        "delivery_id": header.id,
        "name": header.name,
        "state": header.state,
        **computed(counters, header.to_deliver),
        "domains": domains,
    }
    return out


def computed(counters: Mapping[str, Any], to_deliver: int) -> dict[str, Any]:
    """The SPEC §6 table from stored counters (one delivery's, or sums over several)."""
    c = {name: int(counters[name]) for name in STORED}
    est_opens = estimate(c["recipient_opens"], to_deliver, c["text_only"])
    return {
        "to_deliver": to_deliver,
        **c,
        "estimated_recipient_opens": est_opens,
        "estimated_total_opens": estimate(c["total_opens"], to_deliver, c["text_only"]),
        "forwards": c["person_clicks"] - c["recipient_clicks"],
        "raw_reactivity": rate(c["recipient_clicks"], c["recipient_opens"]),
        "estimated_reactivity": rate(c["recipient_clicks"], est_opens),
        "distinct_click_rate": rate(c["person_clicks"], c["success"]),
        "cumulated_click_rate": rate(c["total_clicks"], c["success"]),
    }


def build(conn: Connection, scope: Scope, query: ReportQuery) -> dict[str, Any] | None:
    """The indicators report: one delivery's, or pooled over the deliveries that started
    in the scope's date range (sums of counters, ratios of the sums)."""
    if scope.delivery_id is not None:
        data = delivery_indicators(conn, scope.delivery_id)
        if data is None:
            return None
    else:
        totals = reports_store.indicator_totals(conn, scope.since, scope.until)
        data = {
            "deliveries": totals["deliveries"],
            **computed(totals, totals["to_deliver"]),
            "domains": domain_table(conn, None, scope.since, scope.until),
        }
    data["scope"] = scope.describe()
    return data


def domain_table(
    conn: Connection, delivery_id: int | None, since: datetime | None, until: datetime | None
) -> list[dict[str, Any]]:
    """Per domain, aliases merged under their domain, biggest senders first, the ones
    beyond the top 20 summed as ``others``."""
    shown, rest = store.top_domains(conn, delivery_id, since, until, TOP_DOMAINS)
    rows = [*shown, replace(rest, domain=OTHERS)] if rest is not None else shown
    return [
        {
            "domain": r.domain,
            "sent": r.sent,
            "complaints": r.complaints,
            "opens": r.opens,
            "clicks": r.clicks,
            "raw_reactivity": rate(r.clicks, r.opens),
        }
        for r in rows
    ]


# The SPEC §6 table, in its order, with the names people read.
ROWS = (
    ("to_deliver", "To deliver"),
    ("success", "Success"),
    ("errors", "Errors"),
    ("text_only", "Text-only messages"),
    ("recipient_opens", "Recipient opens"),
    ("estimated_recipient_opens", "Estimated recipient opens"),
    ("total_opens", "Total opens"),
    ("estimated_total_opens", "Estimated total opens"),
    ("recipient_clicks", "Recipient clicks"),
    ("person_clicks", "Person clicks"),
    ("forwards", "Forwards"),
    ("total_clicks", "Total clicks"),
    ("raw_reactivity", "Raw reactivity (%)"),
    ("estimated_reactivity", "Estimated reactivity (%)"),
    ("distinct_click_rate", "Distinct click rate (%)"),
    ("cumulated_click_rate", "Cumulated click rate (%)"),
    ("opt_outs", "Opt-outs"),
    ("unsubscriptions", "Unsubscriptions"),
    ("mirror_views", "Mirror page views"),
    ("hard_bounces", "Hard bounces"),
    ("soft_bounces", "Soft bounces"),
    ("complaints", "Complaints"),
    ("new_quarantines", "New quarantines"),
)

REPORT = Report(
    name="indicators",
    title="Indicators",
    build=build,
    tables={"domains": ("domain", "sent", "complaints", "opens", "clicks", "raw_reactivity")},
)
