"""Non-deliverables and bounces: a delivery's failures by error type (qualified reason
and hard / soft / ignored) and by internet domain, each expandable into the other.

Read from ``failure_stats`` (the send-side aggregates), never from the messages. A
failure here is a message that failed (synchronously at the relay, or sent and then
bounced hard) or a delivered message that bounced soft; complaints are not failures
(the message was delivered) and are counted apart. Domains are merged under their
alias table's name; each list of domains keeps the 20 with the most failures and sums
the rest as ``others``. Shares are in % of all the failures of the scope (of the
reason's, or of the domain's, inside an expanded row).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from msgtrack.reports.indicators import rate
from msgtrack.reports.registry import Report, ReportQuery, Scope
from msgtrack.storage import send_stats as store
from msgtrack.storage.tracking import delivery_header

VIEWS = ("reason", "domain")
TYPES = store.FAILURE_TYPES

# What each qualified reason means, for people (the JSON keeps the contract's names).
REASON_TITLES = {
    "user_unknown": "User unknown",
    "invalid_domain": "Invalid domain",
    "mailbox_full": "Mailbox full",
    "account_disabled": "Account disabled",
    "rejected": "Rejected",
    "unreachable": "Unreachable",
    "complaint": "Complaint",
    "ignored": "Ignored (not sent)",
    "to_qualify": "To qualify",
}

REASON_COLUMNS = ("reason", "failure_type", "title", "messages", "percent")
DOMAIN_COLUMNS = ("domain", "messages", "hard", "soft", "ignored", "percent")
ROW_COLUMNS = ("reason", "failure_type", "domain", "messages", "percent")


def reason_title(reason: str) -> str:
    return REASON_TITLES.get(reason, reason)


def reason_table(
    conn: Connection,
    delivery_id: int | None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """Failures per (reason, type), most first, with their share of all failures."""
    rows = store.failure_reason_rows(conn, delivery_id, since, until)
    total = sum(n for _, _, n in rows)
    return [_reason(reason, failure_type, n, total) for reason, failure_type, n in rows]


def _reason(reason: str, failure_type: str, n: int, total: int) -> dict[str, Any]:
    return {
        "reason": reason,
        "failure_type": failure_type,
        "title": reason_title(reason),
        "messages": n,
        "percent": rate(n, total),
    }


def _top(counts: Mapping[Any, int]) -> list[tuple[Any, int]]:
    """Most first (ties by key)."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _shown(counts: Mapping[str, int], total: int) -> list[tuple[str, int]]:
    """The top domains, and the rest of ``total`` as ``others``."""
    top = _top(counts)[: store.TOP_DOMAINS]
    rest = total - sum(n for _, n in top)
    return [*top, (store.OTHERS, rest)] if rest else top


def breakdown(
    conn: Connection,
    delivery_id: int | None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """The failures of the scope by reason (each with its domains) and by domain (each
    with its reasons), and their totals, from one read of ``failure_stats``."""
    aliases = store.alias_map(conn)
    cells: dict[tuple[str, str, str], int] = defaultdict(int)
    for domain, reason, failure_type, n in store.failure_rows(conn, delivery_id, since, until):
        cells[(aliases.get(domain.lower(), domain), reason, failure_type)] += n
    per_reason: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    per_domain: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
    for (domain, reason, failure_type), n in cells.items():
        if n:
            per_reason[(reason, failure_type)][domain] = n
            per_domain[domain][(reason, failure_type)] = n
    reason_totals = {k: sum(v.values()) for k, v in per_reason.items()}
    domain_totals = {k: sum(v.values()) for k, v in per_domain.items()}
    total = sum(reason_totals.values())
    by_type = {t: sum(n for (_, ft), n in reason_totals.items() if ft == t) for t in TYPES}

    by_reason = []
    for (reason, failure_type), n in _top(reason_totals):
        by_reason.append(
            {
                **_reason(reason, failure_type, n, total),
                "domains": [
                    {"domain": domain, "messages": m, "percent": rate(m, n)}
                    for domain, m in _shown(per_reason[(reason, failure_type)], n)
                ],
            }
        )
    by_domain = []
    shown = _shown(domain_totals, total)
    for domain, n in shown:
        if domain == store.OTHERS and domain not in per_domain:  # every domain's rest
            reasons = dict(reason_totals)
            for name, _ in shown:
                for key, m in per_domain.get(name, {}).items():
                    reasons[key] -= m
        else:
            reasons = per_domain[domain]
        by_domain.append(
            {
                "domain": domain,
                "messages": n,
                **{t: sum(m for (_, ft), m in reasons.items() if ft == t) for t in TYPES},
                "percent": rate(n, total),
                "reasons": [
                    _reason(reason, failure_type, m, n)
                    for (reason, failure_type), m in _top(reasons)
                    if m
                ],
            }
        )
    return {
        "total": {"messages": total, **by_type},
        "by_reason": by_reason,
        "by_domain": by_domain,
    }


def build(conn: Connection, scope: Scope, query: ReportQuery) -> dict[str, Any] | None:
    view = query.choose("view", VIEWS, "reason")
    d, since, until = scope.delivery_id, scope.since, scope.until
    if d is not None and delivery_header(conn, d) is None:
        return None
    data = breakdown(conn, d, since, until)
    counters = store.indicator_sums(conn, d, since, until, ("errors", "complaints"))
    return {
        "scope": scope.describe(),
        "view": view,
        "views": list(VIEWS),
        "total": {**data["total"], **counters},
        "by_reason": data["by_reason"],
        "by_domain": data["by_domain"],
        "rows": [
            {
                "reason": r["reason"],
                "failure_type": r["failure_type"],
                "domain": x["domain"],
                "messages": x["messages"],
                "percent": x["percent"],
            }
            for r in data["by_reason"]
            for x in r["domains"]
        ],
    }


class _Report(Report):
    """The CSV export follows the view: by domain when the page shows domains."""

    def csv_table(self, query: ReportQuery) -> tuple[str, Sequence[str]]:
        if not query.table and query.view == "domain":
            return "by_domain", self.tables["by_domain"]
        return super().csv_table(query)


REPORT = _Report(
    name="non-deliverables",
    title="Non-deliverables and bounces",
    build=build,
    tables={"by_reason": REASON_COLUMNS, "by_domain": DOMAIN_COLUMNS, "rows": ROW_COLUMNS},
)
