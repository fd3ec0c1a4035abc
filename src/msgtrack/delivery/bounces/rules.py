"""The qualification rule table: data, not code.

An ordered list of rows (``rules.csv`` shipped with the package, or a file named by
``MSGTRACK_BOUNCE_RULES``), each a pattern on the enhanced status code, one on the SMTP
reply code and one on the remote text, with the reason and type they give. The first
row whose patterns all match wins, so the order is the policy: refusals about the
sender (blocklists, reputation, 5.7.x) come before anything that would quarantine the
recipient.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

REASONS = (
    "user_unknown",
    "invalid_domain",
    "mailbox_full",
    "account_disabled",
    "rejected",
    "unreachable",
    "complaint",
    "ignored",
    "to_qualify",
)
TYPES = ("hard", "soft", "ignored")
RULE_TYPES = (*TYPES, "auto")

#: Variable parts of failure texts, replaced so similar errors group into one line.
_VARIABLE = [
    (re.compile(r"[\w.+\-=#%]+@[\w.\-]+"), "<address>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b|\b[0-9a-f]*:[0-9a-f:]+:[0-9a-f]+\b", re.I), "<ip>"),
    (re.compile(r"https?://\S+"), "<url>"),
    (re.compile(r"\b(?=[A-Za-z0-9\-]*\d)[A-Za-z0-9\-]{8,}\b"), "<id>"),
    (re.compile(r"(?<![\d.])\d{4,}(?![\d.])"), "<n>"),
]


class RuleError(ValueError):
    """A rules file that cannot be used (unknown reason or type, bad pattern)."""


@dataclass(frozen=True)
class Rule:
    status: re.Pattern[str] | None
    reply: re.Pattern[str] | None
    text: re.Pattern[str] | None
    reason: str
    type: str
    note: str = ""

    def matches(self, status: str, reply: str, text: str) -> bool:
        """``text`` lower-cased: text patterns without capitals are compiled
        case-sensitive, several times faster than ``re.I`` on long alternations."""
        return (
            (self.status is None or self.status.search(status) is not None)
            and (self.reply is None or self.reply.search(reply) is not None)
            and (self.text is None or self.text.search(text) is not None)
        )


@dataclass(frozen=True)
class Qualification:
    reason: str
    type: str
    rule: int  # index of the rule that matched (-1: no rule)


class RuleTable:
    """Ordered rules; :meth:`qualify` gives the first match's reason and type."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules

    def qualify(self, status: str | None, reply_code: str | None, text: str) -> Qualification:
        s, r, lowered = status or "", reply_code or "", text.lower()
        for i, rule in enumerate(self.rules):
            if rule.matches(s, r, lowered):
                return Qualification(rule.reason, _type(rule.type, s, r), i)
        return Qualification("to_qualify", "soft", -1)


def _type(rule_type: str, status: str, reply: str) -> str:
    if rule_type != "auto":
        return rule_type
    first = status[:1] or reply[:1]
    return "soft" if first == "4" else "hard"


def _pattern(text: str, where: str, line: int) -> re.Pattern[str] | None:
    text = text.strip()
    if not text:
        return None
    # Matched against lower-cased text: case-insensitive only when the pattern has
    # capitals (outside escapes such as \S).
    bare = re.sub(r"\\.", "", text)
    flags = re.I if where != "text" or bare != bare.lower() else 0
    try:
        return re.compile(text, flags)
    except re.error as exc:
        raise RuleError(f"line {line}: bad {where} pattern: {exc}") from exc


def parse_rules(text: str) -> RuleTable:
    """Rules from CSV text (``#`` lines are comments; the first other line names the
    columns: status, reply, text, reason, type, note)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    rules: list[Rule] = []
    for n, row in enumerate(csv.DictReader(io.StringIO("\n".join(lines))), start=2):
        reason = (row.get("reason") or "").strip()
        rule_type = (row.get("type") or "").strip()
        if reason not in REASONS:
            raise RuleError(f"line {n}: unknown reason {reason!r}")
        if rule_type not in RULE_TYPES:
            raise RuleError(f"line {n}: unknown type {rule_type!r}")
        rules.append(
            Rule(
                _pattern(row.get("status") or "", "status", n),
                _pattern(row.get("reply") or "", "reply", n),
                _pattern(row.get("text") or "", "text", n),
                reason,
                rule_type,
                (row.get("note") or "").strip(),
            )
        )
    return RuleTable(rules)


def default_rules_text() -> str:
    return resources.files("msgtrack.delivery.bounces").joinpath("rules.csv").read_text("utf-8")


@lru_cache(maxsize=8)
def load_rules(path: str | None = None) -> RuleTable:
    """The rules of ``path``, or the shipped defaults (cached: compiled once a process)."""
    text = Path(path).read_text("utf-8") if path else default_rules_text()
    return parse_rules(text)


def normalize_text(text: str) -> str:
    """A failure text with its variable parts (addresses, IPs, ids, numbers) replaced,
    so that the same error for different recipients collapses into one line."""
    for pattern, token in _VARIABLE:
        text = pattern.sub(token, text)
    return " ".join(text.split())[:500]
