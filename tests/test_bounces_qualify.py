"""Parsing and qualification of bounces, complaints and auto-replies, without a
database: the fixture set (tests/fixtures/bounces) covers every reason and the usual
formats (DSN, ARF, qmail, Exim, Sendmail, Exchange, Yahoo, several languages); the real
bounces of tests/fixtures/bounces-real keep the verdicts recorded beside them."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

from msgtrack.delivery.bounces.qualify import qualify_message, qualify_reply
from msgtrack.delivery.bounces.rules import (
    REASONS,
    RuleError,
    load_rules,
    normalize_text,
    parse_rules,
)
from tests.helpers import msgtrack

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"

# file -> (recipient, status, reason, type)
EXPECTED = {
    "dsn_postfix_user_unknown.eml": ("nobody@example.com", "5.1.1", "user_unknown", "hard"),
    "dsn_gmail_no_such_user.eml": ("ghost@gmail.example", "5.1.1", "user_unknown", "hard"),
    "dsn_ses_user_unknown.eml": ("missing@example.com", "5.1.1", "user_unknown", "hard"),
    "dsn_invalid_domain.eml": ("someone@no-such-domain.example", "5.4.4", "invalid_domain", "hard"),
    "dsn_mailbox_full.eml": ("full@example.com", "5.2.2", "mailbox_full", "soft"),
    "dsn_account_disabled.eml": ("gone@gmail.example", "5.2.1", "account_disabled", "soft"),
    "dsn_spamhaus_rejected.eml": ("reader@example.org", "5.7.1", "rejected", "soft"),
    "dsn_o365_not_found.eml": ("pat@contoso.example", "5.1.10", "user_unknown", "hard"),
    "text_italian_mailbox_full.eml": ("giulia.rossi@posta.example", None, "mailbox_full", "soft"),
    "text_portuguese_user_unknown.eml": ("joao@correio.example", None, "user_unknown", "hard"),
    "dsn_o365_policy.eml": ("reader@outlook.example", "5.7.1", "rejected", "soft"),
    "dsn_unreachable.eml": ("late@example.net", "4.4.1", "unreachable", "soft"),
    "dsn_delayed.eml": ("later@example.net", "4.4.1", "unreachable", "ignored"),
    "dsn_delivered.eml": ("happy@example.com", "2.0.0", "ignored", "ignored"),
    "dsn_to_qualify.eml": ("odd@example.com", "5.0.0", "to_qualify", "soft"),
    "text_qmail_user_unknown.eml": ("nobody@recipient.example", "5.1.1", "user_unknown", "hard"),
    "text_exim_mailbox_full.eml": ("full@recipient.example", "4.2.2", "mailbox_full", "soft"),
    "text_sendmail_user_unknown.eml": (
        "jdoe@old.recipient.example",
        "5.1.1",
        "user_unknown",
        "hard",
    ),
    "text_exchange_user_unknown.eml": (
        "alice.smith@corp.example",
        "5.1.10",
        "user_unknown",
        "hard",
    ),
    "text_yahoo_account_disabled.eml": ("sleeper@yahoo.example", None, "account_disabled", "soft"),
    "text_french_user_unknown.eml": ("jean.dupont@fai.example", None, "user_unknown", "hard"),
    "text_german_mailbox_full.eml": (
        "max.mustermann@provider.example",
        None,
        "mailbox_full",
        "soft",
    ),
    "text_spanish_user_unknown.eml": ("maria@correo.example", None, "user_unknown", "hard"),
    "autoreply_out_of_office.eml": (None, None, "ignored", "ignored"),
    "autoreply_vacation_french.eml": (None, None, "ignored", "ignored"),
    "arf_complaint.eml": ("angry@isp.example", None, "complaint", "hard"),
}


def test_fixture_set_covers_every_reason() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.eml")) == sorted(EXPECTED)
    assert {e[2] for e in EXPECTED.values()} == set(REASONS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_is_qualified(name: str) -> None:
    verdicts = qualify_message((FIXTURES / name).read_bytes())
    assert len(verdicts) == 1
    v = verdicts[0]
    assert (v.recipient, v.status, v.reason, v.type) == EXPECTED[name]
    if v.reason not in ("ignored", "complaint"):
        assert v.diagnostic


def test_reply_codes_are_extracted() -> None:
    by_name = {
        n: qualify_message((FIXTURES / n).read_bytes())[0]
        for n in (
            "dsn_postfix_user_unknown.eml",
            "text_exim_mailbox_full.eml",
            "dsn_to_qualify.eml",
        )
    }
    assert by_name["dsn_postfix_user_unknown.eml"].reply_code == "550"
    assert by_name["text_exim_mailbox_full.eml"].reply_code == "452"
    assert by_name["dsn_to_qualify.eml"].reply_code == "554"


def test_multi_recipient_dsn_gives_one_verdict_each() -> None:
    data = (FIXTURES / "dsn_postfix_user_unknown.eml").read_bytes()
    block = (
        b"\nFinal-Recipient: rfc822; full@example.com\nAction: failed\nStatus: 5.2.2\n"
        b"Diagnostic-Code: smtp; 552 5.2.2 mailbox full\n"
    )
    data = data.replace(
        b"\n--BOUNDARY-dsn_postfix_user_unknown\nContent-Description: Undel",
        block + b"\n--BOUNDARY-dsn_postfix_user_unknown\nContent-Description: Undel",
    )
    verdicts = qualify_message(data)
    assert [(v.recipient, v.reason) for v in verdicts] == [
        ("nobody@example.com", "user_unknown"),
        ("full@example.com", "mailbox_full"),
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b'Subject: =?utf-8\xff?b?aGVsbG8=?=\nContent-Type: text/plain; charset="utf\xff"\n\nhi\n',
        (FIXTURES / "dsn_postfix_user_unknown.eml").read_bytes()[:900],
        b"Content-Type: multipart/report; boundary=x\n\n--x\nContent-Type: message/delivery-status"
        b"\nContent-Transfer-Encoding: base64\n\n!!!\n",
    ],
)
def test_malformed_messages_never_raise(data: bytes) -> None:
    verdicts = qualify_message(data)
    assert verdicts and all(v.type in ("hard", "soft", "ignored") for v in verdicts)


def test_synchronous_replies() -> None:
    assert qualify_reply("550 5.1.1 <a@b.example>: Recipient address rejected: User unknown") == (
        "user_unknown",
        "hard",
    )
    assert qualify_reply("452 4.2.2 Mailbox full") == ("mailbox_full", "soft")
    assert qualify_reply("550 5.7.1 Client host blocked using zen.spamhaus.org")[0] == "rejected"
    assert qualify_reply("421 4.4.2 Connection timed out") == ("unreachable", "soft")
    assert qualify_reply("550 please go away") == ("to_qualify", "soft")
    assert qualify_reply("450 4.1.1 <a@b.example>: User unknown") == ("user_unknown", "hard")


def test_rules_are_data_and_ordered(tmp_path: Path) -> None:
    table = parse_rules(
        "# my rules\nstatus,reply,text,reason,type,note\n"
        ",,custom refusal,rejected,soft,\n^5\\.1\\.1$,,,user_unknown,auto,\n,,,to_qualify,auto,\n"
    )
    assert table.qualify("5.1.1", "550", "custom refusal here").reason == "rejected"
    assert table.qualify("5.1.1", "550", "who knows").reason == "user_unknown"
    assert table.qualify("4.1.1", "450", "who knows").type == "soft"
    with pytest.raises(RuleError):
        parse_rules("status,reply,text,reason,type\n,,x,bogus,hard\n")
    with pytest.raises(RuleError):
        parse_rules("status,reply,text,reason,type\n,,(,rejected,hard\n")
    assert len(load_rules().rules) > 10


def test_normalize_groups_variable_parts() -> None:
    a = normalize_text("550 5.1.1 <ann@example.com>: user unknown (id 8a7d6f5e4c3b) 192.0.2.1")
    b = normalize_text("550 5.1.1 <bob@other.example>: user unknown (id 1f2e3d4c5b6a) 198.51.100.2")
    assert a == b and "<address>" in a


def test_cli_qualify_json(tmp_path: Path) -> None:
    maildir = tmp_path / "maildir"
    (maildir / "new").mkdir(parents=True)
    (maildir / "cur").mkdir()
    for name in ("dsn_mailbox_full.eml", "arf_complaint.eml"):
        (maildir / "new" / name).write_bytes((FIXTURES / name).read_bytes())
    single = FIXTURES / "dsn_postfix_user_unknown.eml"
    env = {**os.environ, "MSGTRACK_HOME": str(tmp_path / "home")}
    env.pop("MSGTRACK_DB", None)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent.parent / "src"), *sys.path])
    out = json.loads(
        msgtrack(env, "bounces", "qualify", str(single), str(maildir), "--json").stdout
    )
    assert [(o["recipient"], o["reason"], o["type"]) for o in out] == [
        ("nobody@example.com", "user_unknown", "hard"),
        ("angry@isp.example", "complaint", "hard"),
        ("full@example.com", "mailbox_full", "soft"),
    ]
    assert set(out[0]) == {
        "file",
        "recipient",
        "status",
        "reply_code",
        "reason",
        "type",
        "diagnostic",
    }
    assert out[0]["file"] == str(single) and out[0]["reply_code"] == "550"
    assert not (tmp_path / "home").exists() or not list((tmp_path / "home").glob("*.db"))


# -- real bounces ------------------------------------------------------------------------

REAL = Path(__file__).parent / "fixtures" / "bounces-real"
#: One folder per source, each with its licence (see the README there).
REAL_SOURCES = ("flufl.bounce", "bounced", "baunsu")


def _real_files() -> list[str]:
    return sorted(
        p.relative_to(REAL).as_posix()
        for p in REAL.glob("*/*")
        if p.is_file() and not p.name.upper().startswith(("LICENSE", "NOTICE", "README"))
    )


def _real_expected() -> dict[str, list[tuple[str, str, str, str]]]:
    """file -> [(recipient, status, reason, type)] from expected.csv."""
    out: dict[str, list[tuple[str, str, str, str]]] = {}
    with open(REAL / "expected.csv", newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["file"], []).append(
                (row["recipient"], row["status"], row["reason"], row["type"])
            )
    return out


def test_real_bounce_set_is_complete() -> None:
    """Every committed sample has its expected verdicts, every source its licence, and
    the set covers what the classifier must handle."""
    expected = _real_expected()
    assert _real_files() == sorted(expected)
    assert len(expected) >= 40
    for source in REAL_SOURCES:
        assert (REAL / source / "LICENSE").is_file()
        assert any(name.startswith(f"{source}/") for name in expected)
    assert (REAL / "README.md").is_file()
    rows = [row for rows in expected.values() for row in rows]
    assert {reason for _, _, reason, _ in rows} == set(REASONS)
    # Delay warnings: the reason says why the message is late, the type that it counts
    # for nothing; auto-replies and success reports stay reason ignored.
    assert sum(r[2:] == ("unreachable", "ignored") for r in rows) >= 5
    assert sum(r[2:] == ("ignored", "ignored") for r in rows) >= 3


@pytest.mark.parametrize("name", sorted(_real_expected()))
def test_real_bounce_keeps_its_verdict(name: str) -> None:
    """Real bounces of many mail systems (flufl.bounce, bounced and baunsu's test
    samples): the verdicts recorded in expected.csv, compared with Sisimai's by
    benchmarks/bench_bounce_agreement.py, must not move without a deliberate change
    (rewrite the file with its --write-expected and read the diff)."""
    verdicts = qualify_message((REAL / name).read_bytes())
    got = [(v.recipient or "", v.status or "", v.reason, v.type) for v in verdicts]
    assert got == _real_expected()[name]
