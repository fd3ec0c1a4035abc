"""RFC 5322 messages: headers and MIME bodies, built fast enough for 100k recipients.

``EmailMessage`` parses every header it is given and quoted-printable-encodes in pure
Python, about 4 ms for a newsletter: too slow for a send loop. So the message is laid
out here, once, from the stdlib's own parts: ``email.policy.SMTP`` folds and encodes
any header that is not short plain ASCII (RFC 2047 encoded words), bodies are UTF-8 in
7bit, quoted-printable (``binascii.b2a_qp``, in C) or base64, chosen as the ``email``
package chooses, and lines end with CRLF. Tests parse the result back with
``email.message_from_bytes(..., policy=policy.default)``.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from email import policy
from email.utils import format_datetime
from typing import TYPE_CHECKING

from msgtrack.storage.types import utcnow

if TYPE_CHECKING:
    from msgtrack.config import Settings
    from msgtrack.links.sign import KeyRing

CRLF = "\r\n"
MAX_HEADER_LINE = 78
MAX_7BIT_LINE = 998
ASCII_BYTES = bytes(range(128))
BASE64_LINE_BYTES = 57  # 76 characters once encoded


class HeaderError(ValueError):
    """A header value that would change the message's structure (CR or LF inside)."""


def return_path(settings: Settings, keyring: KeyRing, message_id: int) -> str:
    """The envelope sender of a message: a signed VERP address naming the message, so a
    bounce that comes back can be matched to it."""
    return f"bounce+{keyring.sign_verp(message_id)}@{settings.bounce_domain}"


def message_id_header(settings: Settings, delivery_id: int, message_id: int) -> str:
    """The same ``Message-ID`` for every attempt of one message (a retry is not a new
    message)."""
    return f"<{int(delivery_id)}.{int(message_id)}.msgtrack@{settings.mail_domain}>"


def feedback_id(settings: Settings, delivery_id: int, typology: str) -> str:
    """``Feedback-ID`` (Gmail's feedback loop): campaign:type:product:sender."""
    return f"{int(delivery_id)}:{typology}:msgtrack:{settings.mail_domain}"


def list_unsubscribe(
    unsubscribe_url: str, mailbox: str | None, verp_token: str | None
) -> list[str]:
    """The items of ``List-Unsubscribe``: the URL always (RFC 8058 one-click POSTs go
    there); the mailto form only when an unsubscribe mailbox is configured."""
    items = [f"<{unsubscribe_url}>"]
    if mailbox and verp_token:
        items.append(f"<mailto:{mailbox}?subject=unsubscribe-{verp_token}>")
    return items


def date_header() -> str:
    return format_datetime(utcnow())


# -- headers -------------------------------------------------------------------------


def header(name: str, value: str) -> str:
    """One header field, folded and encoded as ``policy.SMTP`` does, CRLF-terminated.

    Raises ``HeaderError`` when the value holds CR or LF.
    """
    if "\r" in value or "\n" in value:
        raise HeaderError(f"the {name} header contains a line break")
    if value.isascii() and len(name) + 2 + len(value) <= MAX_HEADER_LINE:
        return f"{name}: {value}{CRLF}"
    folded = policy.SMTP.header_factory(name, value).fold(policy=policy.SMTP)
    return str(folded)


def text_header(name: str, value: str) -> str:
    """An unstructured header (``Subject``), CRLF-terminated: as is when short ASCII,
    else RFC 2047 base64 encoded words, one per line.

    The per-message path: about 20 times cheaper than the ``email`` header registry.
    Raises ``HeaderError`` when the value holds CR or LF.
    """
    if "\r" in value or "\n" in value:
        raise HeaderError(f"the {name} header contains a line break")
    if value.isascii() and value.isprintable():
        return header(name, value)
    # Non-ASCII or control characters: encoded words carry them intact.
    return f"{name}: " + f"{CRLF} ".join(encoded_words(value)) + CRLF


ENCODED_WORD_BYTES = 39  # 52 base64 characters: each line stays under 78


def encoded_words(value: str) -> list[str]:
    """``=?utf-8?b?…?=`` words for ``value``, never splitting a character (RFC 2047 §5)."""
    words: list[str] = []
    chunk = bytearray()
    for char in value:
        raw = char.encode("utf-8")
        if len(chunk) + len(raw) > ENCODED_WORD_BYTES:
            words.append(_encoded_word(bytes(chunk)))
            chunk.clear()
        chunk += raw
    if chunk or not words:
        words.append(_encoded_word(bytes(chunk)))
    return words


def _encoded_word(raw: bytes) -> str:
    return "=?utf-8?b?" + binascii.b2a_base64(raw, newline=False).decode("ascii") + "?="


def list_header(name: str, items: Sequence[str]) -> str:
    """A header of comma-separated ASCII items (``List-Unsubscribe``), one per line
    when long: long URLs must never be cut or turned into encoded words."""
    for item in items:
        if "\r" in item or "\n" in item or not item.isascii():
            raise HeaderError(f"the {name} header holds a line break or non-ASCII text")
    line = f"{name}: {', '.join(items)}"
    if len(line) <= MAX_HEADER_LINE:
        return line + CRLF
    return f"{name}: " + f",{CRLF} ".join(items) + CRLF


# -- bodies --------------------------------------------------------------------------

NEWLINES = re.compile(r"\r\n?")


def encode_body(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, body bytes with CRLF line ends) for a UTF-8 text."""
    if "\r" in text:
        text = NEWLINES.sub("\n", text)
    data = text.encode("utf-8")
    lines = data.split(b"\n")
    if data.isascii() and max(map(len, lines)) <= MAX_7BIT_LINE:
        return "7bit", data.replace(b"\n", b"\r\n")
    # Mostly non-ASCII (Cyrillic, CJK…): base64 is smaller than quoted-printable.
    non_ascii = len(data.translate(None, ASCII_BYTES))
    if non_ascii * 2 > len(data) * 0.37:
        chunks = [
            binascii.b2a_base64(data[i : i + BASE64_LINE_BYTES], newline=False)
            for i in range(0, len(data), BASE64_LINE_BYTES)
        ]
        return "base64", b"\r\n".join(chunks) + b"\r\n"
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    return "quoted-printable", encoded.replace(b"\n", b"\r\n")


def text_part(subtype: str, text: str) -> bytes:
    """A ``text/{subtype}`` entity: its headers, a blank line and its body."""
    cte, body = encode_body(text)
    head = (
        f'Content-Type: text/{subtype}; charset="utf-8"{CRLF}'
        f"Content-Transfer-Encoding: {cte}{CRLF}{CRLF}"
    )
    return head.encode("ascii") + body


def build_message(headers: str, *, text: str | None, html: str | None, boundary: str) -> bytes:
    """The whole message: ``headers`` (already folded, CRLF-terminated), then a single
    text part or, with both, ``multipart/alternative`` (text, then HTML)."""
    top = headers.encode("ascii") + b"MIME-Version: 1.0\r\n"
    if text is not None and html is not None:
        parts = [text_part("plain", text), text_part("html", html)]
        delimiter = f"--{boundary}".encode("ascii")
        for part in parts:
            if delimiter in part:  # only possible in 7bit bodies; never in QP or base64
                raise HeaderError("the MIME boundary occurs in the content")
        out = [
            top,
            f'Content-Type: multipart/alternative;{CRLF} boundary="{boundary}"{CRLF}{CRLF}'.encode(
                "ascii"
            ),
        ]
        for part in parts:
            out += [delimiter, b"\r\n", part, b"\r\n"]
        out += [delimiter, b"--\r\n"]
        return b"".join(out)
    if html is not None:
        return top + text_part("html", html)
    return top + text_part("plain", text or "")
