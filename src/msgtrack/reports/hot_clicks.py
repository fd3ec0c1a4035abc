"""Hot clicks: the content as the author wrote it, each tracked link marked with its share
of all visits of tracked links; opt-out and mirror visits count in that total but are
shown in a legend, not on the content.

The overlay is inserted on the server: the link detector (``links.detect``) finds each
link of the content as written, and a ``<mark>`` badge goes right inside its ``<a>`` (or
after the URL in the text part). Links keep their original URLs, never tracking ones, so
viewing the content records nothing; the page shows it in an iframe with
``sandbox=""`` (no script, no forms, no same-origin access), whose ``srcdoc`` also
inherits the admin's Content-Security-Policy.

A link is matched to its tracked URL by URL, as preparation made one tracked URL per
distinct URL (so an URL written twice shows its share at both places).
"""

from __future__ import annotations

from html import escape
from typing import Any

from sqlalchemy.engine import Connection

from msgtrack.links.detect import find_text_links, is_http_url, mask_template_syntax, scan_html
from msgtrack.reports.indicators import rate
from msgtrack.reports.registry import Report, ReportQuery, Scope
from msgtrack.storage import buckets as store

VISITS = ("click", "opt-out", "mirror")
LINK_COLUMNS = ("ordinal", "label", "url", "clicks", "share")
LEGEND_COLUMNS = ("type", "visits", "share")
STYLESHEET = '<link rel="stylesheet" href="/static/hotclicks.css">'


def build(conn: Connection, scope: Scope, query: ReportQuery) -> dict[str, Any] | None:
    did = scope.delivery_id
    html = text = None
    if did is not None:
        times = store.delivery_times(conn, did)
        if times is None:
            return None
        html, text = times.html, times.text
    span = {"since": scope.since, "until": scope.until}
    visits = store.events_per_url(conn, did, VISITS, **span)
    by_type = {t: sum(v.clicks for v in visits if v.type == t) for t in VISITS}
    total = sum(by_type.values())
    links: dict[str, dict[str, Any]] = {}  # by URL
    rows = visits + (store.delivery_links(conn, did) if did is not None else [])
    for v in rows:
        if v.type != "click":
            continue
        link = links.setdefault(
            v.url, {"ordinal": v.ordinal, "label": v.label, "url": v.url, "clicks": 0}
        )
        link["clicks"] += v.clicks
        link["ordinal"] = min(link["ordinal"], v.ordinal)
    for link in links.values():
        link["share"] = rate(link["clicks"], total)
    shares = {url: link["share"] for url, link in links.items()}
    return {
        "scope": scope.describe(),
        "timezone": scope.tz.key,
        "total_visits": total,
        "links": sorted(links.values(), key=lambda r: (r["ordinal"], r["url"])),
        "legend": [
            {"type": t, "visits": by_type[t], "share": rate(by_type[t], total)}
            for t in ("opt-out", "mirror")
        ],
        "html": overlay_html(html, shares) if html is not None else None,
        "text": overlay_text(text, shares) if text is not None else None,
    }


def badge(share: float) -> str:
    return f"{share:g} %"


def overlay_html(html: str, shares: dict[str, float]) -> str:
    """``html`` with a share badge at the start of each tracked ``<a>``'s content."""
    masked = mask_template_syntax(html)
    scan = scan_html(html)
    # The badges' stylesheet, after <body> (before it, a doctype would be pushed down).
    edits: list[tuple[int, str]] = [(scan.body_end or 0, STYLESHEET)]
    for link in scan.links:
        if link.tag != "a" or not is_http_url(link.url) or link.url not in shares:
            continue
        end = _tag_end(masked, link.end)
        if end is not None:
            mark = f'<mark class="msgtrack-share">{escape(badge(shares[link.url]))}</mark>'
            edits.append((end, mark))
    out: list[str] = []
    pos = 0
    for at, insert in sorted(edits, key=lambda e: e[0]):
        out += [html[pos:at], insert]
        pos = at
    out.append(html[pos:])
    return "".join(out)


def _tag_end(masked: str, pos: int) -> int | None:
    """Just after the ``>`` closing the start tag in which ``pos`` lies (quotes honoured)."""
    quote = ""
    for i in range(pos, len(masked)):
        ch = masked[i]
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == ">":
            return i + 1
    return None


def overlay_text(text: str, shares: dict[str, float]) -> str:
    """The text part with `` [12.5 %]`` after each tracked URL."""
    out: list[str] = []
    pos = 0
    for link in find_text_links(text):
        if link.url in shares:
            out += [text[pos : link.end], f" [{badge(shares[link.url])}]"]
            pos = link.end
    out.append(text[pos:])
    return "".join(out)


REPORT = Report(
    name="hot-clicks",
    title="Hot clicks",
    build=build,
    tables={"links": LINK_COLUMNS, "legend": LEGEND_COLUMNS},
)
