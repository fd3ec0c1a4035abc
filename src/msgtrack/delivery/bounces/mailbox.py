"""Reading the bounce mailbox: a maildir, or an IMAP folder over TLS.

Nothing is lost or counted twice across crashes: a message leaves the inbox (renamed
into the maildir's ``.Processed`` folder, or copied to the IMAP ``Processed`` folder
and expunged) only after the transaction that recorded it has committed, and a message
read again after a crash in between is recognized by its key and only moved.
"""

from __future__ import annotations

import imaplib
import os
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
