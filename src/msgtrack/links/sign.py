"""Signing keys and the compact signed tokens carried by tracked links.

A token is base64url (no padding) of::

    varint key_id | varint delivery_id | varint message_id | varint url_id
    | varint n | n x (varint len | utf-8 value) | HMAC-SHA256(key, purpose | body)[:10]

No destination travels in a token: the server looks the tracked URL up by id, so a
forged token can never point anywhere new. A token is accepted only in its canonical
encoding (decoding then re-encoding must give exactly the same text), which rejects
base64 padding-bit variants and non-minimal varints. The purpose byte keeps a link
token, a session cookie and a VERP address from standing in for one another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

MAC_BYTES = 10
VERP_MAC_BYTES = 8
MAX_TOKEN_CHARS = 2048

PURPOSE_LINK = b"L"
PURPOSE_SESSION = b"S"
PURPOSE_VERP = b"V"


class TokenError(ValueError):
    """The token is malformed, tampered with, or signed by an unknown or retired key."""


@dataclass(frozen=True)
class LinkToken:
    delivery_id: int
    message_id: int
    url_id: int
    values: tuple[str, ...] = ()


# -- varints ---------------------------------------------------------------------


def _put_varint(out: bytearray, n: int) -> None:
    if n < 0:
        raise ValueError("varints are unsigned")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _get_varint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise TokenError("truncated token")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text or len(text) > MAX_TOKEN_CHARS or len(text) % 4 == 1:
        raise TokenError("bad token length")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("bad base64") from exc
    if _b64encode(raw) != text:  # padding bits, stray characters
        raise TokenError("non-canonical encoding")
    return raw


# -- keys ------------------------------------------------------------------------


@dataclass
class SigningKey:
    key_id: int
    secret: bytes
    created_at: str
    retired_at: str | None = None
    _mac: hmac.HMAC | None = field(default=None, repr=False, compare=False)

    def mac(self, purpose: bytes, body: bytes, size: int) -> bytes:
        # Keeping the keyed state and copying it is ~2.5x cheaper than hmac.digest().
        if self._mac is None:
            self._mac = hmac.new(self.secret, digestmod=hashlib.sha256)
        m = self._mac.copy()
        m.update(purpose)
        m.update(body)
        return m.digest()[:size]


class KeyRing:
    """The signing keys under ``MSGTRACK_HOME/keys.json`` (mode 0600).

    The active key signs; every key not retired verifies, so tokens already sent keep
    working after ``keys rotate`` until their key is retired.
    """

    def __init__(self, keys: dict[int, SigningKey], active: int) -> None:
        if active not in keys:
            raise ValueError("active key missing")
        self.keys = keys
        self.active = active

    # persistence
    @classmethod
    def generate(cls) -> KeyRing:
        key = SigningKey(1, secrets.token_bytes(32), datetime.now(UTC).isoformat())
        return cls({1: key}, 1)

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        data = json.loads(path.read_text())
        keys = {
            int(kid): SigningKey(
                int(kid), bytes.fromhex(k["secret"]), k["created_at"], k.get("retired_at")
            )
            for kid, k in data["keys"].items()
        }
        return cls(keys, int(data["active"]))

    def save(self, path: Path) -> None:
        data = {
            "active": self.active,
            "keys": {
                str(k.key_id): {
                    "secret": k.secret.hex(),
                    "created_at": k.created_at,
                    "retired_at": k.retired_at,
                }
                for k in self.keys.values()
            },
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def rotate(self) -> int:
        kid = max(self.keys) + 1
        self.keys[kid] = SigningKey(kid, secrets.token_bytes(32), datetime.now(UTC).isoformat())
        self.active = kid
        return kid

    def retire(self, key_id: int) -> None:
        if key_id == self.active:
            raise ValueError("cannot retire the active key: rotate first")
        if key_id not in self.keys:
            raise KeyError(key_id)
        self.keys[key_id].retired_at = datetime.now(UTC).isoformat()

    def _verifying_key(self, key_id: int) -> SigningKey:
        key = self.keys.get(key_id)
        if key is None or key.retired_at is not None:
            raise TokenError("unknown or retired key")
        return key

    # link tokens
    def sign_link(self, token: LinkToken) -> str:
        body = _canonical_link_body(self.active, token)
        return _b64encode(body + self.keys[self.active].mac(PURPOSE_LINK, body, MAC_BYTES))

    def verify_link(self, text: str) -> LinkToken:
        raw = _b64decode(text)
        if len(raw) < MAC_BYTES + 5:
            raise TokenError("truncated token")
        body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        key_id, pos = _get_varint(body, 0)
        key = self._verifying_key(key_id)
        if not hmac.compare_digest(key.mac(PURPOSE_LINK, body, MAC_BYTES), mac):
            raise TokenError("bad signature")
        nums = []
        for _ in range(4):
            n, pos = _get_varint(body, pos)
            nums.append(n)
        values = []
        for _ in range(nums[3]):
            size, pos = _get_varint(body, pos)
            if pos + size > len(body):
                raise TokenError("truncated token")
            try:
                values.append(body[pos : pos + size].decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise TokenError("bad value") from exc
            pos += size
        if pos != len(body):
            raise TokenError("trailing bytes")
        token = LinkToken(nums[0], nums[1], nums[2], tuple(values))
        # Canonical form only: non-minimal varints would re-encode differently.
        if _canonical_link_body(key_id, token) != body:
            raise TokenError("non-canonical token")
        return token

    # session cookie: "delivery.message" signed, so nobody can attribute events to others
    def sign_session(self, delivery_id: int, message_id: int) -> str:
        body = f"{self.active}.{delivery_id}.{message_id}"
        mac = self.keys[self.active].mac(PURPOSE_SESSION, body.encode(), MAC_BYTES)
        return f"{body}.{_b64encode(mac)}"

    def verify_session(self, text: str) -> tuple[int, int]:
        if len(text) > 200:  # also keeps int() below its digit limit
            raise TokenError("bad session")
        parts = text.split(".")
        # isascii: str.isdigit() also accepts digits int() refuses, such as "²".
        if len(parts) != 4 or not all(p.isascii() and p.isdigit() for p in parts[:3]):
            raise TokenError("bad session")
        key = self._verifying_key(int(parts[0]))
        body = ".".join(parts[:3])
        if body != f"{int(parts[0])}.{int(parts[1])}.{int(parts[2])}":
            raise TokenError("non-canonical session")
        expected = _b64encode(key.mac(PURPOSE_SESSION, body.encode(), MAC_BYTES))
        # bytes: compare_digest refuses str with non-ASCII characters (TypeError)
        if not hmac.compare_digest(expected.encode(), parts[3].encode()):
            raise TokenError("bad signature")
        return int(parts[1]), int(parts[2])

    # VERP: a return path local part that names the message; base32 lower case because
    # some MTAs fold the case of local parts.
    def sign_verp(self, message_id: int) -> str:
        body = bytearray()
        _put_varint(body, self.active)
        _put_varint(body, message_id)
        mac = self.keys[self.active].mac(PURPOSE_VERP, bytes(body), VERP_MAC_BYTES)
        return base64.b32encode(bytes(body) + mac).decode().rstrip("=").lower()

    def verify_verp(self, text: str) -> int:
        text = text.strip().upper()
        if not text or len(text) > 64:
            raise TokenError("bad verp token")
        try:
            raw = base64.b32decode(text + "=" * (-len(text) % 8))
        except (binascii.Error, ValueError) as exc:
            raise TokenError("bad verp token") from exc
        if base64.b32encode(raw).decode().rstrip("=") != text or len(raw) <= VERP_MAC_BYTES:
            raise TokenError("non-canonical verp token")
        body, mac = raw[:-VERP_MAC_BYTES], raw[-VERP_MAC_BYTES:]
        key_id, pos = _get_varint(body, 0)
        key = self._verifying_key(key_id)
        if not hmac.compare_digest(key.mac(PURPOSE_VERP, body, VERP_MAC_BYTES), mac):
            raise TokenError("bad signature")
        message_id, pos = _get_varint(body, pos)
        if pos != len(body):
            raise TokenError("trailing bytes")
        return message_id


def _canonical_link_body(key_id: int, token: LinkToken) -> bytes:
    body = bytearray()
    for n in (key_id, token.delivery_id, token.message_id, token.url_id, len(token.values)):
        _put_varint(body, n)
    for value in token.values:
        raw = value.encode("utf-8")
        _put_varint(body, len(raw))
        body += raw
    return bytes(body)


def load_keyring(path: Path) -> KeyRing:
    if not path.exists():
        raise FileNotFoundError(f"no signing keys at {path}: run `msgtrack init` first")
    return KeyRing.load(path)
