"""Reading the bounce mailbox: a maildir, an IMAP folder over TLS, or a POP3 mailbox
over TLS.

Nothing is lost or counted twice across crashes: a message leaves the inbox (renamed
into the maildir's ``.Processed`` folder, copied to the IMAP ``Processed`` folder and
expunged, or deleted from the POP3 mailbox, which has no folders) only after the
transaction that recorded it has committed, and a message read again after a crash in
between is recognized by its key and only moved (or deleted).
"""

from __future__ import annotations

import imaplib
import os
import poplib
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

PROCESSED = ".Processed"
PROCESSED_FOLDER = "Processed"


def maildir_messages(root: Path) -> Iterator[Path]:
    """Files of ``new/`` then ``cur/``, oldest name first (names start with the time)."""
    for sub in ("new", "cur"):
        folder = root / sub
        if folder.is_dir():
            for name in sorted(os.listdir(folder)):
                if not name.startswith("."):
                    yield folder / name


def is_maildir(path: Path) -> bool:
    return (path / "new").is_dir() or (path / "cur").is_dir()


def processed_path(root: Path, source: Path) -> Path:
    folder = root / PROCESSED / "cur"
    name = source.name if ":2," in source.name else f"{source.name}:2,S"
    return folder / name


def process_maildir(root: Path, handle: Callable[[bytes], object]) -> int:
    """Hand each message to ``handle`` (which commits), then move it to the processed
    folder; returns how many were read."""
    for sub in ("tmp", "new", "cur"):
        (root / PROCESSED / sub).mkdir(parents=True, exist_ok=True)
    count = 0
    for path in maildir_messages(root):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # another reader took it
            continue
        handle(data)
        target = processed_path(root, path)
        try:
            os.rename(path, target)
        except FileNotFoundError:
            pass
        count += 1
    return count


def process_imap(
    url: str,
    handle: Callable[[bytes], object],
    *,
    cafile: str | None = None,
    timeout: float = 30.0,
) -> int:
    """``imaps://user:password@host[:port]/FOLDER``: each message of the folder (INBOX
    by default) is handed to ``handle``, then copied to ``Processed`` and expunged."""
    parts = urlsplit(url)
    if parts.scheme != "imaps":
        raise ValueError("only imaps:// (IMAP over TLS) is supported")
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    context = ssl.create_default_context(cafile=cafile)
    imap = imaplib.IMAP4_SSL(
        parts.hostname or "localhost", parts.port or 993, ssl_context=context, timeout=timeout
    )
    count = 0
    try:
        imap.login(unquote(parts.username or ""), unquote(parts.password or ""))
        imap.create(PROCESSED_FOLDER)  # answers NO when it exists
        status, _ = imap.select(folder)
        if status != "OK":
            raise imaplib.IMAP4.error(f"cannot open folder {folder}")
        _, found = imap.uid("SEARCH", "ALL")
        for raw_uid in (found[0] or b"").split():
            uid = raw_uid.decode("ascii")
            _, fetched = imap.uid("FETCH", uid, "(RFC822)")
            data = next((p[1] for p in fetched if isinstance(p, tuple)), None)
            if not isinstance(data, bytes):
                continue
            handle(data)
            status, _ = imap.uid("COPY", uid, PROCESSED_FOLDER)
            if status != "OK":  # keep it in the inbox: read again, it only moves
                raise imaplib.IMAP4.error(f"cannot copy message {uid} to {PROCESSED_FOLDER}")
            imap.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
            count += 1
        imap.expunge()
    finally:
        try:
            imap.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
    return count


# poplib refuses lines over 2,048 bytes; RFC 5322 allows 998, but bounces quote what the
# remote system sent, longer lines included. A message refused here would stay in the
# mailbox and stop every later pass at the same place.
POP3_MAX_LINE = 1 << 20


def process_pop3(
    url: str,
    handle: Callable[[bytes], object],
    *,
    cafile: str | None = None,
    timeout: float = 30.0,
) -> int:
    """``pop3s://user:password@host[:port]``: each message of the mailbox is handed to
    ``handle``, then deleted. POP3 deletes at QUIT only: a pass that breaks off (the
    connection lost, the process killed) deletes nothing, and the next pass reads those
    messages again and recognizes them. When ``handle`` fails, the messages handled
    before it are still deleted and the failing one stays."""
    parts = urlsplit(url)
    if parts.scheme != "pop3s":
        raise ValueError("only pop3s:// (POP3 over TLS) is supported")
    if parts.path not in ("", "/"):
        raise ValueError("a POP3 mailbox has no folders: pop3s://user:password@host[:port]")
    poplib._MAXLINE = max(poplib._MAXLINE, POP3_MAX_LINE)  # type: ignore[attr-defined]
    context = ssl.create_default_context(cafile=cafile)
    pop = poplib.POP3_SSL(
        parts.hostname or "localhost", parts.port or 995, timeout=timeout, context=context
    )
    count = 0
    try:
        pop.user(unquote(parts.username or ""))
        pop.pass_(unquote(parts.password or ""))
        _, listing, _ = pop.list()
        for entry in listing:
            number = entry.split()[0].decode("ascii")
            _, lines, _ = pop.retr(number)  # dot-unstuffed, line ends removed
            handle(b"\r\n".join(lines) + b"\r\n")
            pop.dele(number)
            count += 1
    finally:
        try:
            pop.quit()  # the deletions of the messages handled take effect here
        except (poplib.error_proto, OSError):
            pass
    return count


def mailbox_kind(source: str) -> str:
    """``imap``, ``pop3`` or ``maildir`` for a bounce mailbox given as an ``imaps://`` or
    ``pop3s://`` URL or a path; ValueError for any other URL."""
    scheme = urlsplit(source).scheme
    if scheme == "imaps":
        return "imap"
    if scheme == "pop3s":
        return "pop3"
    if "://" in source:
        raise ValueError("a bounce mailbox is a maildir, an imaps:// or a pop3s:// URL")
    return "maildir"


def process_mailbox(
    source: str, handle: Callable[[bytes], object], *, cafile: str | None = None
) -> int:
    """``source``: an ``imaps://`` or ``pop3s://`` URL, or the path of a maildir."""
    kind = mailbox_kind(source)
    if kind == "imap":
        return process_imap(source, handle, cafile=cafile)
    if kind == "pop3":
        return process_pop3(source, handle, cafile=cafile)
    root = Path(source)
    if not is_maildir(root):
        raise ValueError(f"no maildir at {root}")
    return process_maildir(root, handle)
