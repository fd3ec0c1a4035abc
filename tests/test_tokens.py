"""The signed tokens of tracked links, session cookies and VERP addresses.

A token is accepted only as its signer wrote it: every other text is rejected with
``TokenError`` (never another exception), whatever was changed.
"""

from __future__ import annotations

import base64
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrack.links.sign import (
    MAC_BYTES,
    PURPOSE_LINK,
    PURPOSE_SESSION,
    PURPOSE_VERP,
    KeyRing,
    LinkToken,
    SigningKey,
    TokenError,
)

B64 = string.ascii_letters + string.digits + "-_"
B32 = string.ascii_lowercase + "234567"
STRANGERS = ["=", "+", "/", ".", " ", "\n", "é", "²", "\x00", "%"]

ids = st.integers(min_value=0, max_value=2**63 - 1)
small_ids = st.integers(min_value=0, max_value=10**9)
values = st.lists(st.text(max_size=12), max_size=3).map(tuple)
link_tokens = st.builds(LinkToken, ids, ids, ids, values)

RING = KeyRing.generate()


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def varint(n: int, *, padded: int = 0) -> bytes:
    """``n`` as a varint; ``padded`` extra continuation bytes make it non-minimal."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    if padded:
        out[-1] |= 0x80
        out += b"\x80" * (padded - 1) + b"\x00"
    return bytes(out)


def link_body(key_id: int, token: LinkToken, *, padded_field: int = -1) -> bytes:
    fields = [key_id, token.delivery_id, token.message_id, token.url_id, len(token.values)]
    body = b"".join(varint(n, padded=1 if i == padded_field else 0) for i, n in enumerate(fields))
    for value in token.values:
        raw = value.encode()
        body += varint(len(raw)) + raw
    return body


def forge(ring: KeyRing, body: bytes, purpose: bytes = PURPOSE_LINK) -> str:
    """A link token over ``body`` carrying a genuine MAC of the ring's active key."""
    return b64(body + ring.keys[ring.active].mac(purpose, body, MAC_BYTES))


def rejected(verify: object, text: str) -> bool:
    try:
        verify(text)  # type: ignore[operator]
    except TokenError:
        return True
    return False


# -- link tokens -------------------------------------------------------------------


@given(link_tokens)
def test_link_token_round_trip(token: LinkToken) -> None:
    text = RING.sign_link(token)
    assert set(text) <= set(B64)
    assert RING.verify_link(text) == token


def test_my_encoder_matches_the_signer() -> None:
    """The forging helpers below build exactly what ``sign_link`` builds."""
    token = LinkToken(300, 7, 2**40, ("a", "été"))
    assert forge(RING, link_body(RING.active, token)) == RING.sign_link(token)


@settings(max_examples=25, deadline=None)
@given(link_tokens)
def test_every_bit_flip_is_rejected(token: LinkToken) -> None:
    raw = unb64(RING.sign_link(token))
    for bit in range(len(raw) * 8):
        mutated = bytearray(raw)
        mutated[bit // 8] ^= 1 << (bit % 8)
        assert rejected(RING.verify_link, b64(bytes(mutated))), bit


@settings(max_examples=10, deadline=None)
@given(link_tokens)
def test_every_character_change_insertion_and_removal_is_rejected(token: LinkToken) -> None:
    text = RING.sign_link(token)
    for i, original in enumerate(text):
        for char in [*B64, *STRANGERS]:
            if char != original:
                assert rejected(RING.verify_link, text[:i] + char + text[i + 1 :]), (i, char)
    for i in range(len(text) + 1):
        for char in [*B64, *STRANGERS]:
            assert rejected(RING.verify_link, text[:i] + char + text[i:]), (i, char)
    for i in range(len(text)):
        assert rejected(RING.verify_link, text[:i] + text[i + 1 :]), i


@given(link_tokens)
def test_every_truncation_and_padding_is_rejected(token: LinkToken) -> None:
    text = RING.sign_link(token)
    for size in range(len(text)):
        assert rejected(RING.verify_link, text[:size]), size
    for suffix in ("=", "==", "===", "\n", " "):
        assert rejected(RING.verify_link, text + suffix)


def test_base64_padding_bit_variants_are_rejected() -> None:
    """A last character differing only in unused bits decodes to the same bytes."""
    lengths = set()
    for size in range(6):  # token lengths with 0, 2 and 4 unused bits
        text = RING.sign_link(LinkToken(1, 2, 3, ("x" * size,)))
        lengths.add(len(text) % 4)
        raw = unb64(text)
        variants = [
            text[:-1] + char for char in B64 if char != text[-1] and unb64(text[:-1] + char) == raw
        ]
        # 4 unused bits give 15 variants, 2 give 3, none give none
        assert len(variants) == {0: 0, 2: 15, 3: 3}[len(text) % 4]
        for variant in variants:
            assert rejected(RING.verify_link, variant)
    assert lengths == {0, 2, 3}


@pytest.mark.parametrize("field", range(5))
def test_non_minimal_varints_are_rejected_even_when_re_signed(field: int) -> None:
    token = LinkToken(5, 600, 70000, ("x",))
    assert RING.verify_link(forge(RING, link_body(RING.active, token))) == token
    assert rejected(
        RING.verify_link, forge(RING, link_body(RING.active, token, padded_field=field))
    )


def test_malformed_bodies_are_rejected_even_when_re_signed() -> None:
    good = link_body(RING.active, LinkToken(1, 2, 3, ("ab",)))
    for body in (
        good + b"\x00",  # trailing byte
        good[:-1],  # value cut short
        link_body(RING.active, LinkToken(1, 2, 3)) + b"\x02\xff\xfe",  # count 0, stray value
        varint(RING.active)
        + varint(1)
        + varint(2)
        + varint(3)
        + varint(1)
        + varint(2)
        + b"\xff\xfe",
        varint(RING.active) + b"\xff" * 12,  # endless varint
    ):
        assert rejected(RING.verify_link, forge(RING, body)), body


def test_token_signed_by_an_unknown_key_is_rejected() -> None:
    token = LinkToken(1, 2, 3)
    stranger = KeyRing.generate()  # same key id 1, another secret
    assert rejected(RING.verify_link, stranger.sign_link(token))
    stranger.rotate()  # key id 2, which RING does not have
    assert rejected(RING.verify_link, stranger.sign_link(token))
    assert rejected(RING.verify_session, stranger.sign_session(1, 2))
    assert rejected(RING.verify_verp, stranger.sign_verp(3))


def test_rotation_keeps_old_tokens_until_their_key_is_retired(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    token = LinkToken(4, 5, 6, ("v",))
    old_link, old_session, old_verp = (
        ring.sign_link(token),
        ring.sign_session(4, 5),
        ring.sign_verp(5),
    )
    new_id = ring.rotate()
    new_link = ring.sign_link(token)
    assert new_link != old_link
    assert ring.verify_link(old_link) == ring.verify_link(new_link) == token
    assert ring.verify_session(old_session) == (4, 5)
    with pytest.raises(ValueError):
        ring.retire(new_id)  # the active key signs: it cannot be retired
    ring.retire(1)
    path = tmp_path / "keys.json"
    ring.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    for loaded in (ring, KeyRing.load(path)):
        assert rejected(loaded.verify_link, old_link)
        assert rejected(loaded.verify_session, old_session)
        assert rejected(loaded.verify_verp, old_verp)
        assert loaded.verify_link(new_link) == token
        assert loaded.verify_session(ring.sign_session(4, 5)) == (4, 5)
        assert loaded.verify_verp(ring.sign_verp(5)) == 5


# -- one purpose per token -----------------------------------------------------------


@given(small_ids, small_ids)
def test_tokens_of_one_purpose_are_not_accepted_for_another(
    delivery_id: int, message_id: int
) -> None:
    link = RING.sign_link(LinkToken(delivery_id, message_id, 1))
    session = RING.sign_session(delivery_id, message_id)
    verp = RING.sign_verp(message_id)
    assert rejected(RING.verify_link, session) and rejected(RING.verify_link, verp)
    assert rejected(RING.verify_session, link) and rejected(RING.verify_session, verp)
    assert rejected(RING.verify_verp, link) and rejected(RING.verify_verp, session)


def test_a_mac_for_another_purpose_does_not_sign_a_link() -> None:
    body = link_body(RING.active, LinkToken(1, 2, 3))
    assert RING.verify_link(forge(RING, body)) == LinkToken(1, 2, 3)
    for purpose in (PURPOSE_SESSION, PURPOSE_VERP):
        assert rejected(RING.verify_link, forge(RING, body, purpose))


# -- session cookies ------------------------------------------------------------------


@given(ids, ids)
def test_session_round_trip(delivery_id: int, message_id: int) -> None:
    assert RING.verify_session(RING.sign_session(delivery_id, message_id)) == (
        delivery_id,
        message_id,
    )


@settings(max_examples=10, deadline=None)
@given(small_ids, small_ids)
def test_every_session_mutation_is_rejected(delivery_id: int, message_id: int) -> None:
    text = RING.sign_session(delivery_id, message_id)
    alphabet = [*B64, *STRANGERS, "١", "0"]
    for i, original in enumerate(text):
        for char in alphabet:
            if char != original:
                assert rejected(RING.verify_session, text[:i] + char + text[i + 1 :]), (i, char)
        assert rejected(RING.verify_session, text[:i] + text[i + 1 :])
    for i in range(len(text) + 1):
        for char in alphabet:
            assert rejected(RING.verify_session, text[:i] + char + text[i:]), (i, char)
    for size in range(len(text)):
        assert rejected(RING.verify_session, text[:size])


def test_session_with_leading_zeros_is_rejected_even_when_re_signed() -> None:
    body = f"{RING.active}.0{7}.8"
    mac = b64(RING.keys[RING.active].mac(PURPOSE_SESSION, body.encode(), MAC_BYTES))
    assert rejected(RING.verify_session, f"{body}.{mac}")
    assert rejected(RING.verify_session, "9" * 5000 + ".1.2.x")


# -- VERP -----------------------------------------------------------------------------


@given(ids)
def test_verp_round_trip(message_id: int) -> None:
    text = RING.sign_verp(message_id)
    assert set(text) <= set(B32)
    assert RING.verify_verp(text) == message_id
    # mail systems may fold the case of a local part: that is the one tolerated change
    assert RING.verify_verp(text.upper()) == message_id


@settings(max_examples=20, deadline=None)
@given(small_ids)
def test_every_verp_mutation_is_rejected(message_id: int) -> None:
    text = RING.sign_verp(message_id)
    alphabet = [*B32, "0", "1", "8", "=", "-", "é"]
    for i, original in enumerate(text):
        for char in alphabet:
            if char != original:
                assert rejected(RING.verify_verp, text[:i] + char + text[i + 1 :]), (i, char)
        assert rejected(RING.verify_verp, text[:i] + text[i + 1 :])
    for i in range(len(text) + 1):
        for char in alphabet:
            assert rejected(RING.verify_verp, text[:i] + char + text[i:]), (i, char)
    for size in range(len(text)):
        assert rejected(RING.verify_verp, text[:size])


def test_verp_padding_bit_variants_are_rejected() -> None:
    seen = 0
    for message_id in (1, 200, 70000, 2**22, 2**29, 2**36):  # 10..14 bytes
        text = RING.sign_verp(message_id)
        raw = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
        for char in B32:
            variant = text[:-1] + char
            if variant == text:
                continue
            try:
                same = base64.b32decode(variant.upper() + "=" * (-len(variant) % 8)) == raw
            except ValueError:
                continue
            if same:
                seen += 1
                assert rejected(RING.verify_verp, variant)
    assert seen >= 4 * 3  # four of those lengths leave unused bits


@pytest.mark.parametrize("size", [16, 32, 64, 65, 100])
def test_mac_is_hmac_sha256_of_purpose_and_body(size: int) -> None:
    """The precomputed inner/outer states give exactly the standard HMAC, for keys
    shorter than, as long as and longer than SHA-256's block."""
    import hashlib
    import hmac

    key = SigningKey(1, bytes(range(size)), "now")
    for purpose, body in ((PURPOSE_LINK, b""), (PURPOSE_SESSION, b"1.2.3"), (b"V", b"x" * 200)):
        expected = hmac.new(key.secret, purpose + body, hashlib.sha256).digest()
        assert key.mac(purpose, body, 32) == expected
        assert key.mac(purpose, body, MAC_BYTES) == expected[:MAC_BYTES]
