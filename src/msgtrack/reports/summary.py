"""The delivery summary: from the target to what recipients did, one page.

Everything comes from stored counters: the analysis columns of ``deliveries``, the
indicators of ``delivery_indicators`` (SPEC §6), the domains' sends (seeds included)
of ``domain_stats`` and the reasons of ``failure_stats``; a global summary sums them
over the deliveries started in its date range. Rates are in %, half up to 2 decimals,
0 when the divisor is 0:

- the exclusions and ``to_deliver`` of the initial population;
- ``processed`` (``success`` + ``errors``: sent, seeds excluded, and failed) of
  ``to_deliver``; success, errors, hard and soft bounces of ``processed``;
- opens, clicks, unsubscriptions and complaints of the messages ``sent`` (``success`` +
  ``seeds``: seeds are tracked too).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from msgtrack.reports.indicators import rate
from msgtrack.reports.non_deliverables import reason_table
from msgtrack.reports.registry import Report, ReportQuery, Scope
from msgtrack.reports.timeline import iso_local
from msgtrack.storage import send_stats as store
from msgtrack.storage.deliveries import get_delivery

REJECTED = (
    "rejected_quarantined",
    "rejected_denylisted",
    "rejected_opted_out",
    "rejected_invalid",
    "rejected_duplicate",
)
ANALYSIS = ("initial_population", *REJECTED, "to_deliver")
COUNTERS = (
    "success", "errors", "hard_bounces", "soft_bounces", "complaints", "new_quarantines",
    "text_only", "recipient_opens", "total_opens", "recipient_clicks", "total_clicks",
    "unsubscriptions", "opt_outs", "mirror_views",
)  # fmt: skip

# (section, key, label, the key whose value its percent is of, or None)
LINES: tuple[tuple[str, str, str, str | None], ...] = (
    ("Target", "initial_population", "Initial population", None),
    ("Target", "rejected", "Excluded at analysis", "initial_population"),
    ("Target", "rejected_quarantined", "Excluded: quarantined", "initial_population"),
    ("Target", "rejected_denylisted", "Excluded: denylisted", "initial_population"),
    ("Target", "rejected_opted_out", "Excluded: opted out", "initial_population"),
    ("Target", "rejected_invalid", "Excluded: invalid address", "initial_population"),
    ("Target", "rejected_duplicate", "Excluded: duplicate address", "initial_population"),
    ("Target", "to_deliver", "To deliver", "initial_population"),
    ("Sending", "processed", "Processed (success or error)", "to_deliver"),
    ("Sending", "success", "Success", "processed"),
    ("Sending", "errors", "Errors", "processed"),
    ("Sending", "hard_bounces", "Hard bounces", "processed"),
    ("Sending", "soft_bounces", "Soft bounces", "processed"),
    ("Sending", "seeds", "Seed messages sent", None),
    ("Sending", "sent", "Sent (success and seeds)", None),
    ("Sending", "not_processed", "Not processed (pending, in flight, unknown)", "to_deliver"),
    ("Sending", "new_quarantines", "New quarantines", None),
    ("Tracking", "recipient_opens", "Recipient opens", "sent"),
    ("Tracking", "total_opens", "Total opens", None),
    ("Tracking", "recipient_clicks", "Recipient clicks", "sent"),
    ("Tracking", "total_clicks", "Total clicks", None),
    ("Tracking", "unsubscriptions", "Unsubscriptions", "sent"),
    ("Tracking", "complaints", "Complaints", "sent"),
    ("Tracking", "opt_outs", "Opt-out link visits", None),
    ("Tracking", "mirror_views", "Mirror page views", None),
)
LINE_COLUMNS = ("section", "key", "label", "value", "percent", "of")
OUTCOMES = (
    ("success", "Success"),
    ("errors", "Errors"),
    ("seeds", "Seeds sent"),
    ("not_processed", "Not processed"),
)
OUTCOME_COLUMNS = ("outcome", "title", "messages", "percent")
TOP_REASONS = 5


def counts(
    conn: Connection, delivery_id: int | None, since: datetime | None, until: datetime | None
) -> dict[str, int]:
    """Every count the summary shows, from the stored counters of the scope."""
    analysis = store.analysis_sums(conn, delivery_id, since, until, ANALYSIS)
    c = {**analysis, **store.indicator_sums(conn, delivery_id, since, until, COUNTERS)}
    c["rejected"] = sum(c[k] for k in REJECTED)
    c["processed"] = c["success"] + c["errors"]
    c["sent"] = store.sent_total(conn, delivery_id, since, until)
    c["seeds"] = max(c["sent"] - c["success"], 0)
    c["not_processed"] = max(c["to_deliver"] - c["processed"] - c["seeds"], 0)
    return c


def rates(c: dict[str, int]) -> dict[str, float]:
    return {
        "progress": rate(c["processed"] + c["seeds"], c["to_deliver"]),
        "success_rate": rate(c["success"], c["processed"]),
        "error_rate": rate(c["errors"], c["processed"]),
        "hard_bounce_rate": rate(c["hard_bounces"], c["processed"]),
        "soft_bounce_rate": rate(c["soft_bounces"], c["processed"]),
        "open_rate": rate(c["recipient_opens"], c["sent"]),
        "click_rate": rate(c["recipient_clicks"], c["sent"]),
        "raw_reactivity": rate(c["recipient_clicks"], c["recipient_opens"]),
        "unsubscription_rate": rate(c["unsubscriptions"], c["sent"]),
        "complaint_rate": rate(c["complaints"], c["sent"]),
    }


def build(conn: Connection, scope: Scope, query: ReportQuery) -> dict[str, Any] | None:
    d, since, until, tz = scope.delivery_id, scope.since, scope.until, scope.tz
    delivery = None
    if d is not None:
        row = get_delivery(conn, d)
        if row is None:
            return None
        delivery = {
            "id": int(row["id"]),
            "name": row["name"],
            "subject": row["subject"],
            "state": row["state"],
            "typology": row["typology"],
            "created_at": iso_local(row["created_at"], tz),
            "started_at": iso_local(row["started_at"], tz),
            "sent_at": iso_local(row["sent_at"], tz),
        }
    c = counts(conn, d, since, until)
    r = rates(c)
    lines = [
        {
            "section": section,
            "key": key,
            "label": label,
            "value": c[key],
            "percent": None if of is None else rate(c[key], c[of]),
            "of": of or "",
        }
        for section, key, label, of in LINES
    ]
    return {
        "scope": scope.describe(),
        "delivery": delivery,
        **c,
        **r,
        "lines": lines,
        "outcomes": [
            {
                "outcome": key,
                "title": title,
                "messages": c[key],
                "percent": rate(c[key], c["to_deliver"]),
            }
            for key, title in OUTCOMES
        ],
        "top_reasons": reason_table(conn, d, since, until)[:TOP_REASONS],
    }


REPORT = Report(
    name="summary",
    title="Delivery summary",
    build=build,
    tables={"lines": LINE_COLUMNS, "outcomes": OUTCOME_COLUMNS},
)
