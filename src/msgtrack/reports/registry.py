"""What a report is, for the generic routes that serve every report the same way.

A report is a plain function from (connection, scope, query) to a JSON-able dict, plus
the names of the lists in that dict that export as CSV. The web UI, the JSON API and the
CSV export all call the same function, so a page always shows what the API returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Connection

# Every report of issue 4, in the order the tabs show them: addresses are a contract.
REPORT_NAMES = (
    "indicators",
    "click-streams",
    "hot-clicks",
    "tracking-statistics",
    "user-activities",
    "breakdown-of-opens",
    "browsers",
    "operating-systems",
    "summary",
    "delivery-statistics",
    "non-deliverables",
    "throughput",
)

# A global report without a date range covers this many days, ending today.
DEFAULT_GLOBAL_DAYS = 30


@dataclass(frozen=True)
class Scope:
    """Which events a report covers."""

    delivery_id: int | None  # None: the global report, across deliveries
    since: datetime | None  # UTC instant, inclusive
    until: datetime | None  # UTC instant, exclusive
    tz: ZoneInfo  # days and hours are shown in this zone

    @property
    def is_global(self) -> bool:
        return self.delivery_id is None

    def describe(self) -> dict[str, Any]:
        """The scope as reports return it (JSON)."""
        return {
            "delivery_id": self.delivery_id,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "timezone": self.tz.key,
        }


@dataclass(frozen=True)
class ReportQuery:
    """The optional query parameters every report route accepts; each report reads the
    ones it has and raises ReportError for a value it does not know."""

    timescale: str | None = None
    view: str | None = None
    period: str | None = None
    mobile: bool = False
    table: str | None = None

    def choose(self, field: str, allowed: Sequence[str], default: str) -> str:
        """The value of ``field``, checked against ``allowed``, or ``default`` when unset."""
        value = getattr(self, field)
        if value is None or value == "":
            return default
        if value not in allowed:
            raise ReportError(f"{field} must be one of {', '.join(allowed)}")
        return str(value)


class ReportError(ValueError):
    """A query value the report cannot use: the routes answer 400 with this text."""


Builder = Callable[[Connection, Scope, ReportQuery], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Report:
    name: str
    title: str
    build: Builder
    # CSV-exportable lists of the built dict: key -> column names; the first is the default.
    tables: Mapping[str, Sequence[str]]

    def csv_table(self, query: ReportQuery) -> tuple[str, Sequence[str]]:
        """The (key, columns) of the list that ``?format=csv`` exports."""
        key = query.table or next(iter(self.tables))
        if key not in self.tables:
            raise ReportError(f"table must be one of {', '.join(self.tables)}")
        return key, self.tables[key]


def date_range(
    tz: ZoneInfo, since: date | None, until: date | None, *, default_days: int | None
) -> tuple[datetime | None, datetime | None]:
    """Local calendar days [since, until] (both inclusive) as UTC instants [start, end).

    With ``default_days``, a missing end is today and a missing start ``default_days``
    days before the end."""
    if since is not None and until is not None and since > until:
        raise ReportError("since must not be after until")
    if default_days is not None:
        until = until or datetime.now(tz).date()
        since = since or until - timedelta(days=default_days - 1)
    start = datetime.combine(since, time(), tz) if since else None
    end = datetime.combine(until + timedelta(days=1), time(), tz) if until else None
    return start, end
