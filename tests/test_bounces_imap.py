"""``msgtrack bounces process --imap`` and ``--pop3``: a private Dovecot (Debian's
dovecot-imapd and dovecot-pop3d, configured here in a temporary directory, IMAP and POP3
over TLS with a certificate made for the test) holds bounces in its INBOX; they are
recorded, then moved to ``Processed`` (IMAP) or deleted (POP3).

Skipped when Dovecot is not installed (``.ci/run`` installs it), except under CI.
"""

from __future__ import annotations

import imaplib
import json
import os
import poplib
import pwd
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from msgtrack.context import Context
from msgtrack.delivery.bounces.mailbox import process_pop3
from msgtrack.delivery.bounces.process import BounceProcessor
from tests.factories import add_delivery, add_message, add_recipient
from tests.helpers import free_port, msgtrack

DOVECOT = shutil.which("dovecot") or (
    "/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None
)
POP3_DAEMON = Path("/usr/lib/dovecot/pop3")
FIXTURES = Path(__file__).parent / "fixtures" / "bounces"


@dataclass
class Dovecot:
    imaps_port: int
    pop3s_port: int  # 0: dovecot-pop3d is not installed
    inbox: Path  # the INBOX maildir
    cafile: Path

    def deliver(self, name: str, data: bytes) -> None:
        """Put a message in the INBOX, owned by the mail user as Dovecot expects."""
        nobody = pwd.getpwnam("nobody")
        path = self.inbox / "new" / name
        path.write_bytes(data)
        os.chown(path, nobody.pw_uid, nobody.pw_gid)


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    if DOVECOT is None or shutil.which("openssl") is None or os.geteuid() != 0:
        reason = "Dovecot (apt-get install dovecot-imapd), openssl and root are needed"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    assert DOVECOT is not None
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="msgtrack-dovecot-"))
    base.chmod(0o755)
    home = base / "home" / "bounces"
    inbox = home / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True)
    for d in (base / "home", home, inbox, inbox / "new", inbox / "cur", inbox / "tmp"):
        os.chown(d, nobody.pw_uid, nobody.pw_gid)
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(base / "key.pem"), "-out", str(base / "cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    (base / "users").write_text("bounces:{PLAIN}secret\n")
    port = free_port()
    pop3s_port = free_port() if POP3_DAEMON.exists() else 0
    pop3_service = f"""service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = {pop3s_port}
    ssl = yes
  }}
}}
"""
    conf = base / "dovecot.conf"
    conf.write_text(
        f"""base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = imap{" pop3" if pop3s_port else ""}
listen = 127.0.0.1
ssl = required
ssl_cert = <{base}/cert.pem
ssl_key = <{base}/key.pem
auth_mechanisms = plain
disable_plaintext_auth = yes
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/users
}}
userdb {{
  driver = static
  args = uid={nobody.pw_uid} gid={nobody.pw_gid} home={base}/home/%u
}}
mail_location = maildir:~/Maildir
first_valid_uid = 1
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
{pop3_service if pop3s_port else ""}"""
    )
    proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                ctx = ssl.create_default_context(cafile=str(base / "cert.pem"))
                imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=5).logout()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    log = base / "dovecot.log"
                    raise AssertionError(
                        "Dovecot did not start: " + (log.read_text() if log.exists() else "")
                    ) from None
                time.sleep(0.2)
        yield Dovecot(port, pop3s_port, inbox, base / "cert.pem")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(base, ignore_errors=True)


def _bounce_for_new_message(ctx: Context, email: str = "ann@example.com") -> tuple[int, bytes]:
    """(delivery id, a Postfix user-unknown DSN for a new message of that delivery)."""
    with ctx.engine.begin() as conn:
        d = add_delivery(conn)
        mid = add_message(conn, d.id, add_recipient(conn, email), email)
    data = (FIXTURES / "dsn_postfix_user_unknown.eml").read_bytes()
    return d.id, data.replace(b"aaaaaaaaaaaaaaaa", ctx.keyring.sign_verp(mid).encode())


def test_process_imap(ctx: Context, env: dict[str, str], dovecot: Dovecot) -> None:
    port, cafile = dovecot.imaps_port, dovecot.cafile
    delivery_id, data = _bounce_for_new_message(ctx)
    dovecot.deliver("1.bounce", data)
    dovecot.deliver("2.ooo", (FIXTURES / "autoreply_out_of_office.eml").read_bytes())
    env = {**env, "MSGTRACK_IMAP_CAFILE": str(cafile)}
    url = f"imaps://bounces:secret@127.0.0.1:{port}/INBOX"
    stats = json.loads(msgtrack(env, "bounces", "process", "--imap", url, "--json").stdout)
    assert (stats["read"], stats["matched"], stats["hard"], stats["unmatched"]) == (2, 1, 1, 1)
    listed = json.loads(msgtrack(env, "deliveries", "messages", str(delivery_id), "--json").stdout)
    assert (listed[0]["status"], listed[0]["failure_reason"]) == ("failed", "user_unknown")
    tls = ssl.create_default_context(cafile=str(cafile))
    imap = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls, timeout=10)
    imap.login("bounces", "secret")
    assert imap.select("INBOX")[1] == [b"0"]
    assert imap.select("Processed")[1] == [b"2"]
    imap.logout()
    # Without the CA the server's certificate is refused: TLS is verified.
    env.pop("MSGTRACK_IMAP_CAFILE")
    refused = msgtrack(env, "bounces", "process", "--imap", url, check=False)
    assert refused.returncode == 1 and "IMAP" in refused.stderr


@pytest.fixture
def pop3_dovecot(dovecot: Dovecot) -> Dovecot:
    """The private Dovecot, which must also serve POP3S."""
    if not dovecot.pop3s_port:
        reason = "dovecot-pop3d is needed (apt-get install dovecot-pop3d)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return dovecot


def _pop3(dovecot: Dovecot) -> poplib.POP3_SSL:
    tls = ssl.create_default_context(cafile=str(dovecot.cafile))
    pop = poplib.POP3_SSL("127.0.0.1", dovecot.pop3s_port, context=tls, timeout=10)
    pop.user("bounces")
    pop.pass_("secret")
    return pop


def _messages_left(dovecot: Dovecot) -> int:
    pop = _pop3(dovecot)
    try:
        return pop.stat()[0]
    finally:
        pop.quit()


def test_process_pop3(ctx: Context, env: dict[str, str], pop3_dovecot: Dovecot) -> None:
    dovecot = pop3_dovecot
    assert _messages_left(dovecot) == 0
    delivery_id, data = _bounce_for_new_message(ctx)
    dovecot.deliver("1.bounce", data)
    dovecot.deliver("2.ooo", (FIXTURES / "autoreply_out_of_office.eml").read_bytes())
    # the same bounce again, as a pass broken off before QUIT leaves it: counted once
    dovecot.deliver("3.bounce-again", data)
    # a line longer than poplib's own limit (2,048 bytes) must not stop the pass
    long_line = b"X-Diagnostic: " + b"x" * 5000 + b"\r\n"
    dovecot.deliver("4.long", long_line + (FIXTURES / "autoreply_out_of_office.eml").read_bytes())
    env = {**env, "MSGTRACK_IMAP_CAFILE": str(dovecot.cafile)}
    url = f"pop3s://bounces:secret@127.0.0.1:{dovecot.pop3s_port}"
    stats = json.loads(msgtrack(env, "bounces", "process", "--pop3", url, "--json").stdout)
    assert (stats["read"], stats["matched"], stats["hard"]) == (4, 1, 1)
    assert (stats["duplicates"], stats["unmatched"]) == (1, 2)
    listed = json.loads(msgtrack(env, "deliveries", "messages", str(delivery_id), "--json").stdout)
    assert (listed[0]["status"], listed[0]["failure_reason"]) == ("failed", "user_unknown")
    assert _messages_left(dovecot) == 0  # recorded, then deleted
    # TLS is verified: without the CA the server's certificate is refused
    env.pop("MSGTRACK_IMAP_CAFILE")
    refused = msgtrack(env, "bounces", "process", "--pop3", url, check=False)
    assert refused.returncode == 1 and "POP3" in refused.stderr
    # a wrong password is the server's answer, readable
    env["MSGTRACK_IMAP_CAFILE"] = str(dovecot.cafile)
    bad = url.replace(":secret@", ":wrong@")
    refused = msgtrack(env, "bounces", "process", "--pop3", bad, check=False)
    assert refused.returncode == 1 and "POP3: -ERR" in refused.stderr
    assert "b'" not in refused.stderr


def test_pop3_deletes_only_what_was_recorded(ctx: Context, pop3_dovecot: Dovecot) -> None:
    """A pass that fails on a message deletes the ones recorded before it and keeps the
    failing one and those after it, which the next pass records."""
    dovecot = pop3_dovecot
    first_delivery, first = _bounce_for_new_message(ctx, "ann@example.com")
    second_delivery, second = _bounce_for_new_message(ctx, "bob@example.com")
    dovecot.deliver("1.first", first)
    dovecot.deliver("2.second", second)
    processor = BounceProcessor(ctx)
    url = f"pop3s://bounces:secret@127.0.0.1:{dovecot.pop3s_port}"
    seen: list[bytes] = []

    def fail_on_second(data: bytes) -> None:
        seen.append(data)
        if len(seen) == 2:
            raise RuntimeError("the database went away")
        processor.process(data)

    with pytest.raises(RuntimeError):
        process_pop3(url, fail_on_second, cafile=str(dovecot.cafile))
    assert _messages_left(dovecot) == 1
    assert processor.stats.matched == 1
    assert process_pop3(url, processor.process, cafile=str(dovecot.cafile)) == 1
    assert (processor.stats.matched, processor.stats.hard, processor.stats.duplicates) == (2, 2, 0)
    assert _messages_left(dovecot) == 0
    with ctx.reader.connect() as conn:
        for delivery_id in (first_delivery, second_delivery):
            status = conn.execute(
                text("SELECT status FROM messages WHERE delivery_id = :d"), {"d": delivery_id}
            ).scalar_one()
            assert status == "failed"


# A pass killed after recording its first message, before QUIT: os._exit runs no
# ``finally``, as a kill -9 would not.
_KILLED_PASS = """
import os, sys
from msgtrack.context import Context
from msgtrack.delivery.bounces.mailbox import process_pop3
from msgtrack.delivery.bounces.process import BounceProcessor

processor = BounceProcessor(Context())

def record_then_die(data):
    processor.process(data)
    os._exit(9)

process_pop3(sys.argv[1], record_then_die, cafile=sys.argv[2])
"""


def test_pop3_pass_killed_before_quit(
    ctx: Context, env: dict[str, str], pop3_dovecot: Dovecot
) -> None:
    """Killed after the commit of its first message: nothing is deleted, and the next
    pass records the rest and counts the first once."""
    dovecot = pop3_dovecot
    _, first = _bounce_for_new_message(ctx, "ann@example.com")
    _, second = _bounce_for_new_message(ctx, "bob@example.com")
    dovecot.deliver("1.first", first)
    dovecot.deliver("2.second", second)
    url = f"pop3s://bounces:secret@127.0.0.1:{dovecot.pop3s_port}"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_PASS, url, str(dovecot.cafile)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == 9, killed.stderr
    assert _messages_left(dovecot) == 2
    env = {**env, "MSGTRACK_IMAP_CAFILE": str(dovecot.cafile)}
    stats = json.loads(msgtrack(env, "bounces", "process", "--pop3", url, "--json").stdout)
    assert (stats["read"], stats["duplicates"], stats["matched"], stats["hard"]) == (2, 1, 1, 1)
    assert _messages_left(dovecot) == 0


def test_pop3_url_checked() -> None:
    with pytest.raises(ValueError, match="pop3s://"):
        process_pop3("pop3://bounces:secret@127.0.0.1", lambda data: None)
    with pytest.raises(ValueError, match="no folders"):
        process_pop3("pop3s://bounces:secret@127.0.0.1/INBOX", lambda data: None)
