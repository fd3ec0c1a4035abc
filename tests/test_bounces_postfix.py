"""Real bounces from a real MTA: Debian's Postfix, configured here in a temporary
directory (its own queue, an SMTP listener on a free 127.0.0.1 port), accepts a
delivery sent by msgtrack's SMTP transport for a local domain whose user does not exist
and whose other mailbox is full, bounces both to the signed VERP return path, and
delivers the DSNs to a maildir that ``msgtrack bounces process`` reads.

Skipped when Postfix is not installed (``.ci/run`` installs it), except under CI.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from msgtrack.context import Context
from msgtrack.delivery.bounces.mailbox import process_maildir
from msgtrack.delivery.bounces.process import BounceProcessor
from msgtrack.delivery.send import send_delivery
from msgtrack.delivery.transports import SmtpTransport
from tests.helpers import free_port
from tests.test_send import indicators, make_delivery, rows

POSTFIX = shutil.which("postfix") or (
    "/usr/sbin/postfix" if os.path.exists("/usr/sbin/postfix") else None
)
LOCAL = "local.example"
BOUNCE_DOMAIN = "bounce.example"
UNKNOWN = f"nobody@{LOCAL}"
FULL = f"full@{LOCAL}"
LIMIT = 100_000  # bytes: the largest message, and the largest mailbox


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required in CI: .ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture
def postfix() -> Iterator[tuple[int, Path]]:
    """A private Postfix instance: (SMTP port, the maildir receiving the bounces)."""
    if POSTFIX is None:
        _skip_or_fail("Postfix is not installed (apt-get install postfix)")
    assert POSTFIX is not None
    if os.geteuid() != 0:
        _skip_or_fail("a private Postfix instance needs root")
    import pwd

    nobody = pwd.getpwnam("nobody")
    # Not under tmp_path: Postfix's daemons run as the postfix user and must reach
    # their queue, so every directory on the way must be searchable.
    base = Path(tempfile.mkdtemp(prefix="msgtrack-postfix-"))
    base.chmod(0o755)
    conf, mail = base / "conf", base / "mail"
    for d in (conf, mail, base / "data", base / "queue"):
        d.mkdir(parents=True)
    owner = pwd.getpwnam("postfix")
    os.chown(base / "data", owner.pw_uid, owner.pw_gid)
    (mail / "bounces" / "new").mkdir(parents=True)
    # The full mailbox: an mbox file already at the size limit.
    (mail / "full").write_bytes(b"From x@y  Mon Mar  2 10:00:00 2026\n\n" + b"x" * LIMIT)
    for d in (mail, mail / "bounces", mail / "bounces" / "new", mail / "full"):
        os.chown(d, nobody.pw_uid, nobody.pw_gid)
    port = free_port()
    (conf / "vmailbox").write_text(f"{FULL} full\n")
    (conf / "bounces.regexp").write_text(f"/^bounce\\+.*@{BOUNCE_DOMAIN}$/ bounces/\n")
    (conf / "main.cf").write_text(
        f"""compatibility_level = 3.6
queue_directory = {base / "queue"}
data_directory = {base / "data"}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.{LOCAL}
mydomain = {LOCAL}
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
relayhost =
smtpd_reject_unlisted_recipient = no
smtpd_relay_restrictions = permit_mynetworks, reject
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = {LOCAL}, {BOUNCE_DOMAIN}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{conf / "vmailbox"}, regexp:{conf / "bounces.regexp"}
virtual_uid_maps = static:{nobody.pw_uid}
virtual_gid_maps = static:{nobody.pw_gid}
virtual_mailbox_limit = {LIMIT}
message_size_limit = {LIMIT}
delay_warning_time = 0
smtp_dns_support_level = disabled
disable_dns_lookups = yes
alias_maps =
alias_database =
maillog_file_prefixes = {base}
maillog_file = {base / "maillog"}
"""
    )
    master = Path("/etc/postfix/master.cf").read_text()
    master = master.replace(
        "\nsmtp      inet  n       -       y       -       -       smtpd",
        f"\n127.0.0.1:{port} inet  n       -       n       -       -       smtpd",
    )
    (conf / "master.cf").write_text(master.replace("       y       ", "       n       "))
    started = subprocess.run(
        [POSTFIX, "-c", str(conf), "start"], capture_output=True, text=True, timeout=60
    )
    try:
        assert started.returncode == 0, _log(base)
        yield port, mail / "bounces"
    except AssertionError as exc:  # with what Postfix said
        raise AssertionError(f"{exc}\n{_log(base)}") from None
    finally:
        subprocess.run([POSTFIX, "-c", str(conf), "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _log(base: Path) -> str:
    log = base / "maillog"
    return log.read_text(errors="replace")[-4000:] if log.exists() else "(no Postfix log)"


def _wait_for_files(folder: Path, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(folder.iterdir())) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(
        f"{count} bounce(s) expected in {folder}, got {list(folder.iterdir())}; Postfix log:\n"
        + _log(folder.parent.parent.parent)
    )


def test_postfix_bounces_are_matched_and_qualified(
    ctx: Context, tmp_path: Path, postfix: tuple[int, Path]
) -> None:
    port, maildir = postfix
    ctx = Context(dataclasses.replace(ctx.settings, bounce_domain=BOUNCE_DOMAIN))
    delivery_id = make_delivery(ctx, tmp_path, [UNKNOWN, FULL])
    report = send_delivery(ctx, delivery_id, SmtpTransport("127.0.0.1", port, timeout=20))
    assert report.sent == 2  # accepted by the relay; failures come back later
    _wait_for_files(maildir / "new", 2)
    processor = BounceProcessor(ctx)
    assert process_maildir(maildir, processor.process) == 2
    assert processor.stats.matched == 2
    m = rows(ctx, delivery_id)
    assert (m[UNKNOWN]["status"], m[UNKNOWN]["failure_type"], m[UNKNOWN]["failure_code"]) == (
        "failed",
        "hard",
        "user_unknown",
    )
    assert (m[FULL]["status"], m[FULL]["failure_type"], m[FULL]["failure_code"]) == (
        "sent",
        "soft",
        "mailbox_full",
    )
    ind, _ = indicators(ctx, delivery_id)
    assert (ind["hard_bounces"], ind["soft_bounces"], ind["new_quarantines"]) == (1, 1, 1)
    ctx.close()
