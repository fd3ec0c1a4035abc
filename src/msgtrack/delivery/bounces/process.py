"""Record what came back: match each message of the bounce mailbox to the message it
answers, qualify it, and apply it (message verdict, counters, quarantine, opt-out).

Matching: the signed VERP return path (``bounce+TOKEN@…``, found anywhere in the
notice: its envelope recipient, the original's ``Return-Path``) names the message.
Without a VERP address, the original ``Message-ID`` (``<D.M.msgtrack@domain>``) found
inside the bounce does. A VERP address whose signature fails makes the bounce
unmatched, kept for inspection, and it never quarantines anyone: anybody can write to
the bounce address.

One transaction per read message, claimed by its key first (see the bounces store),
so reading it again after a crash changes nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from msgtrack.delivery.bounces.parse import parse_bounce
from msgtrack.delivery.bounces.qualify import Verdict, qualify_bounce
from msgtrack.delivery.bounces.rulefile import live_rules
from msgtrack.links.sign import TokenError
from msgtrack.storage import bounces as store
from msgtrack.storage import quarantine
from msgtrack.storage.types import utcnow

if TYPE_CHECKING:
    from msgtrack.context import Context

VERP_RE = re.compile(rb"bounce\+([a-z2-7]{8,64})@", re.I)
UNSUBSCRIBE_RE = re.compile(r"\bunsubscribe-([a-z2-7]{8,64})\b", re.I)


@dataclass
class ProcessStats:
    read: int = 0
    duplicates: int = 0
    matched: int = 0
    unmatched: int = 0
    hard: int = 0
    soft: int = 0
    complaints: int = 0
    ignored: int = 0
    unsubscriptions: int = 0
    new_quarantines: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Match:
    message_id: int | None
    how: str  # verp, message-id, or why there is none


def source_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BounceProcessor:
    """Processes raw messages of the bounce mailbox, one transaction each."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.rules = live_rules(ctx.settings)  # re-read when edited in the UI
        self.policy = quarantine.QuarantinePolicy.from_settings(ctx.settings)
        domain = re.escape(ctx.settings.mail_domain.encode())
        self.message_id_re = re.compile(
            rb"<(\d{1,18})\.(\d{1,18})\.msgtrack@" + domain + rb">", re.I
        )
        self.stats = ProcessStats()

    def process(self, data: bytes) -> bool:
        """Record one message; False when it had been recorded before."""
        key = source_key(data)
        now = utcnow()
        self.stats.read += 1
        with self.ctx.engine.begin() as conn:
            if store.is_recorded(conn, key):
                self.stats.duplicates += 1
                return False
            bounce = parse_bounce(data)
            token = self._unsubscribe_token(bounce.subject, data)
            if token is not None and bounce.kind in ("unknown", "autoreply"):
                return self._unsubscribe(conn, key, token, now)
            verdicts = qualify_bounce(bounce, self.rules)
            match = self._match(conn, data)
            msg = store.message_ref(conn, match.message_id) if match.message_id else None
            if match.message_id is not None and msg is None:
                match = Match(None, "unknown message")
            rows = [
                self._row(key, i, bounce.kind, v, msg, match, now) for i, v in enumerate(verdicts)
            ]
            if not store.claim(conn, rows[0]):
                self.stats.duplicates += 1
                return False
            store.add_rows(conn, rows[1:])
            if msg is None:
                self.stats.unmatched += 1
                return True
            self.stats.matched += 1
            self._apply(conn, msg, self._verdict_for(verdicts, msg.email), now)
        return True

    # -- matching ----------------------------------------------------------------------

    def _match(self, conn: Connection, data: bytes) -> Match:
        tokens = list(dict.fromkeys(t.decode().lower() for t in VERP_RE.findall(data)))
        if tokens:
            for token in tokens:
                try:
                    return Match(self.ctx.keyring.verify_verp(token), "verp")
                except TokenError:
                    continue
            return Match(None, "bad VERP signature")
        found = self.message_id_re.search(data)
        if found is None:
            return Match(None, "no reference to a message")
        delivery_id, message_id = int(found.group(1)), int(found.group(2))
        msg = store.message_ref(conn, message_id)
        if msg is None or msg.delivery_id != delivery_id:
            return Match(None, "unknown message")
        return Match(message_id, "message-id")

    @staticmethod
    def _verdict_for(verdicts: list[Verdict], email: str) -> Verdict:
        """The verdict about this message's recipient (a notice may list several)."""
        email = email.lower()
        for v in verdicts:
            if v.recipient == email:
                return v
        counted = [v for v in verdicts if v.type != "ignored"]
        return (counted or verdicts)[0]

    # -- effects -----------------------------------------------------------------------

    def _apply(self, conn: Connection, msg: store.MessageRef, v: Verdict, now: datetime) -> None:
        s = self.stats
        s.by_reason[v.reason] = s.by_reason.get(v.reason, 0) + 1
        counts: dict[str, int] = {}
        if v.reason == "complaint":
            s.complaints += 1
            counts["complaints"] = 1
            store.add_domain_complaint(conn, msg.delivery_id, msg.domain)
        elif v.type == "ignored":
            s.ignored += 1
            return
        else:
            s.hard += v.type == "hard"
            s.soft += v.type == "soft"
            text = v.diagnostic or v.status or v.reason
            store.record_message_failure(conn, msg, v.reason, v.type, text)
        if quarantine.record_failure(
            conn, msg.email, v.reason, v.type, now, self.policy, message_id=msg.id
        ):
            s.new_quarantines += 1
            counts["new_quarantines"] = 1
        store.add_counts(conn, msg.delivery_id, counts)

    def _unsubscribe_token(self, subject: str, data: bytes) -> str | None:
        mailbox = self.settings.unsubscribe_mailbox
        m = UNSUBSCRIBE_RE.search(subject)
        if m is None:
            return None
        if mailbox and mailbox.lower().encode() not in data.lower():
            return None
        return m.group(1).lower()

    def _unsubscribe(self, conn: Connection, key: str, token: str, now: datetime) -> bool:
        try:
            msg = store.message_ref(conn, self.ctx.keyring.verify_verp(token))
            how = "verp"
        except TokenError:
            msg, how = None, "bad VERP signature"
        if msg is None and how == "verp":
            how = "unknown message"
        row = self._row(
            key,
            0,
            "unsubscribe",
            Verdict(msg.email if msg else None, None, None, "ignored", "ignored", "unsubscribe"),
            msg,
            Match(msg.id if msg else None, how),
            now,
        )
        if not store.claim(conn, row):
            self.stats.duplicates += 1
            return False
        if msg is None:
            self.stats.unmatched += 1
            return True
        self.stats.matched += 1
        if store.add_mailto_unsubscription(conn, key, msg, now):
            self.stats.unsubscriptions += 1
        return True

    @staticmethod
    def _row(
        key: str,
        ordinal: int,
        kind: str,
        v: Verdict,
        msg: store.MessageRef | None,
        match: Match,
        now: datetime,
    ) -> dict[str, Any]:
        return {
            "source_key": key,
            "ordinal": ordinal,
            "kind": kind,
            "delivery_id": msg.delivery_id if msg else None,
            "message_id": msg.id if msg else None,
            "recipient": (v.recipient or "")[:320] or None,
            "status": v.status,
            "reply_code": v.reply_code,
            "reason": v.reason,
            "failure_type": v.type,
            "diagnostic": v.diagnostic,
            "matched": msg is not None,
            "match": match.how[:60],
            "received_at": now,
        }
