"""Transports: where rendered messages go — a local outbox directory or an SMTP relay.

Both take a batch of :class:`Outgoing` messages and answer one :class:`Verdict` per
message. The send run needs to know, for at most once, which messages were about to be
handed over: a transport calls ``on_before_data(ids)`` before it hands those messages
over (SMTP: before each DATA; outbox: before writing the batch), and the send run
commits them in flight there. If the callback raises, those messages are not sent.
A transport that learns verdicts one at a time (SMTP) also passes each to
``on_verdict`` as it comes, so the run can record it without waiting for the batch:
after a crash, only the messages whose verdicts were not recorded yet are in doubt.

Only the reply to RCPT or DATA decides a message's fate. Anything that breaks the
conversation itself — connection, TLS, authentication, a refused MAIL FROM — raises
:class:`TransportError`, which fails the run and not the recipients; it carries the
verdicts already known for the batch.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from aiosmtplib import (
    SMTP,
    SMTPAuthenticationError,
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
)

from msgtrack.config import Settings

BeforeData = Callable[[list[int]], None]
OnVerdict = Callable[[int, "Verdict"], None]


class TransportError(Exception):
    """The send run cannot go on (connection, TLS, auth, MAIL FROM refusal, outbox write).

    ``verdicts``: message id → verdict for the messages of the batch already decided.
    ``unsent``: messages announced through ``on_before_data`` that certainly were not
    handed over. Any other announced message without a verdict is in doubt.
    """

    def __init__(
        self,
        message: str,
        *,
        verdicts: dict[int, Verdict] | None = None,
        unsent: set[int] | None = None,
    ) -> None:
        super().__init__(message)
        self.verdicts: dict[int, Verdict] = verdicts or {}
        self.unsent: set[int] = unsent or set()
        #: Set by the send run: where the delivery stands after the failed run.
        self.report: Any = None


@dataclass
class Outgoing:
    message_id: int
    recipient: str
    return_path: str  # envelope sender: the message's signed VERP address
    data: bytes  # the whole RFC 5322 message
    delivery_id: int = field(kw_only=True)  # names the outbox file


@dataclass
class Verdict:
    status: Literal["sent", "hard", "soft"]
    reason: str | None = None  # the full reply, code and text, on a failure
    code: int | None = None  # SMTP reply code (None for the outbox)


class Transport(Protocol):
    #: How many messages a send run hands over at once.
    batch_size: int

    async def send(
        self, batch: list[Outgoing], on_before_data: BeforeData, on_verdict: OnVerdict | None = None
    ) -> list[Verdict]: ...

    async def close(self) -> None: ...


def verdict_of_reply(code: int, text: str) -> Verdict:
    """5xx (or anything unexpected) is hard, 4xx soft; the reason is the full reply."""
    reason = f"{code} {text}".strip()
    return Verdict("soft" if 400 <= code < 500 else "hard", reason, code)


# -- outbox ------------------------------------------------------------------------


class OutboxTransport:
    """One ``{delivery_id}-{message_id}.eml`` per message, written atomically.

    The envelope goes in front of the message as ``Return-Path`` and ``Delivered-To``
    headers, as a final delivery agent would write them. Files are renamed into place
    from a dot-prefixed temp file, so a reader (or a crash) never sees half a message;
    they are not fsynced one by one (a power loss may lose the last ones written).
    """

    batch_size = 500

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path_for(self, delivery_id: int, message_id: int) -> Path:
        return self.directory / f"{int(delivery_id)}-{int(message_id)}.eml"

    async def send(
        self, batch: list[Outgoing], on_before_data: BeforeData, on_verdict: OnVerdict | None = None
    ) -> list[Verdict]:
        # One announcement and one answer for the whole batch: on_verdict is not needed.
        if not batch:
            return []
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransportError(f"cannot create the outbox {self.directory}: {exc}") from exc
        on_before_data([out.message_id for out in batch])
        verdicts: list[Verdict] = []
        for i, out in enumerate(batch):
            try:
                self._write(out)
            except OSError as exc:
                raise TransportError(
                    f"cannot write to the outbox {self.directory}: {exc}",
                    verdicts={o.message_id: v for o, v in zip(batch, verdicts, strict=False)},
                    unsent={o.message_id for o in batch[i:]},
                ) from exc
            verdicts.append(Verdict("sent"))
        return verdicts

    def _write(self, out: Outgoing) -> None:
        path = self.path_for(out.delivery_id, out.message_id)
        tmp = path.with_name(f".{path.name}.tmp")
        eol = b"\r\n" if b"\r\n" in out.data[:4096] else b"\n"
        envelope = (
            b"Return-Path: <"
            + out.return_path.encode()
            + b">"
            + eol
            + b"Delivered-To: "
            + out.recipient.encode()
            + eol
        )
        try:
            with open(tmp, "wb") as f:
                f.write(envelope)
                f.write(out.data)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    async def close(self) -> None:
        return None


# -- SMTP --------------------------------------------------------------------------

# Failures of the conversation itself, as opposed to a reply about one message.
_CONNECTION_ERRORS = (
    SMTPServerDisconnected,
    SMTPException,
    OSError,
    ssl.SSLError,
    asyncio.TimeoutError,
)


class _RunFailure(Exception):
    """Internal: the conversation broke (a message announced for DATA without a verdict
    is then in doubt)."""


@dataclass
class _Slot:
    """One connection of the pool, reused for message after message."""

    client: SMTP | None = None
    fresh: bool = False  # connected for the message under way (no reconnect retry then)


@dataclass
class _Batch:
    verdicts: dict[int, Verdict] = field(default_factory=dict)
    failure: BaseException | None = None


class SmtpTransport:
    """An SMTP relay, ``concurrency`` connections in parallel, each reused.

    Per message: MAIL FROM (the VERP return path), RCPT TO, then — once the send run
    has the message in flight — DATA. A refused RCPT is followed by RSET and the
    connection goes on with the next message.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        starttls: bool = False,
        tls: bool = False,
        username: str | None = None,
        password: str | None = None,
        concurrency: int = 4,
        timeout: float = 30.0,
        local_hostname: str | None = None,
        validate_certs: bool = True,
    ) -> None:
        if starttls and tls:
            raise ValueError("choose STARTTLS or TLS, not both")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.host = host
        self.port = port
        self.starttls = starttls
        self.tls = tls
        self.username = username
        self.password = password
        self.concurrency = concurrency
        self.timeout = timeout
        self.local_hostname = local_hostname
        self.validate_certs = validate_certs
        # Verdicts are recorded as they come (on_verdict), so batches can be roomy.
        self.batch_size = concurrency * 16
        self._slots = [_Slot() for _ in range(concurrency)]

    def __repr__(self) -> str:
        mode = "tls" if self.tls else "starttls" if self.starttls else "plain"
        return f"SmtpTransport({self.host}:{self.port}, {mode}, concurrency={self.concurrency})"

    # connections
    async def _connect(self, slot: _Slot) -> SMTP:
        client = SMTP(
            hostname=self.host,
            port=self.port,
            use_tls=self.tls,
            start_tls=self.starttls,
            validate_certs=self.validate_certs,
            timeout=self.timeout,
            local_hostname=self.local_hostname,
            username=self.username,
            password=self.password,
        )
        try:
            await client.connect()
        except SMTPAuthenticationError as exc:
            raise _RunFailure(
                f"authentication refused by {self.host}:{self.port}: {exc.code} {exc.message}"
            ) from exc
        except SMTPResponseException as exc:
            raise _RunFailure(
                f"{self.host}:{self.port} refused the session: {exc.code} {exc.message}"
            ) from exc
        except _CONNECTION_ERRORS as exc:
            raise _RunFailure(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        slot.client, slot.fresh = client, True
        return client

    async def _client(self, slot: _Slot) -> SMTP:
        client = slot.client
        if client is not None and client.is_connected and client.loop is asyncio.get_running_loop():
            slot.fresh = False
            return client
        self._drop(slot)  # closed by the relay, or left from another event loop
        return await self._connect(slot)

    @staticmethod
    def _drop(slot: _Slot) -> None:
        client, slot.client = slot.client, None
        if client is not None:
            try:
                client.close()
            except RuntimeError:  # its event loop is already closed: nothing left to close
                pass

    async def _rset(self, slot: _Slot) -> None:
        """RSET after a refusal; a connection that cannot is dropped and redone later."""
        if slot.client is None or not slot.client.is_connected:
            return
        try:
            await slot.client.rset()
        except _CONNECTION_ERRORS:
            self._drop(slot)

    # one message
    async def _mail_from(self, slot: _Slot, out: Outgoing, options: list[str]) -> SMTP:
        client = await self._client(slot)
        try:
            await client.mail(out.return_path, options=options, encoding="utf-8")
            return client
        except SMTPResponseException as exc:
            raise _RunFailure(
                f"MAIL FROM:<{out.return_path}> refused: {exc.code} {exc.message}"
            ) from exc
        except _CONNECTION_ERRORS as exc:
            if slot.fresh:
                raise _RunFailure(f"connection to {self.host}:{self.port} lost: {exc}") from exc
        # A reused connection the relay had closed while idle: one new try.
        self._drop(slot)
        client = await self._connect(slot)
        try:
            await client.mail(out.return_path, options=options, encoding="utf-8")
        except SMTPResponseException as exc:
            raise _RunFailure(
                f"MAIL FROM:<{out.return_path}> refused: {exc.code} {exc.message}"
            ) from exc
        except _CONNECTION_ERRORS as exc:
            raise _RunFailure(f"connection to {self.host}:{self.port} lost: {exc}") from exc
        return client

    async def _send_one(
        self, slot: _Slot, out: Outgoing, on_before_data: BeforeData, state: _Batch
    ) -> Verdict | None:
        """The verdict on one message; None when the run stopped before its DATA."""
        options: list[str] = []
        if not (out.recipient.isascii() and out.return_path.isascii()):
            client = await self._client(slot)
            try:
                if client.is_ehlo_or_helo_needed:
                    await client.ehlo()
            except _CONNECTION_ERRORS as exc:
                self._drop(slot)
                raise _RunFailure(
                    f"connection to {self.host}:{self.port} lost at EHLO: {exc}"
                ) from exc
            if not client.supports_extension("smtputf8"):
                return Verdict("hard", "the address needs SMTPUTF8, which the relay does not offer")
            options.append("SMTPUTF8")
        client = await self._mail_from(slot, out, options)
        try:
            await client.rcpt(out.recipient, encoding="utf-8")
        except SMTPResponseException as exc:
            await self._rset(slot)
            return verdict_of_reply(exc.code, exc.message)
        except _CONNECTION_ERRORS as exc:
            self._drop(slot)
            raise _RunFailure(f"connection to {self.host}:{self.port} lost at RCPT: {exc}") from exc
        if state.failure is not None:  # another connection broke: hand nothing more over
            await self._rset(slot)
            return None
        try:
            on_before_data([out.message_id])
        except BaseException:
            await self._rset(slot)
            raise
        try:
            reply = await client.data(out.data)
        except SMTPResponseException as exc:
            await self._rset(slot)
            return verdict_of_reply(exc.code, exc.message)
        except _CONNECTION_ERRORS as exc:
            self._drop(slot)
            raise _RunFailure(
                f"connection to {self.host}:{self.port} lost during DATA: {exc}"
            ) from exc
        return Verdict("sent", None, reply.code)

    async def send(
        self, batch: list[Outgoing], on_before_data: BeforeData, on_verdict: OnVerdict | None = None
    ) -> list[Verdict]:
        state = _Batch()
        queue = deque(batch)

        async def worker(slot: _Slot) -> None:
            while queue and state.failure is None:
                out = queue.popleft()
                try:
                    verdict = await self._send_one(slot, out, on_before_data, state)
                except BaseException as exc:  # a broken conversation, or the callback's failure
                    state.failure = state.failure or exc
                    return
                if verdict is not None:
                    state.verdicts[out.message_id] = verdict
                    if on_verdict is not None:
                        on_verdict(out.message_id, verdict)

        await asyncio.gather(
            *(worker(slot) for slot in self._slots[: min(len(batch), self.concurrency)])
        )
        if state.failure is None:
            return [state.verdicts[out.message_id] for out in batch]
        if isinstance(state.failure, _RunFailure):
            raise TransportError(str(state.failure), verdicts=state.verdicts) from state.failure
        raise state.failure

    async def close(self) -> None:
        """QUIT every open connection; the transport can be used again afterwards."""
        for slot in self._slots:
            client, slot.client = slot.client, None
            if client is None or not client.is_connected:
                continue
            if client.loop is not asyncio.get_running_loop():
                self._drop(_Slot(client))  # opened in another event loop: no QUIT from here
                continue
            try:
                await asyncio.wait_for(client.quit(), timeout=min(self.timeout, 5.0))
            except (*_CONNECTION_ERRORS, SMTPResponseException):
                client.close()


# -- choosing one ------------------------------------------------------------------

_DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


def smtp_transport_from_url(value: str) -> SmtpTransport:
    """``HOST:PORT`` or ``smtp[s|+starttls]://[user[:password]@]host[:port][?options]``.

    Options: ``starttls=1``, ``concurrency=N``, ``timeout=SECONDS``, ``verify=0`` (do not
    validate the relay's certificate). ``smtps`` is TLS from the first byte.
    """
    url = urlsplit(value if "://" in value else f"smtp://{value}")
    scheme = url.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"unsupported SMTP scheme {url.scheme!r} (smtp, smtp+starttls, smtps)")
    if not url.hostname:
        raise ValueError(f"no host in {value!r}: expected HOST:PORT")
    try:
        port = url.port or _DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise ValueError(f"bad port in {value!r}") from exc
    options = {k: v[-1] for k, v in parse_qs(url.query).items()}
    yes = ("1", "true", "yes", "on")
    return SmtpTransport(
        url.hostname,
        port,
        starttls=scheme == "smtp+starttls" or options.get("starttls", "0").lower() in yes,
        tls=scheme == "smtps",
        username=unquote(url.username) if url.username else None,
        password=unquote(url.password) if url.password is not None else None,
        concurrency=int(options.get("concurrency", 4)),
        timeout=float(options.get("timeout", 30.0)),
        validate_certs=options.get("verify", "1").lower() in yes,
    )


def transport_from_option(outbox: str | None, smtp: str | None, settings: Settings) -> Transport:
    """The transport named by ``--outbox DIR`` or ``--smtp HOST:PORT``; the outbox under
    ``MSGTRACK_HOME`` by default."""
    if outbox and smtp:
        raise ValueError("choose --outbox or --smtp, not both")
    if smtp:
        return smtp_transport_from_url(smtp)
    return OutboxTransport(Path(outbox) if outbox else settings.outbox_dir)
