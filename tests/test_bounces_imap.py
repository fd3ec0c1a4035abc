"""``msgtrack bounces process --imap``: a private Dovecot (Debian's dovecot-imapd,
configured here in a temporary directory, IMAP over TLS with a certificate made for the
test) holds bounces in its INBOX; they are recorded and moved to ``Processed``.

Skipped when Dovecot is not installed (``.ci/run`` installs it), except under CI.
"""

from __future__ import annotations

import imaplib
import json
import os
import pwd
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from msgtrack.context import Context
from tests.factories import add_delivery, add_message, add_recipient
from tests.helpers import free_port, msgtrack

DOVECOT = shutil.which("dovecot") or (
    "/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None
)
FIXTURES = Path(__file__).parent / "fixtures" / "bounces"


@pytest.fixture
def dovecot() -> Iterator[tuple[int, Path, Path]]:
    """(IMAPS port, the INBOX maildir, the CA file)."""
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
    conf = base / "dovecot.conf"
    conf.write_text(
        f"""base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = imap
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
"""
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
        yield port, inbox, base / "cert.pem"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(base, ignore_errors=True)


def test_process_imap(ctx: Context, env: dict[str, str], dovecot: tuple[int, Path, Path]) -> None:
    port, inbox, cafile = dovecot
    with ctx.engine.begin() as conn:
        d = add_delivery(conn)
        mid = add_message(conn, d.id, add_recipient(conn, "ann@example.com"), "ann@example.com")
    data = (FIXTURES / "dsn_postfix_user_unknown.eml").read_bytes()
    data = data.replace(b"aaaaaaaaaaaaaaaa", ctx.keyring.sign_verp(mid).encode())
    nobody = pwd.getpwnam("nobody")
    for name, raw in (
        ("1.bounce", data),
        ("2.ooo", (FIXTURES / "autoreply_out_of_office.eml").read_bytes()),
    ):
        path = inbox / "new" / name
        path.write_bytes(raw)
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    env = {**env, "MSGTRACK_IMAP_CAFILE": str(cafile)}
    url = f"imaps://bounces:secret@127.0.0.1:{port}/INBOX"
    stats = json.loads(msgtrack(env, "bounces", "process", "--imap", url, "--json").stdout)
    assert (stats["read"], stats["matched"], stats["hard"], stats["unmatched"]) == (2, 1, 1, 1)
    listed = json.loads(msgtrack(env, "deliveries", "messages", str(d.id), "--json").stdout)
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
