"""Personalized tracked URLs: ``https://shop.example/p/{{ recipient.id }}?n={{ recipient.name }}``.

A tracked URL is stored once, as written. Its template expressions may appear only
after the first ``/`` of the path, so no value can ever reach the scheme, the host or
the port: the destination's origin comes from the registered URL alone. The values are
computed per recipient at render time, travel inside the signed token, and are
substituted percent-encoded by the tracking server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote

EXPR = re.compile(r"\{\{(.*?)\}\}", re.S)
# scheme://authority/ with nothing template-like before the first path slash.
ORIGIN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#{}\s]+/")


class PersonalizationError(ValueError):
    """A link personalized where it must not be (scheme, host, port) or malformed."""


@dataclass(frozen=True)
class UrlTemplate:
    """A URL split into literal text around template expressions.

    ``literals`` has one more item than ``expressions``.
    """

    url: str
    literals: tuple[str, ...]
    expressions: tuple[str, ...]

    @property
    def personalized(self) -> bool:
        return bool(self.expressions)

    def resolve(self, values: tuple[str, ...] | list[str]) -> str:
        """The destination with ``values`` substituted, percent-encoded."""
        if len(values) != len(self.expressions):
            raise ValueError("wrong number of personalization values")
        out = [self.literals[0]]
        for value, literal in zip(values, self.literals[1:], strict=True):
            out.append(quote(value, safe=""))
            out.append(literal)
        return "".join(out)


@lru_cache(maxsize=4096)
def parse_url_template(url: str) -> UrlTemplate:
    """Split ``url`` into literals and expressions, refusing unsafe personalization."""
    if "{%" in url or "{#" in url:
        raise PersonalizationError(f"only {{{{ expressions }}}} may personalize a link: {url}")
    literals: list[str] = []
    expressions: list[str] = []
    pos = 0
    for match in EXPR.finditer(url):
        literals.append(url[pos : match.start()])
        expr = match.group(1)
        # "{{- x -}}": the dashes are Jinja whitespace control, not part of the expression.
        expr = expr.removeprefix("-").removesuffix("-").strip()
        if not expr:
            raise PersonalizationError(f"empty expression in link: {url}")
        expressions.append(expr)
        pos = match.end()
    literals.append(url[pos:])
    if "{{" in literals[-1] or "}}" in "".join(literals):
        raise PersonalizationError(f"unbalanced template braces in link: {url}")
    if expressions and not ORIGIN.match(literals[0]):
        raise PersonalizationError(
            "a link may be personalized in its path and query only, after the first '/' "
            f"of the path, never in its scheme, host or port: {url}"
        )
    return UrlTemplate(url, tuple(literals), tuple(expressions))
