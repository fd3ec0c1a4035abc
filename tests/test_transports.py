"""Transports on real parts: the outbox on a real directory, SMTP against a real aiosmtpd
server on 127.0.0.1 (plain, refusing, AUTH, STARTTLS, implicit TLS).

``Mailbox`` and ``smtp_server`` are also used by test_send.py and test_send_crash.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from msgtrack.config import load_settings
from msgtrack.delivery.transports import (
    OutboxTransport,
    Outgoing,
    SmtpTransport,
    TransportError,
    Verdict,
    transport_from_option,
)
from tests.helpers import free_port

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def send(
    transport: OutboxTransport | SmtpTransport, batch: list[Outgoing], announce: Any
) -> list[Verdict]:
    """One batch, then close the connections, in one event loop (as a send run does)."""

    async def go() -> list[Verdict]:
        try:
            return await transport.send(batch, announce)
        finally:
            await transport.close()

    return run(go())


# -- a real SMTP server ------------------------------------------------------------


@dataclass
class Received:
    peer: Any
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool


class Mailbox:
    """aiosmtpd handler: keeps what arrives and answers as told.

    ``rcpt_replies`` / ``data_replies``: recipient (lower case) → reply instead of 250.
    ``mail_reply``: reply to every MAIL FROM. ``data_delay``: seconds to wait in DATA
    before accepting (a slow relay). ``drop_in_data``: recipients whose DATA makes the
    server hang up without answering. ``hold``: a recipient whose message is kept but
    whose 250 waits (``held`` is set meanwhile) until the test sets ``release``.
    """

    def __init__(
        self,
        *,
        rcpt_replies: dict[str, str] | None = None,
        data_replies: dict[str, str] | None = None,
        mail_reply: str | None = None,
        data_delay: float = 0.0,
        drop_in_data: set[str] | None = None,
        hold: str | None = None,
    ) -> None:
        self.rcpt_replies = {k.lower(): v for k, v in (rcpt_replies or {}).items()}
        self.data_replies = {k.lower(): v for k, v in (data_replies or {}).items()}
        self.mail_reply = mail_reply
        self.data_delay = data_delay
        self.drop_in_data = {a.lower() for a in drop_in_data or ()}
        self.hold = hold.lower() if hold else None
        self.held = threading.Event()
        self.release = threading.Event()
        self.received: list[Received] = []
        self.connections: set[Any] = set()  # peers (host, port) that said EHLO
        self.rsets: list[Any] = []
        self.lock = threading.Lock()

    def recipients(self) -> list[str]:
        with self.lock:
            return [r.lower() for m in self.received for r in m.rcpt_tos]

    async def handle_EHLO(  # noqa: N802
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # the hook owns this once it exists
        with self.lock:
            self.connections.add(session.peer)
        return responses

    async def handle_MAIL(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        with self.lock:
            self.rsets.append(session.peer)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        rcpt = envelope.rcpt_tos[0].lower()
        if rcpt in self.drop_in_data:
            assert server.transport is not None
            server.transport.close()
            return "250 never heard"
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        reply = self.data_replies.get(rcpt)
        if reply:
            return reply
        content = envelope.original_content or b""
        with self.lock:
            self.received.append(
                Received(
                    session.peer,
                    envelope.mail_from or "",
                    list(envelope.rcpt_tos),
                    content,
                    session.ssl is not None,
                )
            )
        if rcpt == self.hold:  # accepted, but the client does not hear so until released
            self.held.set()
            for _ in range(600):
                if self.release.is_set():
                    break
                await asyncio.sleep(0.05)
        return "250 2.0.0 Message accepted"


@contextmanager
def smtp_server(handler: Mailbox, **kwargs: Any) -> Iterator[Controller]:
    """A real aiosmtpd server on 127.0.0.1 and a free port, for the ``with`` block."""
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


def tls_context(tmp_path: Path) -> ssl.SSLContext:
    """A server context with a self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


# -- helpers -----------------------------------------------------------------------


def outgoing(n: int, *, delivery_id: int = 7, domain: str = "example.com") -> list[Outgoing]:
    return [
        Outgoing(
            message_id=100 + i,
            recipient=f"r{i}@{domain}",
            return_path=f"bounce+tok{i}@bounces.example",
            data=f"From: a@example.com\r\nTo: r{i}@{domain}\r\nSubject: {i}\r\n\r\nHi\r\n".encode(),
            delivery_id=delivery_id,
        )
        for i in range(n)
    ]


class Announced:
    """An ``on_before_data`` that records the ids it was given and what the server had
    received at that moment (so a test can see the call came before the DATA)."""

    def __init__(self, mailbox: Mailbox | None = None) -> None:
        self.ids: list[int] = []
        self.mailbox = mailbox
        self.received_before: dict[int, list[str]] = {}

    def __call__(self, ids: list[int]) -> None:
        for i in ids:
            self.ids.append(i)
            if self.mailbox is not None:
                self.received_before[i] = self.mailbox.recipients()


# -- outbox ------------------------------------------------------------------------


def test_outbox_writes_one_eml_per_message_with_its_envelope(tmp_path: Path) -> None:
    outbox = OutboxTransport(tmp_path / "outbox")
    batch = outgoing(3)
    announced = Announced()
    verdicts = send(outbox, batch, announced)
    assert verdicts == [Verdict("sent", None, None)] * 3
    assert announced.ids == [100, 101, 102]
    files = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    assert files == ["7-100.eml", "7-101.eml", "7-102.eml"]  # no temp file left behind
    content = (tmp_path / "outbox" / "7-101.eml").read_bytes()
    assert content.startswith(
        b"Return-Path: <bounce+tok1@bounces.example>\r\nDelivered-To: r1@example.com\r\n"
    )
    assert content.endswith(batch[1].data)


def test_outbox_that_cannot_be_written_fails_the_run_before_announcing(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("x")
    announced = Announced()
    with pytest.raises(TransportError, match="outbox"):
        send(OutboxTransport(tmp_path / "not-a-dir"), outgoing(2), announced)
    assert announced.ids == []


def test_outbox_write_failure_mid_batch_reports_sent_and_unsent(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "7-101.eml").mkdir()  # os.replace onto a directory fails
    with pytest.raises(TransportError) as info:
        send(OutboxTransport(outbox), outgoing(3), Announced())
    assert info.value.verdicts == {100: Verdict("sent")}
    assert info.value.unsent == {101, 102}
    assert not list(outbox.glob(".*.tmp"))


# -- SMTP --------------------------------------------------------------------------


def test_smtp_delivers_each_message_once_over_reused_connections() -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as server:
        smtp = SmtpTransport("127.0.0.1", server.port, concurrency=2, timeout=10)
        announced = Announced(mailbox)

        async def two_batches() -> list[Verdict]:
            try:
                first = await smtp.send(outgoing(12)[:6], announced)
                return first + await smtp.send(outgoing(12)[6:], announced)
            finally:
                await smtp.close()

        verdicts = run(two_batches())
    assert [v.status for v in verdicts] == ["sent"] * 12
    assert {v.code for v in verdicts} == {250}
    assert sorted(mailbox.recipients()) == sorted(f"r{i}@example.com" for i in range(12))
    assert {m.mail_from for m in mailbox.received} == {
        f"bounce+tok{i}@bounces.example" for i in range(12)
    }
    for m in mailbox.received:  # each arrives with its own VERP return path
        assert m.mail_from == f"bounce+tok{m.rcpt_tos[0][1:].split('@')[0]}@bounces.example"
    # Two connections carried all twelve messages, across both batches.
    assert len(mailbox.connections) == 2
    assert {m.peer for m in mailbox.received} == mailbox.connections
    # Announced one by one, each before the server had it.
    assert sorted(announced.ids) == list(range(100, 112))
    for i in announced.ids:
        assert f"r{i - 100}@example.com" not in announced.received_before[i]


def test_smtp_reconnects_when_the_relay_closed_an_idle_connection() -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox, timeout=0.3) as server:  # the relay hangs up after 0.3 s idle
        smtp = SmtpTransport("127.0.0.1", server.port, concurrency=1, timeout=10)

        async def with_a_pause() -> list[Verdict]:
            try:
                first = await smtp.send(outgoing(2)[:1], Announced())
                await asyncio.sleep(0.8)
                return first + await smtp.send(outgoing(2)[1:], Announced())
            finally:
                await smtp.close()

        verdicts = run(with_a_pause())
    assert [v.status for v in verdicts] == ["sent", "sent"]
    assert sorted(mailbox.recipients()) == ["r0@example.com", "r1@example.com"]
    assert len(mailbox.connections) == 2


def test_smtp_only_rcpt_and_data_replies_decide_a_message() -> None:
    mailbox = Mailbox(
        rcpt_replies={
            "r1@example.com": "550 5.1.1 <r1@example.com>: Recipient address rejected",
            "r2@example.com": "450 4.2.1 <r2@example.com>: Mailbox busy, try later",
        },
        data_replies={"r3@example.com": "552 5.3.4 Message size exceeds fixed limit"},
    )
    with smtp_server(mailbox) as server:
        smtp = SmtpTransport("127.0.0.1", server.port, concurrency=1, timeout=10)
        announced = Announced()
        verdicts = send(smtp, outgoing(5), announced)
    assert verdicts == [
        Verdict("sent", None, 250),
        Verdict("hard", "550 5.1.1 <r1@example.com>: Recipient address rejected", 550),
        Verdict("soft", "450 4.2.1 <r2@example.com>: Mailbox busy, try later", 450),
        Verdict("hard", "552 5.3.4 Message size exceeds fixed limit", 552),
        Verdict("sent", None, 250),
    ]
    # Refused at RCPT: never announced for DATA. Refused at DATA: announced.
    assert announced.ids == [100, 103, 104]
    assert sorted(mailbox.recipients()) == ["r0@example.com", "r4@example.com"]
    assert len(mailbox.connections) == 1  # the refusals did not cost the connection
    assert len(mailbox.rsets) >= 2  # RSET after each refused RCPT


def test_smtp_refused_mail_from_fails_the_run_not_the_recipients() -> None:
    mailbox = Mailbox(mail_reply="553 5.7.1 <bounce@bounces.example>: Sender address rejected")
    with smtp_server(mailbox) as server:
        smtp = SmtpTransport("127.0.0.1", server.port, concurrency=2, timeout=10)
        announced = Announced()
        with pytest.raises(TransportError, match=r"MAIL FROM.*553 5\.7\.1") as info:
            send(smtp, outgoing(4), announced)
    assert info.value.verdicts == {}
    assert announced.ids == [] and mailbox.received == []


def test_smtp_connection_refused_fails_the_run() -> None:
    smtp = SmtpTransport("127.0.0.1", free_port(), timeout=5)
    with pytest.raises(TransportError, match="cannot connect"):
        send(smtp, outgoing(1), Announced())


def test_smtp_connection_lost_in_data_leaves_that_message_in_doubt() -> None:
    mailbox = Mailbox(drop_in_data={"r1@example.com"})
    with smtp_server(mailbox) as server:
        smtp = SmtpTransport("127.0.0.1", server.port, concurrency=1, timeout=10)
        announced = Announced()
        with pytest.raises(TransportError, match="DATA") as info:
            send(smtp, outgoing(3), announced)
    # r0 sent; r1 announced with no verdict (in doubt); r2 never started.
    assert info.value.verdicts == {100: Verdict("sent", None, 250)}
    assert announced.ids == [100, 101]
    assert mailbox.recipients() == ["r0@example.com"]


def _authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        b"relay-user",
        b"s3cret",
    )
    return AuthResult(success=ok, handled=False)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_auth() -> None:
    mailbox = Mailbox()
    with smtp_server(
        mailbox, authenticator=_authenticator, auth_required=True, auth_require_tls=False
    ) as server:
        good = SmtpTransport(
            "127.0.0.1", server.port, username="relay-user", password="s3cret", timeout=10
        )
        assert [v.status for v in send(good, outgoing(2), Announced())] == ["sent", "sent"]
        bad = SmtpTransport(
            "127.0.0.1", server.port, username="relay-user", password="wrong", timeout=10
        )
        with pytest.raises(TransportError, match="authentication refused.*535"):
            send(bad, outgoing(1), Announced())
        anonymous = SmtpTransport("127.0.0.1", server.port, timeout=10)
        with pytest.raises(TransportError, match="MAIL FROM.*530"):
            send(anonymous, outgoing(1), Announced())
    assert sorted(mailbox.recipients()) == ["r0@example.com", "r1@example.com"]


def test_smtp_starttls(tmp_path: Path) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox, tls_context=tls_context(tmp_path), require_starttls=True) as server:
        smtp = SmtpTransport(
            "127.0.0.1", server.port, starttls=True, validate_certs=False, timeout=10
        )
        assert [v.status for v in send(smtp, outgoing(2), Announced())] == ["sent", "sent"]
        verified = SmtpTransport("127.0.0.1", server.port, starttls=True, timeout=10)
        with pytest.raises(TransportError, match="cannot connect"):  # self-signed: refused
            send(verified, outgoing(1), Announced())
        plain = SmtpTransport("127.0.0.1", server.port, timeout=10)
        with pytest.raises(TransportError, match="MAIL FROM.*530"):
            send(plain, outgoing(1), Announced())
    assert [m.tls for m in mailbox.received] == [True, True]


def test_smtp_implicit_tls(tmp_path: Path) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox, ssl_context=tls_context(tmp_path)) as server:
        smtp = SmtpTransport("127.0.0.1", server.port, tls=True, validate_certs=False, timeout=10)
        assert [v.status for v in send(smtp, outgoing(1), Announced())] == ["sent"]
    assert mailbox.recipients() == ["r0@example.com"]


def test_smtp_international_address_needs_smtputf8() -> None:
    mailbox = Mailbox()
    batch = outgoing(2)
    batch[0].recipient = "jösé@example.com"
    with smtp_server(mailbox, enable_SMTPUTF8=False) as server:
        smtp = SmtpTransport("127.0.0.1", server.port, timeout=10)
        verdicts = send(smtp, batch, Announced())
    assert verdicts[0].status == "hard" and "SMTPUTF8" in (verdicts[0].reason or "")
    assert verdicts[1].status == "sent"


# -- choosing a transport ----------------------------------------------------------


def test_transport_from_option(tmp_path: Path) -> None:
    settings = load_settings(tmp_path)
    default = transport_from_option(None, None, settings)
    assert isinstance(default, OutboxTransport) and default.directory == settings.outbox_dir
    chosen = transport_from_option(str(tmp_path / "out"), None, settings)
    assert isinstance(chosen, OutboxTransport) and chosen.directory == tmp_path / "out"

    plain = transport_from_option(None, "127.0.0.1:2525", settings)
    assert isinstance(plain, SmtpTransport)
    assert (plain.host, plain.port, plain.starttls, plain.tls, plain.username) == (
        "127.0.0.1",
        2525,
        False,
        False,
        None,
    )
    relay = transport_from_option(
        None, "smtp+starttls://me%40x.org:p%3Ass@relay.example?concurrency=8&verify=0", settings
    )
    assert isinstance(relay, SmtpTransport)
    assert (relay.host, relay.port, relay.starttls, relay.username, relay.password) == (
        "relay.example",
        587,
        True,
        "me@x.org",
        "p:ss",
    )
    assert relay.concurrency == 8 and relay.validate_certs is False
    tls = transport_from_option(None, "smtps://relay.example", settings)
    assert isinstance(tls, SmtpTransport) and (tls.port, tls.tls) == (465, True)

    with pytest.raises(ValueError, match="not both"):
        transport_from_option("x", "127.0.0.1:25", settings)
    with pytest.raises(ValueError, match="scheme"):
        transport_from_option(None, "http://relay.example", settings)
