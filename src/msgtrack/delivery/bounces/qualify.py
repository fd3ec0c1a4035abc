"""From a parsed message to one verdict per failed recipient: reason and type.

Complaints, auto-replies and success reports are qualified by what they are, not by
rules: a complaint is ``complaint`` (it denylists), the others ``ignored``. A delay
warning (a DSN whose action is ``delayed``, or a notice that the MTA will retry) is
``unreachable`` of type ``ignored``: informational, it changes no message status and
counts toward no quarantine. Every failure goes through the rule table: its own remote
text first (the notice's text when it has none), and the notice's whole text when that
alone says nothing the rules recognize.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from msgtrack.delivery.bounces.parse import Bounce, find_reply_code, find_status, parse_bounce
from msgtrack.delivery.bounces.rules import RuleTable, load_rules

#: Longest remote text kept, in characters.
MAX_DIAGNOSTIC = 1000


@dataclass(frozen=True)
class Verdict:
    """One failed recipient of a message from the bounce mailbox, qualified."""

    recipient: str | None
    status: str | None
    reply_code: str | None
    reason: str
    type: str
    diagnostic: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def qualify_bounce(bounce: Bounce, rules: RuleTable | None = None) -> list[Verdict]:
    """The verdicts of a parsed message (at least one)."""
    table = rules or load_rules()
    if bounce.kind == "complaint":
        return [
            Verdict(f.recipient, None, None, "complaint", "hard", f.diagnostic)
            for f in bounce.failures
        ]
    if bounce.kind == "autoreply":
        return [Verdict(None, None, None, "ignored", "ignored", _short(bounce.subject))]
    if bounce.kind == "delivered":
        first = bounce.failures[0]
        return [Verdict(first.recipient, first.status, None, "ignored", "ignored", "delivered")]
    if bounce.kind == "unknown" or not bounce.failures:
        return [Verdict(None, None, None, "to_qualify", "ignored", _short(bounce.subject))]
    out = []
    for f in bounce.failures:
        if (f.action or "") in ("delivered", "relayed", "expanded"):
            out.append(
                Verdict(f.recipient, f.status, f.reply_code, "ignored", "ignored", f.diagnostic)
            )
            continue
        if f.action == "delayed":  # the reason says why it is late; changes nothing
            out.append(
                Verdict(f.recipient, f.status, f.reply_code, "unreachable", "ignored", f.diagnostic)
            )
            continue
        # A DSN block without a Diagnostic-Code: the notice's own text explains it
        # better than the bare status code (5.1.10 is a null MX or, at Office 365, an
        # unknown recipient).
        text = f.diagnostic or bounce.text[:4000]
        verdict = table.qualify(f.status, f.reply_code, text)
        if verdict.reason == "to_qualify" and bounce.text and text != bounce.text[:4000]:
            verdict = table.qualify(f.status, f.reply_code, bounce.text[:4000])
        diagnostic = f.diagnostic or _short(" ".join(bounce.text.split()))
        out.append(
            Verdict(
                f.recipient,
                f.status,
                f.reply_code,
                verdict.reason,
                verdict.type,
                diagnostic[:MAX_DIAGNOSTIC],
            )
        )
    return out


def qualify_message(data: bytes, rules: RuleTable | None = None) -> list[Verdict]:
    """Parse and qualify a raw message."""
    return qualify_bounce(parse_bounce(data), rules)


def qualify_reply(text: str, rules: RuleTable | None = None) -> tuple[str, str]:
    """(reason, type) of a synchronous SMTP reply, ``550 5.1.1 <x>: User unknown``."""
    table = rules or load_rules()
    q = table.qualify(find_status(text), find_reply_code(text), text)
    return q.reason, q.type


def _short(text: str) -> str:
    return text[:MAX_DIAGNOSTIC]
