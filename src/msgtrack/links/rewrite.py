"""Rewrite a content's tracked links into template calls, and add the open beacon.

Only the bytes of each tracked ``href`` value (or each URL of the text part) change,
plus one beacon ``<img>`` right after ``<body>``: every other byte of the document is
copied as is, so what the author wrote is what the recipient gets. The rewritten
content is a Jinja template: ``{{ _msgtrack_link(N) }}`` (or, for a personalized URL,
``{{ _msgtrack_link(N, ((expr1), (expr2),)) }}``) where N is the ordinal of the tracked
URL; the renderer provides ``_msgtrack_link`` and ``_msgtrack_beacon``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from msgtrack.links.detect import find_text_links, is_excluded, scan_html, tracked_html_links
from msgtrack.links.personalize import parse_url_template

BEACON = (
    '<img src="{{ _msgtrack_beacon() }}" width="1" height="1" alt=""'
    ' style="display:block;width:1px;height:1px;border:0">'
)


@dataclass(frozen=True)
class DetectedLink:
    """One distinct tracked URL of a content."""

    ordinal: int  # 1..n, order of first appearance (HTML part first, then text part)
    url: str  # as written (HTML-unescaped); may contain {{ expressions }}
    label: str
    category: str


@dataclass(frozen=True)
class PreparedContent:
    html_template: str | None
    text_template: str | None
    links: list[DetectedLink]


def link_call(ordinal: int, expressions: Sequence[str] = ()) -> str:
    """The template expression that renders the tracked link of ``ordinal``."""
    if not expressions:
        return f"{{{{ _msgtrack_link({ordinal}) }}}}"
    values = "".join(f"({expr}), " for expr in expressions).rstrip(" ")
    return f"{{{{ _msgtrack_link({ordinal}, ({values})) }}}}"


class _TrackedUrls:
    """Distinct tracked URLs in order of first appearance, labelled by their first anchor."""

    def __init__(self) -> None:
        self.urls: dict[str, int] = {}
        self.labels: dict[int, str] = {}
        self.categories: dict[int, str] = {}

    def add(self, url: str, label: str = "", category: str = "") -> int:
        ordinal = self.urls.setdefault(url, len(self.urls) + 1)
        if label and ordinal not in self.labels:
            self.labels[ordinal] = label
        if category and ordinal not in self.categories:
            self.categories[ordinal] = category
        return ordinal

    def detected(self) -> list[DetectedLink]:
        return [
            DetectedLink(n, url, self.labels.get(n, url), self.categories.get(n, ""))
            for url, n in self.urls.items()
        ]


def _splice(source: str, edits: list[tuple[int, int, str]]) -> str:
    out: list[str] = []
    pos = 0
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1])):
        out.append(source[pos:start])
        out.append(replacement)
        pos = end
    out.append(source[pos:])
    return "".join(out)


def _rewrite_html(html: str, links: _TrackedUrls, exclude: Sequence[str]) -> str:
    scan = scan_html(html)
    edits: list[tuple[int, int, str]] = []
    for link in tracked_html_links(scan, exclude):
        template = parse_url_template(link.url)  # refuses unsafe personalization
        ordinal = links.add(link.url, link.label, link.category)
        quote = link.quote or '"'
        edits.append(
            (link.start, link.end, quote + link_call(ordinal, template.expressions) + quote)
        )
    beacon_at = scan.body_end if scan.body_end is not None else 0
    edits.append((beacon_at, beacon_at, BEACON))
    return _splice(html, edits)


def _rewrite_text(text: str, links: _TrackedUrls, exclude: Sequence[str]) -> str:
    edits: list[tuple[int, int, str]] = []
    for link in find_text_links(text):
        if is_excluded(link.url, exclude):
            continue
        template = parse_url_template(link.url)
        call = link_call(links.add(link.url), template.expressions)
        start = link.start
        if start > 0 and text[start - 1] == "{":
            # "{{{ ..." would open the expression one brace early: emit that brace
            # through the template instead.
            start -= 1
            call = '{{ "{" }}' + call
        edits.append((start, link.end, call))
    return _splice(text, edits)


def prepare_content(
    html: str | None, text: str | None, *, exclude: Sequence[str] = ()
) -> PreparedContent:
    """Detect the tracked links of a content and rewrite both parts into templates.

    Raises ``PersonalizationError`` for a link personalized in its scheme, host or port.
    """
    links = _TrackedUrls()
    html_template = _rewrite_html(html, links, exclude) if html is not None else None
    text_template = _rewrite_text(text, links, exclude) if text is not None else None
    return PreparedContent(html_template, text_template, links.detected())
