"""What a message that came back says: which recipients failed, with which status code,
SMTP reply and remote text, or that it is a complaint, an auto-reply or a success report.

Standard forms first: a DSN (RFC 3464, ``multipart/report`` with a
``message/delivery-status`` part) and an ARF feedback report (RFC 5965). Then the
plain-text bounces of mail systems that send no DSN (qmail, Exim, old Sendmail,
Exchange, Yahoo, …): their recipients are the addresses of the human-readable text
before the copy of the original message, each with the lines that follow it. Then
auto-replies (RFC 3834 and the usual vacation subjects), never bounces.

The stdlib parser with the ``compat32`` policy: the modern policy parses every header
into objects, several times slower, and bounces need none of that.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from email import message_from_bytes
from email.errors import MessageError
from email.header import decode_header, make_header
from email.message import Message
from typing import Literal

Kind = Literal["dsn", "complaint", "text", "autoreply", "delivered", "unknown"]

#: DSN actions that report no failure.
SUCCESS_ACTIONS = frozenset({"delivered", "relayed", "expanded"})

STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
REPLY_RE = re.compile(r"(?<![\d.])([245][0-5]\d)(?=[\s\-:;,]|$)")
ADDRESS_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._%+\-=#!$&'*/?^`{|}~]*@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)+"
)
SPACES = re.compile(r"\s+")
TAGS = re.compile(r"<[^>]{0,2000}>")

SYSTEM_SENDERS = re.compile(
    r"^(mailer-daemon|postmaster|mail-daemon|mailerdaemon|mail delivery (sub)?system|"
    r"mdaemon|maildelivery|mail-delivery|noreply-dmarc)\b",
    re.I,
)
BOUNCE_SUBJECTS = re.compile(
    r"undeliver|undelivered|"
    r"delivery (status notification|failure|failed|has failed|problem|report|warning)|"
    r"failure notice|returned mail|mail delivery (failed|failure|system)|returned to sender|"
    r"could not be delivered|nondeliverable|non[- ]delivery|delivery notification|"
    r"message not delivered|mail system error|permanent error|"
    r"non remis|non distribu|échec de (la )?(remise|distribution)|unzustellbar|nicht zustellbar|"
    r"no se (puede|pudo) entregar|no entregado|non recapitabil|mancato recapito|"
    r"não (foi )?entregue|onbestelbaar|niedostarczal|не доставлено|無法傳遞|配信不能|退信",
    re.I,
)
BOUNCE_MARKERS = re.compile(
    r"following addresses had permanent fatal errors|this is the qmail-send program|"
    r"this message was created automatically by mail delivery software|"
    r"delivery to the following recipients? failed|delivery has failed to these recipients|"
    r"your message (could not|couldn't|wasn't|was not) (be )?delivered|"
    r"unable to deliver your message|could not be delivered to|"
    r"i'm sorry to have to inform you|message could not be delivered|"
    r"the following recipient\(s\) could not be reached|permanent error|"
    r"remote host said|said: [245]\d\d|smtp error from remote mail server|"
    r"this is the mail system at host|unknown user|user unknown",
    re.I,
)
AUTOREPLY_SUBJECTS = re.compile(
    r"^\s*(out of (the )?office|automatic reply|auto(matic)?[- ]?(reply|response|antwort)|auto:|"
    r"autoreply|vacation|on vacation|away from (the )?office|abwesenheit|"
    r"automatische antwort|réponse automatique|absence|respuesta automática|fuera de la oficina|"
    r"risposta automatica|fuori sede|resposta automática|ausente|afwezig|automatisch antwoord|"
    r"autosvar|automaattinen vastaus|odpowiedź automatyczna|автоответ|自動回覆|自動応答)",
    re.I,
)
ORIGINAL_MARKER = re.compile(
    r"^\s*(-{2,}.*(origin|copy of|returned message|message (text|headers)|undelivered message|"
    r"headers? of)|.*below this line is a copy|"
    r"original message (follows|details|headers|as received)|"
    r"(received|return-path|message-id|x-original-to): )",
    re.I | re.M,
)


#: The line before an address is a quoted header of the original ("Your message\n To: …").
QUOTED_HEADER = re.compile(r"(?:^|\n)[^\S\n]*(?:to|cc|from|sender|reply-to)[^\S\n]*:[^\n]*\Z", re.I)


@dataclass(frozen=True)
class Failure:
    """One recipient named by the message, with what the remote side said."""

    recipient: str | None
    status: str | None  # enhanced status code, 5.1.1
    reply_code: str | None  # SMTP reply code, 550
    diagnostic: str  # the remote text, whitespace collapsed
    action: str | None = None  # DSN action: failed, delayed, delivered, …


@dataclass
class Bounce:
    """A parsed message from the bounce mailbox."""

    kind: Kind
    failures: list[Failure] = field(default_factory=list)
    text: str = ""  # the human-readable part, for rules when a recipient has no text
    subject: str = ""
    original_message_id: str | None = None
    original_return_path: str | None = None
    feedback_type: str | None = None  # ARF: abuse, fraud, …


#: Bytes parsed: the notice and its report come first; a long message after them
#: only costs time.
MAX_PARSE_BYTES = 64 * 1024
RETURNED_PART = re.compile(
    rb"^content-type:[ \t]*(message/rfc822|message/global|text/rfc822-headers)", re.I | re.M
)
REPORT_PART = re.compile(
    rb"^content-type:[ \t]*message/(delivery-status|global-delivery-status|feedback-report)",
    re.I | re.M,
)
BLANK_LINE = re.compile(rb"\r?\n\r?\n")


def _without_returned_body(data: bytes) -> bytes:
    """The message up to the end of the returned message's headers: its body (often
    most of the bytes) says nothing about the failure. The parser takes the cut last
    part as it comes."""
    report = REPORT_PART.search(data)  # a returned message before it may hold it
    part = RETURNED_PART.search(data, report.end() if report else 0)
    if part is not None:
        part_headers = BLANK_LINE.search(data, part.end())
        if part_headers is not None:
            original_headers = BLANK_LINE.search(data, part_headers.end())
            if original_headers is not None:
                return data[: original_headers.end()]
    return data[:MAX_PARSE_BYTES]


def parse_bounce(data: bytes) -> Bounce:
    """Parse a raw message (RFC 5322 bytes) into a :class:`Bounce`."""
    msg = message_from_bytes(_without_returned_body(data))
    subject = _decoded_header(msg.get("Subject"))
    report, status_part, feedback_part, original = _report_parts(msg)
    text = _human_text(msg)
    bounce = Bounce("unknown", text=text, subject=subject)
    if original is not None:
        bounce.original_message_id = _header(original, "Message-ID")
        bounce.original_return_path = _header(original, "Return-Path")
    if feedback_part is not None or report == "feedback-report":
        return _complaint(bounce, feedback_part, original)
    if status_part is not None:
        failures = _dsn_failures(status_part)
        if failures:
            bounce.failures = failures
            if all((f.action or "") in SUCCESS_ACTIONS for f in failures):
                bounce.kind = "delivered"
            else:
                bounce.kind = "dsn"
            return bounce
    sender = _sender(msg)
    if (
        SYSTEM_SENDERS.match(sender)
        or BOUNCE_SUBJECTS.search(subject)
        or report == "delivery-status"
    ):
        bounce.kind = "text"
        bounce.failures = _named_failures(
            msg, _text_failures(text, _own_addresses(msg), _senders(original))
        )
        return bounce
    if _is_autoreply(msg, subject):
        bounce.kind = "autoreply"
        return bounce
    if BOUNCE_MARKERS.search(text):
        bounce.kind = "text"
        bounce.failures = _named_failures(
            msg, _text_failures(text, _own_addresses(msg), _senders(original))
        )
    return bounce


# -- MIME structure --------------------------------------------------------------------


def _report_parts(
    msg: Message,
) -> tuple[str | None, Message | None, Message | None, Message | None]:
    """(report type, delivery-status part, feedback-report part, original message)."""
    report = msg.get_param("report-type") if msg.get_content_type() == "multipart/report" else None
    status_part = feedback_part = original = None
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            status_part = status_part or part
        elif ctype == "message/feedback-report":
            feedback_part = feedback_part or part
        elif ctype in ("message/rfc822", "message/global") and original is None:
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                original = payload[0]
        elif ctype in ("text/rfc822-headers", "text/global-headers") and original is None:
            original = header_block(_decoded(part))
    return (str(report).lower() if report else None), status_part, feedback_part, original


def _blocks(part: Message) -> list[Message]:
    """The field blocks of a delivery-status or feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    text = _decoded(part).replace("\r\n", "\n")
    return [header_block(b) for b in re.split(r"\n\s*\n", text) if b.strip()]


FOLDED = re.compile(r"\r?\n[ \t]+")
FIELD = re.compile(r"^([!-9;-~]+)[ \t]*:[ \t]*(.*?)[ \t\r]*$", re.M)


def header_block(text: str) -> Message:
    """Header fields up to the first blank line, as a message without a body: several
    times cheaper than the stdlib parser for a part made of headers only."""
    head = re.split(r"\r?\n\r?\n", text.lstrip("\r\n"), maxsplit=1)[0]
    msg = Message()
    for name, value in FIELD.findall(FOLDED.sub(" ", head)):
        msg[name] = value
    return msg


def _decoded(part: Message) -> str:
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return raw.decode(charset, errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")


def _human_text(msg: Message) -> str:
    """The readable text of the notice, not of the message it returns."""
    texts: list[str] = []
    htmls: list[str] = []
    stack = [msg]
    while stack:
        part = stack.pop(0)
        ctype = part.get_content_type()
        if part.is_multipart():
            if ctype.startswith("message/"):
                continue
            payload = part.get_payload()
            if isinstance(payload, list):
                stack[0:0] = [p for p in payload if isinstance(p, Message)]
            continue
        if ctype == "text/plain":
            texts.append(_decoded(part))
        elif ctype == "text/html":
            htmls.append(html.unescape(TAGS.sub(" ", _decoded(part))))
    return "\n".join(texts or htmls).replace("\r\n", "\n")


# -- DSN -------------------------------------------------------------------------------


def _dsn_failures(part: Message) -> list[Failure]:
    blocks = _blocks(part)
    out: list[Failure] = []
    for block in blocks:
        # The original recipient is the address the message was sent to (before any
        # forwarding); the final one may not even be an Internet address (X.400).
        original = _address(_typed_value(block.get("Original-Recipient")))
        final = _address(_typed_value(block.get("Final-Recipient")))
        if original is None and final is None and block.get("Action") is None:
            continue  # the per-message block
        diagnostic = _clean(_typed_value(block.get("Diagnostic-Code")) or "")
        status = find_status(str(block.get("Status") or "")) or find_status(diagnostic)
        out.append(
            Failure(
                recipient=original or final,
                status=status,
                reply_code=find_reply_code(diagnostic),
                diagnostic=diagnostic,
                action=(str(block.get("Action") or "").strip().lower() or None),
            )
        )
    # One record per failure: an alias loop repeats the same recipient block.
    return list(dict.fromkeys(out))


def _typed_value(value: object) -> str | None:
    """``rfc822; user@example.com`` → ``user@example.com`` (and ``smtp; 550 …``)."""
    if value is None:
        return None
    text = str(value)
    kind, sep, rest = text.partition(";")
    return (rest if sep and " " not in kind.strip() else text).strip() or None


# -- ARF -------------------------------------------------------------------------------


def _complaint(bounce: Bounce, feedback: Message | None, original: Message | None) -> Bounce:
    bounce.kind = "complaint"
    recipient = None
    if feedback is not None:
        for block in _blocks(feedback):
            bounce.feedback_type = bounce.feedback_type or _str(block.get("Feedback-Type"))
            recipient = recipient or _address(_str(block.get("Original-Rcpt-To")))
            bounce.original_return_path = bounce.original_return_path or _address(
                _str(block.get("Original-Mail-From"))
            )
    if recipient is None and original is not None:
        recipient = _address(_header(original, "To"))
    bounce.failures = [
        Failure(recipient, None, None, _clean(f"feedback: {bounce.feedback_type or 'abuse'}"))
    ]
    return bounce


# -- plain-text bounces ----------------------------------------------------------------


def _text_failures(text: str, own: set[str], senders: set[str]) -> list[Failure]:
    """Recipients of a non-standard bounce: addresses of the notice (before the copy
    of the original), each with the text that follows it up to the next one."""
    cut = ORIGINAL_MARKER.search(text)
    notice = text[: cut.start()] if cut else text
    found: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    for m in ADDRESS_RE.finditer(notice):
        address = m.group(0).strip(".").lower()
        if address.startswith("smtp="):  # Exchange: SMTP=user@example.com
            address = address[5:]
        local = address.split("@", 1)[0]
        if address in own or address in seen or SYSTEM_SENDERS.match(local):
            continue
        seen.add(address)
        found.append((address, m.start(), m.end()))
    if len(found) > 1:  # the original's headers quoted in the notice ("  To: x@y")
        found = [f for f in found if not QUOTED_HEADER.search(notice, 0, f[1])] or found
    if len(found) > 1:  # the original's sender, named beside the failed recipients
        found = [f for f in found if f[0] not in senders] or found
    if not found:
        return [Failure(None, find_status(notice), find_reply_code(notice), _clean(notice)[:1000])]
    out = []
    for i, (address, _start, end) in enumerate(found):
        stop = found[i + 1][1] if i + 1 < len(found) else len(notice)
        segment = _clean(notice[end:stop].lstrip(">:, \t"))[:1000]
        if not segment or not (
            find_status(segment) or find_reply_code(segment) or len(segment) > 12
        ):
            segment = _clean(notice)[:1000]
        out.append(Failure(address, find_status(segment), find_reply_code(segment), segment))
    return out


def _named_failures(msg: Message, failures: list[Failure]) -> list[Failure]:
    """Exim and Gmail name the failed recipients in ``X-Failed-Recipients``: trust it
    over addresses picked from the text (a quoted ``To:``, a bare local part)."""
    named = [
        a.lower() for a in ADDRESS_RE.findall(" ".join(msg.get_all("X-Failed-Recipients") or []))
    ]
    if not named:
        return failures
    by_address = {f.recipient: f for f in failures if f.recipient in named}
    anonymous = [f for f in failures if f.recipient not in by_address]
    out = []
    for address in dict.fromkeys(named):
        f = by_address.get(address)
        if f is None:
            base = anonymous[0] if len(anonymous) == 1 or anonymous and len(named) == 1 else None
            f = (
                Failure(address, base.status, base.reply_code, base.diagnostic, base.action)
                if base is not None
                else Failure(address, None, None, failures[0].diagnostic if failures else "")
            )
        out.append(f)
    return out


def _addresses_of(msg: Message | None, headers: tuple[str, ...]) -> set[str]:
    found: set[str] = set()
    if msg is not None:
        for name in headers:
            for value in msg.get_all(name) or []:
                found.update(a.lower() for a in ADDRESS_RE.findall(str(value)))
    return found


def _own_addresses(msg: Message) -> set[str]:
    """Addresses of the notice's own envelope and sender: never failed recipients."""
    return _addresses_of(
        msg, ("From", "To", "Delivered-To", "X-Original-To", "Return-Path", "Sender")
    )


def _senders(original: Message | None) -> set[str]:
    """The returned message's sender: not a failed recipient unless alone."""
    return _addresses_of(original, ("From", "Return-Path", "Sender"))


# -- auto-replies ----------------------------------------------------------------------


def _is_autoreply(msg: Message, subject: str) -> bool:
    auto = str(msg.get("Auto-Submitted") or "").strip().lower()
    if auto and auto != "no":
        return True
    if msg.get("X-Autoreply") or msg.get("X-Autorespond") or msg.get("X-Autoresponder"):
        return True
    if str(msg.get("Precedence") or "").strip().lower() == "auto_reply":
        return True
    return bool(AUTOREPLY_SUBJECTS.search(subject))


# -- small helpers ---------------------------------------------------------------------


def _sender(msg: Message) -> str:
    value = str(msg.get("From") or "")
    address = _address(value) or ""
    name = value.split("<", 1)[0].strip().strip('"')
    return address if SYSTEM_SENDERS.match(address) else (name or address)


def _decoded_header(value: object) -> str:
    """A header with its RFC 2047 encoded words decoded."""
    if value is None:
        return ""
    text = str(value)
    if "=?" not in text:  # no encoded word: the stdlib's decoding would return it as is
        return _clean(text)
    try:
        return _clean(str(make_header(decode_header(text))))
    except (MessageError, ValueError, LookupError, UnicodeError):
        return _clean(str(value))


def _header(msg: Message, name: str) -> str | None:
    value = msg.get(name)
    return _clean(str(value)) or None if value is not None else None


def _str(value: object) -> str | None:
    return None if value is None else str(value).strip() or None


def _address(value: str | None) -> str | None:
    if not value:
        return None
    m = ADDRESS_RE.search(value)
    return m.group(0).lower() if m else None


def find_status(text: str) -> str | None:
    m = STATUS_RE.search(text)
    return f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}" if m else None


def find_reply_code(text: str) -> str | None:
    m = REPLY_RE.search(text)
    return m.group(1) if m else None


def _clean(text: str) -> str:
    return SPACES.sub(" ", text).strip()
