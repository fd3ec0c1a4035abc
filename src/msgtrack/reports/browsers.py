"""Browsers report (SPEC §7): visitors, pages and usage rate per browser and per major
version, and the history per day, from ``agent_buckets`` (see ``reports.agents``)."""

from msgtrack.reports.agents import dimension_report

REPORT = dimension_report("browsers", "Browsers", "browser")
