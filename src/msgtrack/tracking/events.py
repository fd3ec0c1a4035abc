"""The event record and its line format in the event log.

One line per event::

    CRC32-HEX SP JSON LF

The CRC (of the JSON bytes) lets ingestion detect a torn or corrupted line and set it
aside without stopping. The JSON object has short keys:

    t   time, UTC, seconds since the epoch (a number, to the microsecond)
    k   kind: click | open | opt-out | mirror | unsubscribe (| web | transaction later)
    d   delivery id          m   message id          u   tracked URL id
    v   visitor id (cookie) or null
    ip  client address       ua  user agent
    x   personalization values of the link, in order (clicks, when any)
    src unsubscribe source: form | one-click
    amt, art  transaction amount and articles (later)
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

KINDS = frozenset({"click", "open", "opt-out", "mirror", "unsubscribe", "web", "transaction"})


class BadLine(ValueError):
    """A line that cannot be trusted: torn, corrupted, or not an event."""


@dataclass(frozen=True)
class Event:
    t: float
    kind: str
    delivery_id: int
    message_id: int | None
    url_id: int | None
    visitor_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    values: tuple[str, ...] = ()
    source: str | None = None
    amount: float | None = None
    articles: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def encode_event(event: Event) -> bytes:
    if event.amount is None and event.articles is None and not event.extra:
        payload = _fast_payload(event)
    else:
        payload = _json_payload(event)
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


# Same JSON as json.dumps(ensure_ascii=True, separators=(",", ":")) would give (but for
# the time, always written with 6 decimals: "%.6f" is one correctly rounded conversion,
# three times cheaper than repr(round(t, 6)), and reads back as the same float), built
# directly: this runs once per click and open on the tracking server's hot path.
_quote = json.encoder.encode_basestring_ascii


def _fast_payload(event: Event) -> bytes:
    m, u, v, ip, ua = event.message_id, event.url_id, event.visitor_id, event.ip, event.user_agent
    parts = [
        f'{{"t":{event.t:.6f}',
        ',"k":',
        _quote(event.kind),
        ',"d":',
        str(int(event.delivery_id)),
        ',"m":',
        "null" if m is None else str(int(m)),
        ',"u":',
        "null" if u is None else str(int(u)),
        ',"v":',
        "null" if v is None else _quote(v),
        ',"ip":',
        "null" if ip is None else _quote(ip),
        ',"ua":',
        "null" if ua is None else _quote(ua),
    ]
    if event.values:
        parts += (',"x":[', ",".join([_quote(x) for x in event.values]), "]")
    if event.source is not None:
        parts += (',"src":', _quote(event.source))
    parts.append("}")
    return "".join(parts).encode("ascii")


# User agents and client addresses repeat (a few browsers and image proxies make most of
# the traffic, a keep-alive connection sends the same ones): their JSON strings are
# kept, so the hot path quotes each once. Bounded (entries and length: a few MB at
# worst, whatever clients send); emptied when full.
_QUOTED_MAX = 1024
_QUOTED_LONGEST = 512
_quoted: dict[str, str] = {}


def _quote_repeated(text: str) -> str:
    quoted = _quoted.get(text)
    if quoted is None:
        quoted = _quote(text)
        if len(text) <= _QUOTED_LONGEST:
            if len(_quoted) >= _QUOTED_MAX:
                _quoted.clear()
            _quoted[text] = quoted
    return quoted


def encode_hit(
    t: float,
    kind: str,
    delivery_id: int,
    message_id: int,
    url_id: int,
    visitor_id: str | None,
    ip: str | None,
    user_agent: str | None,
    values: tuple[str, ...] = (),
) -> bytes:
    """The line ``encode_event`` writes for a click, open, opt-out or mirror event,
    without building an ``Event`` first (the tracking server's hot path). ``kind`` is
    one of KINDS (no quoting needed); the ids are the ints a token decodes to."""
    x = ',"x":[' + ",".join([_quote(x) for x in values]) + "]" if values else ""
    payload = (
        f'{{"t":{t:.6f},"k":"{kind}","d":{delivery_id},"m":{message_id},"u":{url_id},'
        f'"v":{"null" if visitor_id is None else _quote(visitor_id)},'
        f'"ip":{"null" if ip is None else _quote_repeated(ip)},'
        f'"ua":{"null" if user_agent is None else _quote_repeated(user_agent)}{x}}}'
    ).encode("ascii")
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def _json_payload(event: Event) -> bytes:
    obj: dict[str, Any] = {
        "t": round(event.t, 6),
        "k": event.kind,
        "d": event.delivery_id,
        "m": event.message_id,
        "u": event.url_id,
        "v": event.visitor_id,
        "ip": event.ip,
        "ua": event.user_agent,
    }
    if event.values:
        obj["x"] = list(event.values)
    if event.source is not None:
        obj["src"] = event.source
    if event.amount is not None:
        obj["amt"] = event.amount
    if event.articles is not None:
        obj["art"] = event.articles
    if event.extra:
        obj.update(event.extra)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def decode_event(line: bytes) -> Event:
    """Parse one line (with or without its LF); raises BadLine with the reason."""
    line = line.rstrip(b"\n")
    if len(line) < 10 or line[8:9] != b" ":
        raise BadLine("malformed line")
    try:
        crc = int(line[:8], 16)
    except ValueError as exc:
        raise BadLine("malformed checksum") from exc
    payload = line[9:]
    if zlib.crc32(payload) != crc:
        raise BadLine("checksum mismatch")
    try:
        obj = json.loads(payload)
        kind = obj["k"]
        if kind not in KINDS:
            raise BadLine(f"unknown kind {kind!r}")
        known = {"t", "k", "d", "m", "u", "v", "ip", "ua", "x", "src", "amt", "art"}
        return Event(
            t=float(obj["t"]),
            kind=kind,
            delivery_id=int(obj["d"]),
            message_id=None if obj.get("m") is None else int(obj["m"]),
            url_id=None if obj.get("u") is None else int(obj["u"]),
            visitor_id=obj.get("v"),
            ip=obj.get("ip"),
            user_agent=obj.get("ua"),
            values=tuple(str(v) for v in obj.get("x") or ()),
            source=obj.get("src"),
            amount=None if obj.get("amt") is None else float(obj["amt"]),
            articles=None if obj.get("art") is None else int(obj["art"]),
            extra={k: v for k, v in obj.items() if k not in known},
        )
    except BadLine:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise BadLine(f"bad event: {exc}") from exc
