"""A plain-text version of an HTML part, for text-only recipients of a delivery written
in HTML only.

The well-known "strip the tags" conversion (as ``lynx -dump`` or html2text do it, kept
small): the visible text, a line break per block, list items as ``* item``, each link
followed by its address in angle brackets, as plain-text mail writes it. Links keep
their tracked addresses, so clicks from the text version are still tracked.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

BLOCKS = frozenset(
    "address article aside blockquote dd div dl dt fieldset figcaption figure footer form "
    "h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section table tr ul".split()
)
HIDDEN = frozenset({"head", "script", "style", "title", "template", "noscript"})


class _TextMaker(HTMLParser):
    """The well-known "strip the tags" conversion: visible text, a line break per block,
    each link followed by its address in angle brackets (as plain-text mail writes it)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.hidden = 0
        self.href: str | None = None
        self.link_text: list[str] = []
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in HIDDEN:
            self.hidden += 1
        elif tag == "br":
            self.out.append("\n")
        elif tag in BLOCKS:
            self.out.append(
                "\n\n" if tag in ("p", "h1", "h2", "h3", "h4", "h5", "h6", "table") else "\n"
            )
            if tag == "li":
                self.out.append("* ")
            elif tag == "pre":
                self.pre += 1
        elif tag == "a":
            href = dict(attrs).get("href") or ""
            self.href = href if href and not href.startswith("#") else None
            self.link_text = []
        elif tag == "img" and not self.hidden:
            alt = (dict(attrs).get("alt") or "").strip()
            if alt:
                self._text(alt)
        elif tag == "td" or tag == "th":
            self.out.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in HIDDEN:
            self.hidden -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag in HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag == "a" and self.href is not None:
            text = " ".join("".join(self.link_text).split())
            if self.href != text:
                self.out.append(f" <{self.href}>")
            self.href = None
        elif tag in BLOCKS and tag != "li":  # the next item starts its own line
            self.out.append("\n")
            if tag == "pre":
                self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self._text(data)

    def _text(self, data: str) -> None:
        if not self.pre:
            data = re.sub(r"[ \t\n\r\f]+", " ", data)
        self.out.append(data)
        if self.href is not None:
            self.link_text.append(data)


def html_to_text(html: str) -> str:
    """A plain-text version of a rendered HTML part, for text-only recipients of a
    delivery written in HTML only."""
    maker = _TextMaker()
    maker.feed(html)
    maker.close()
    text = "".join(maker.out)
    lines = [line.strip() for line in text.splitlines()]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text + "\n"
