"""Message building: headers, bodies and MIME layout parsed back by the stdlib parser."""

from __future__ import annotations

from dataclasses import replace
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrack.config import load_settings
from msgtrack.delivery.message import (
    HeaderError,
    build_message,
    encode_body,
    feedback_id,
    header,
    list_header,
    list_unsubscribe,
    message_id_header,
    return_path,
    text_header,
)
from msgtrack.links.sign import KeyRing

HEADERS = "From: news@example.com\r\nTo: alice@example.com\r\n"


def content(part: EmailMessage) -> str:
    """A part's decoded text; the parser keeps the CRLF line ends of the wire."""
    return str(part.get_content()).replace("\r\n", "\n")


def parse(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_return_path_and_ids(tmp_path: Path) -> None:
    s = replace(
        load_settings(tmp_path), bounce_domain="bounces.example", mail_domain="mail.example"
    )
    ring = KeyRing.generate()
    path = return_path(s, ring, 4242)
    local, _, domain = path.partition("@")
    assert domain == "bounces.example" and local.startswith("bounce+")
    assert ring.verify_verp(local.removeprefix("bounce+")) == 4242
    assert local == local.lower()  # some MTAs fold the case of local parts
    assert (
        message_id_header(s, 7, 4242)
        == message_id_header(s, 7, 4242)
        == "<7.4242.msgtrack@mail.example>"
    )
    assert message_id_header(s, 7, 4243) != message_id_header(s, 7, 4242)
    assert feedback_id(s, 7, "normal") == "7:normal:msgtrack:mail.example"


def test_list_unsubscribe_forms() -> None:
    assert list_unsubscribe("https://t.example/u/TOKEN", None, None) == [
        "<https://t.example/u/TOKEN>"
    ]
    assert list_unsubscribe("https://t.example/u/TOKEN", "unsub@example.com", "abc") == [
        "<https://t.example/u/TOKEN>",
        "<mailto:unsub@example.com?subject=unsubscribe-abc>",
    ]
    long_url = "https://tracking.example.com/u/" + "A" * 90
    folded = list_header("List-Unsubscribe", [f"<{long_url}>", "<mailto:u@example.com?subject=x>"])
    assert folded == f"List-Unsubscribe: <{long_url}>,\r\n <mailto:u@example.com?subject=x>\r\n"
    message = parse((HEADERS + folded + "\r\nbody\r\n").encode())
    assert message["List-Unsubscribe"] == f"<{long_url}>, <mailto:u@example.com?subject=x>"


@pytest.mark.parametrize(
    "subject",
    [
        "Hello Alice",
        "Bonjour Zoé, voici nos nouveautés de novembre",
        "Ünïcödé " * 30,
        "A very long plain ASCII subject line that goes on and on well past the usual limit of 78",
        "😀 emoji and 中文 mixed with ASCII",
        "",
    ],
)
def test_subject_encoding_round_trips(subject: str) -> None:
    field = text_header("Subject", subject)
    assert field.endswith("\r\n")
    assert all(len(line) <= 78 for line in field.split("\r\n")), field
    assert field.isascii()
    message = parse((HEADERS + field + "\r\nbody\r\n").encode())
    # A plain ASCII value is written as is: parsers drop its leading blanks.
    plain = subject.isascii() and subject.isprintable()
    assert message["Subject"] == (subject.lstrip() if plain else subject)


@pytest.mark.parametrize("value", ["Hello\r\nBcc: x@example.com", "a\nb", "a\rb"])
def test_line_breaks_in_headers_are_refused(value: str) -> None:
    with pytest.raises(HeaderError, match="line break"):
        text_header("Subject", value)
    with pytest.raises(HeaderError, match="line break"):
        header("To", value)
    with pytest.raises(HeaderError):
        list_header("List-Unsubscribe", [value])


def test_from_with_display_name() -> None:
    field = header("From", '"Zoé\'s Shop" <news@shop.example>')
    assert field.isascii()
    message = parse((field + "To: a@example.com\r\n\r\nbody\r\n").encode())
    assert message["From"].addresses[0].display_name == "Zoé's Shop"
    assert message["From"].addresses[0].addr_spec == "news@shop.example"


def test_body_encodings() -> None:
    assert encode_body("short\nascii\r\nlines\rend") == ("7bit", b"short\r\nascii\r\nlines\r\nend")
    cte, body = encode_body("x" * 2000 + "\n")
    assert cte == "quoted-printable" and max(map(len, body.split(b"\r\n"))) <= 76
    cte, body = encode_body("Grüße aus Köln! Wir haben heute neue Angebote für Sie. " * 10)
    assert cte == "quoted-printable"
    cte, body = encode_body("Привет, как дела? " * 20)
    assert cte == "base64" and max(map(len, body.split(b"\r\n"))) <= 76
    for _, body in (encode_body("é\n" * 5), encode_body("a" * 100)):
        assert b"\n" not in body.replace(b"\r\n", b"")


def test_multipart_layout() -> None:
    text = "Hello Zoé\nSee https://t.example/c/TOKEN\n"
    html = "<html><body><p>Hello Zoé</p>" + "<p>" + "long line " * 50 + "</p></body></html>\n"
    data = build_message(
        HEADERS + "Subject: Hi\r\n", text=text, html=html, boundary="=_msgtrack_test_1"
    )
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    message = parse(data)
    assert message.get_content_type() == "multipart/alternative"
    assert message["MIME-Version"] == "1.0"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert content(parts[0]) == text
    assert content(parts[1]) == html
    assert parts[0].get_content_charset() == "utf-8"
    assert not message.defects and not any(p.defects for p in parts)

    single = parse(build_message(HEADERS, text=text, html=None, boundary="b"))
    assert single.get_content_type() == "text/plain" and not single.is_multipart()
    assert content(single) == text
    html_only = parse(build_message(HEADERS, text=None, html=html, boundary="b"))
    assert html_only.get_content_type() == "text/html" and content(html_only) == html


def test_boundary_in_content_is_refused() -> None:
    with pytest.raises(HeaderError, match="boundary"):
        build_message(HEADERS, text="a\n--=_b\n", html="<p>x</p>", boundary="=_b")


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=300),
    subject=st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=120
    ),
)
def test_any_text_round_trips(text: str, subject: str) -> None:
    html = "<p>" + text + "</p>"
    data = build_message(
        HEADERS + text_header("Subject", subject), text=text, html=html, boundary="=_msgtrack_p_1"
    )
    message = parse(data)
    # Line ends come back as LF, whatever the author used.
    normal = text.replace("\r\n", "\n").replace("\r", "\n")
    text_part, html_part = message.iter_parts()
    assert content(text_part) == normal
    assert content(html_part) == "<p>" + normal + "</p>"
    # A plain ASCII value is written as is: parsers drop its leading blanks.
    plain = subject.isascii() and subject.isprintable()
    assert message["Subject"] == (subject.lstrip() if plain else subject)
