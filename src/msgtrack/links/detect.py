"""Find the links of a content, with their exact places in the source.

The HTML part is tokenized by the stdlib ``html.parser``, used only to know where each
start tag begins; the attribute values are then located inside the raw tag text with the
parser's own attribute pattern. Nothing is ever re-serialized, so the rewriter can change
exactly the bytes of an ``href`` value and nothing else.

Contents are Jinja templates. Before tokenizing, template syntax is masked (same length,
so offsets hold): ``{{ expr }}`` keeps its braces with its inside made opaque, so an
unquoted ``href=https://a.example/{{ recipient.id }}`` stays one value; statements,
comments and raw blocks become blanks, so a link inside ``{# ... #}`` or inside a string
of an expression is never touched.
"""

from __future__ import annotations

import html.parser
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from html import unescape
from html.entities import html5 as HTML5_ENTITIES
from html.parser import HTMLParser

# The stdlib parser's own patterns, so attribute spans agree with how it read the tag.
TAG_NAME: re.Pattern[str] = getattr(html.parser, "tagfind_tolerant")  # noqa: B009
ATTRIBUTE: re.Pattern[str] = getattr(html.parser, "attrfind_tolerant")  # noqa: B009

# -- template syntax -------------------------------------------------------------

TEMPLATE_SYNTAX = re.compile(
    r"(?P<raw>\{%-?\s*raw\s*-?%\}.*?\{%-?\s*endraw\s*-?%\})"
    r"|(?P<expr>\{\{.*?\}\})"
    r"|(?P<other>\{%.*?%\}|\{#.*?#\})",
    re.S,
)


def template_spans(source: str) -> list[tuple[int, int]]:
    """Spans of the Jinja expressions, statements, comments and raw blocks of ``source``."""
    return [m.span() for m in TEMPLATE_SYNTAX.finditer(source)]


def mask_template_syntax(source: str) -> str:
    """``source`` with its template syntax made inert for the HTML tokenizer, same length."""

    def mask(m: re.Match[str]) -> str:
        text = m.group(0)
        if m.lastgroup == "expr":
            return "{{" + "x" * (len(text) - 4) + "}}"
        return " " * len(text)

    return TEMPLATE_SYNTAX.sub(mask, source)


# -- URLs ------------------------------------------------------------------------

HTTP_URL = re.compile(r"https?://[^\s/?#\\]", re.I)
HTML_SPACE = " \t\n\f\r"


def is_http_url(url: str) -> bool:
    """An absolute http(s) URL with something after ``//``: the only links we track."""
    return HTTP_URL.match(url) is not None


def is_excluded(url: str, patterns: Iterable[str]) -> bool:
    """``url`` matches one of the shell-style ``patterns`` (whole URL, case-sensitive)."""
    return any(fnmatchcase(url, pattern) for pattern in patterns)


CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")


def _attribute_charref(m: re.Match[str]) -> str:
    name = m.group(1)
    if name.startswith("#"):
        return unescape(m.group(0))
    if name in HTML5_ENTITIES:
        return HTML5_ENTITIES[name]
    # A legacy reference without ';' ("&copy"): inside an attribute, browsers keep it
    # as written when '=' or an alphanumeric follows, so '?a=1&region=fr' stays intact.
    for size in range(len(name) - 1, 1, -1):
        if name[:size] in HTML5_ENTITIES:
            after = name[size]
            if after == "=" or (after.isascii() and after.isalnum()):
                return m.group(0)
            return HTML5_ENTITIES[name[:size]] + name[size:]
    return m.group(0)


def unescape_attribute(value: str) -> str:
    """Decode character references as a browser does in an attribute value."""
    if "&" not in value:
        return value
    return CHARREF.sub(_attribute_charref, value)


def _href_url(raw_value: str) -> str:
    """The URL an ``href`` value means: unescaped, trimmed, template expressions as written."""
    parts = re.split(r"(\{\{.*?\}\})", raw_value, flags=re.S)
    decoded = "".join(p if i % 2 else unescape_attribute(p) for i, p in enumerate(parts))
    return decoded.strip(HTML_SPACE)


def _collapse(text: str) -> str:
    return " ".join(text.split())


# -- HTML ------------------------------------------------------------------------


@dataclass(frozen=True)
class HtmlLink:
    """An ``<a>`` or ``<area>`` with an ``href``, where its value sits in the source."""

    tag: str
    url: str
    start: int  # span of the raw value, quotes included
    end: int
    quote: str  # '"', "'", or "" when unquoted
    off: bool  # data-msgtrack="off"
    label: str  # the label this element offers, "" when none
    category: str


@dataclass(frozen=True)
class HtmlScan:
    links: list[HtmlLink]  # in document order
    body_end: int | None  # offset just after the first <body ...> tag


@dataclass(frozen=True)
class _Attribute:
    name: str
    start: int  # span of the value in the tag text, quotes included
    end: int
    quoted: str


def _attributes(tag_text: str) -> list[_Attribute]:
    """The attributes of a raw start tag, as ``html.parser`` reads them, with spans."""
    match = TAG_NAME.match(tag_text, 1)
    assert match is not None
    k = match.end()
    attributes: list[_Attribute] = []
    while k < len(tag_text):
        m = ATTRIBUTE.match(tag_text, k)
        if not m:
            break
        name, rest, value = m.group(1, 2, 3)
        if rest:
            quoted = len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]
            quote = value[0] if quoted else ""
            attributes.append(_Attribute(name.lower(), m.start(3), m.end(3), quote))
        else:
            attributes.append(_Attribute(name.lower(), m.end(1), m.end(1), ""))
        k = m.end()
    return attributes


COMMENT_END = re.compile(r"--!?>")


class Tokenizer(HTMLParser):
    """``html.parser`` as a browser sees e-mail HTML, for what matters to links.

    Raw-text elements hide their contents; comments end as HTML5 says; ``<![...]>`` is a
    bogus comment (the stdlib raises on unknown marked sections).
    """

    CDATA_CONTENT_ELEMENTS = (  # type: ignore[misc]
        "script",
        "style",
        "textarea",
        "title",
        "xmp",
        "iframe",
        "noembed",
        "noframes",
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def parse_comment(self, i: int, report: bool | int = True) -> int:
        rawdata = self.rawdata
        for abrupt in ("<!-->", "<!--->"):
            if rawdata.startswith(abrupt, i):
                return i + len(abrupt)
        match = COMMENT_END.search(rawdata, i + 4)
        return match.end() if match else -1

    def parse_marked_section(self, i: int, report: bool | int = True) -> int:
        end = self.rawdata.find(">", i + 3)
        return end + 1 if end >= 0 else -1

    def in_raw_text(self) -> bool:
        return getattr(self, "cdata_elem", None) is not None


class _LinkFinder(Tokenizer):
    def __init__(self, source: str, masked: str) -> None:
        super().__init__()
        self.source = source
        self.masked = masked
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", masked)]
        self.links: list[HtmlLink] = []
        self.body_end: int | None = None
        self._open: tuple[int, int] | None = None  # the open <a>: link index, inner start

    def _offset(self) -> int:
        line, column = self.getpos()
        return self.line_starts[line - 1] + column

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # Browsers ignore the self-closing flag of HTML elements: <a/> stays open.
        self.handle_starttag(tag, attrs)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("a", "area", "body"):
            return
        start = self._offset()
        tag_text = self.get_starttag_text() or ""
        end = start + len(tag_text)
        if self.masked[start:end] != tag_text:
            raise RuntimeError(f"HTML tokenizer offset mismatch at {start}")
        if tag == "body":
            if self.body_end is None:
                self.body_end = end
            return
        if tag == "a":
            self._close(start)
        spans = _attributes(tag_text)
        if [a.name for a in spans] != [name for name, _ in attrs]:
            raise RuntimeError(f"HTML tokenizer attribute mismatch at {start}")
        values: dict[str, str] = {}
        href: _Attribute | None = None
        for a in spans:
            if a.name in values or (a.name == "href" and href is not None):
                continue  # browsers keep the first of repeated attributes
            raw = self.source[start + a.start : start + a.end]
            if a.quoted:
                raw = raw[1:-1]
            if a.name == "href":
                href = a
                values["href"] = raw
            else:
                values[a.name] = unescape_attribute(raw)
        if href is None:
            return
        self.links.append(
            HtmlLink(
                tag=tag,
                url=_href_url(values["href"]),
                start=start + href.start,
                end=start + href.end,
                quote=href.quoted,
                off=values.get("data-msgtrack", "").strip(HTML_SPACE).lower() == "off",
                label=_collapse(values.get("data-msgtrack-label", "") or values.get("title", "")),
                category=values.get("data-msgtrack-category", "").strip(),
            )
        )
        if tag == "area":
            if not self.links[-1].label:
                self._relabel(len(self.links) - 1, _collapse(values.get("alt", "")))
        else:
            self._open = (len(self.links) - 1, end)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._close(self._offset())

    def close(self) -> None:
        super().close()
        self._close(len(self.source))

    def _close(self, inner_end: int) -> None:
        if self._open is None:
            return
        index, inner_start = self._open
        self._open = None
        if not self.links[index].label:
            self._relabel(index, anchor_text_label(self.source[inner_start:inner_end]))

    def _relabel(self, index: int, label: str) -> None:
        self.links[index] = replace(self.links[index], label=label)


class _TextOf(Tokenizer):
    """The visible text of an anchor's contents, and the alt of its first image."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.alt = ""

    def handle_data(self, data: str) -> None:
        if not self.in_raw_text():
            self.text.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img" and not self.alt:
            self.alt = _collapse(dict(attrs).get("alt") or "")


def anchor_text_label(inner_html: str) -> str:
    """An anchor's text (tags stripped, whitespace collapsed), else its image's alt."""
    parser = _TextOf()
    parser.feed(inner_html)
    parser.close()
    return _collapse("".join(parser.text)) or parser.alt


def scan_html(html: str) -> HtmlScan:
    """Every ``<a>``/``<area>`` with an ``href`` and where the first ``<body>`` tag ends."""
    finder = _LinkFinder(html, mask_template_syntax(html))
    finder.feed(finder.masked)
    finder.close()
    return HtmlScan(finder.links, finder.body_end)


# -- text ------------------------------------------------------------------------


@dataclass(frozen=True)
class TextLink:
    url: str
    start: int
    end: int


TEXT_URL_START = re.compile(r"(?<![A-Za-z0-9+.\-])https?://", re.I)
URL_EXPRESSION = re.compile(r"\{\{(?:(?!\}\})[^\n])*\}\}")
# Never part of a URL written in text.
URL_STOP = frozenset('<>"`“”‘’«»')
TRAILING_PUNCTUATION = frozenset(".,;:!?*")
BRACKETS = {")": "(", "]": "[", "}": "{"}
QUOTES = frozenset("'\"")


def _url_end(text: str, start: int, pos: int) -> int:
    """End of the URL starting at ``start`` (scheme ends at ``pos``), delimiters honoured."""
    opener = text[start - 1] if start > 0 else ""
    n = len(text)
    expression_end = -1
    while pos < n:
        if text.startswith("{{", pos):
            m = URL_EXPRESSION.match(text, pos)
            if m is None:
                break
            pos = expression_end = m.end()
            continue
        ch = text[pos]
        if ch.isspace() or ch in URL_STOP or (ch in QUOTES and ch == opener):
            break
        if ch == "{" and text[pos + 1 : pos + 2] in ("%", "#"):
            break
        pos += 1
    end = pos
    while end > start and end != expression_end:
        last = text[end - 1]
        if last in TRAILING_PUNCTUATION:
            end -= 1
        elif last in BRACKETS:
            url = text[start:end]
            if url.count(last) <= url.count(BRACKETS[last]):
                break
            end -= 1
        else:
            break
    return end


def find_text_links(text: str) -> list[TextLink]:
    """The http(s) URLs of a plain-text part, outside template syntax."""
    spans = template_spans(text)
    links: list[TextLink] = []
    floor = 0  # URLs never overlap
    span_index = 0
    for m in TEXT_URL_START.finditer(text):
        start = m.start()
        if start < floor:
            continue
        while span_index < len(spans) and spans[span_index][1] <= start:
            span_index += 1
        if span_index < len(spans) and spans[span_index][0] <= start:
            continue  # inside an expression, statement or comment
        end = _url_end(text, start, m.end())
        url = text[start:end]
        if not is_http_url(url):
            continue
        links.append(TextLink(url, start, end))
        floor = end
    return links


def tracked_html_links(scan: HtmlScan, exclude: Sequence[str]) -> list[HtmlLink]:
    """The links of ``scan`` to track: http(s), not switched off, not excluded."""
    return [
        link
        for link in scan.links
        if not link.off and is_http_url(link.url) and not is_excluded(link.url, exclude)
    ]
