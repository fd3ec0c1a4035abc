"""Parameters appended to destination URLs by rule (``utm_source=…`` and the like).

A rule is a shell-style pattern over the URL as written and a query string to append.
Parameters already present in the URL are left as the author wrote them; the fragment
stays last. Rules apply when the delivery is created, so the registered tracked URL is
the destination people reach, and the token never carries it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import parse_qsl


class ParamRuleError(ValueError):
    """A rule that cannot be applied safely."""


@dataclass(frozen=True)
class ParamRule:
    pattern: str  # e.g. "https://shop.example/*"; "*" for every link
    query: str  # e.g. "utm_source=newsletter&utm_medium=email"

    def __post_init__(self) -> None:
        if any(c in self.query for c in "{}#\r\n \t"):
            raise ParamRuleError(f"parameters must be a plain query string: {self.query!r}")


def append_params(url: str, query: str) -> str:
    """``url`` with the parameters of ``query`` it does not have yet."""
    base, hash_, fragment = url.partition("#")
    path, question, existing = base.partition("?")
    have = {key for key, _ in parse_qsl(existing, keep_blank_values=True)}
    new = [
        part for part in query.lstrip("?&").split("&") if part and part.split("=")[0] not in have
    ]
    if not new:
        return url
    joined = existing + ("&" if existing and not existing.endswith("&") else "") + "&".join(new)
    return f"{path}?{joined}{hash_}{fragment}"


def apply_rules(url: str, rules: Sequence[ParamRule]) -> str:
    for rule in rules:
        if fnmatchcase(url, rule.pattern):
            url = append_params(url, rule.query)
    return url
