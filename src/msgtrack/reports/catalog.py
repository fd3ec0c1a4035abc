"""Every report the routes serve, by name. A report module defines ``REPORT``; add it here."""

from __future__ import annotations

from msgtrack.reports import (
    breakdown_of_opens,
    browsers,
    click_streams,
    delivery_statistics,
    hot_clicks,
    indicators,
    non_deliverables,
    operating_systems,
    summary,
    throughput,
    tracking_statistics,
    user_activities,
)
from msgtrack.reports.registry import REPORT_NAMES, Report

REPORTS: dict[str, Report] = {
    r.name: r
    for r in (
        indicators.REPORT,
        click_streams.REPORT,
        hot_clicks.REPORT,
        tracking_statistics.REPORT,
        user_activities.REPORT,
        breakdown_of_opens.REPORT,
        browsers.REPORT,
        operating_systems.REPORT,
        summary.REPORT,
        delivery_statistics.REPORT,
        non_deliverables.REPORT,
        throughput.REPORT,
    )
}

assert set(REPORTS) <= set(REPORT_NAMES), "a report's name is not one of the contract's"


def available() -> list[Report]:
    """The built reports, in the contract's order (the order of the tabs)."""
    return [REPORTS[name] for name in REPORT_NAMES if name in REPORTS]
