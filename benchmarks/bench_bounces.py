"""Bounce qualification: messages parsed and qualified per second, on one core.

    python benchmarks/bench_bounces.py [--seconds 5] [--real]
    python benchmarks/bench_bounces.py --accuracy

The project's fixture set (tests/fixtures/bounces: DSNs, ARF reports, plain-text
bounces of qmail, Exim, Sendmail, Exchange and Yahoo in several languages,
auto-replies), qualified round after round with the shipped rules: MIME parsing, field
extraction and the rule table, no database. ``--real`` takes the committed real bounces
instead (tests/fixtures/bounces-real: flufl.bounce, bounced and baunsu's samples), longer
and more varied. Goal: at least 2,000 per second per core.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from msgtrack.delivery.bounces.qualify import qualify_message
from msgtrack.delivery.bounces.rules import load_rules

FIXTURES = Path(__file__).parent.parent / "tests" / "fixtures" / "bounces"
REAL = Path(__file__).parent.parent / "tests" / "fixtures" / "bounces-real"


def real_samples() -> list[Path]:
    """The committed real bounces (each source's folder, less its licence and README)."""
    return sorted(
        p
        for p in REAL.glob("*/*")
        if p.is_file() and not p.name.upper().startswith(("LICENSE", "NOTICE", "README"))
    )


def with_returned_body(data: bytes, kb: int) -> bytes:
    """A DSN returning the whole message (headers and an HTML body of ``kb`` KB)
    instead of its headers only."""
    if not kb or b"text/rfc822-headers" not in data:
        return data
    line = b"<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.</p>\n"
    body = line * (kb * 1024 // len(line))
    head, sep, rest = data.partition(b"Content-Type: text/rfc822-headers\n\n")
    headers, end, tail = rest.partition(b"\n\n")
    return (
        head
        + b"Content-Type: message/rfc822\n\n"
        + headers
        + b"\nContent-Type: text/html\n\n"
        + body
        + end
        + tail
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--real", action="store_true", help="the committed real bounces, not the fixture set"
    )
    parser.add_argument(
        "--accuracy", action="store_true", help="compare with flufl.bounce on its samples"
    )
    parser.add_argument(
        "--returned-kb",
        type=int,
        default=0,
        help="give the DSNs' returned message an HTML body of this size, as real ones have",
    )
    args = parser.parse_args()
    if args.accuracy:
        accuracy()
        return
    files = real_samples() if args.real else sorted(FIXTURES.glob("*.eml"))
    samples = [with_returned_body(p.read_bytes(), args.returned_kb) for p in files]
    rules = load_rules()
    for data in samples:  # warm up: compile the rules, import the codecs
        qualify_message(data, rules)
    done = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < args.seconds:
        for data in samples:
            qualify_message(data, rules)
        done += len(samples)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    size = sum(map(len, samples)) / len(samples)
    print(f"{len(samples)} distinct messages, {size:.0f} bytes on average")
    print(f"qualified {done} in {elapsed:.2f} s: {done / elapsed:,.0f} bounces/s on one core")
    # On a shared machine the process gets less than a core: per second of its own CPU
    # time is the rate of one core.
    print(f"  {cpu:.2f} s of CPU time: {done / cpu:,.0f} bounces per CPU second")


# -- agreement with an established classifier -------------------------------------------

FLUFL = "flufl.bounce==6.0.0"  # Apache-2.0; its sdist ships ~120 real bounces


def accuracy() -> None:
    """Download flufl.bounce (GNU Mailman's bounce detector) with pip into a temporary
    directory, run both classifiers on its real-world samples, and compare: recipients
    found, and hard/soft against its permanent/temporary split. (It gives no reasons,
    so reasons cannot be compared with it.)"""
    import email
    import subprocess
    import sys
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory(prefix="msgtrack-flufl-") as tmp:
        pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "install", "--target", f"{tmp}/lib", FLUFL], check=True)
        subprocess.run(
            [*pip, "download", "--no-deps", "--no-binary", ":all:", "-d", tmp, FLUFL], check=True
        )
        sdist = next(Path(tmp).glob("flufl_bounce-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        sys.path.insert(0, f"{tmp}/lib")
        from flufl.bounce import all_failures

        samples = sorted(Path(tmp).glob("flufl_bounce-*/tests/data/*.txt"))
        theirs_total = found = same_type = comparable = same_comparable = 0
        for path in samples:
            data = path.read_bytes()
            temporary, permanent = all_failures(email.message_from_bytes(data))
            theirs = {a.decode(errors="replace").lower(): "soft" for a in temporary}
            theirs.update({a.decode(errors="replace").lower(): "hard" for a in permanent})
            if not theirs:
                continue
            ours = {v.recipient: v for v in qualify_message(data) if v.recipient}
            for address, kind in theirs.items():
                theirs_total += 1
                if address in ours:
                    found += 1
                    same_type += ours[address].type == kind
                    # Mailman's split is "did the MTA give up"; here soft means "the
                    # address may work later": full mailboxes, disabled accounts,
                    # refusals, expired retries and unsure cases are soft by design,
                    # delay warnings informational (type ignored). Comparable: an
                    # address that does not exist.
                    if ours[address].reason in ("user_unknown", "invalid_domain"):
                        comparable += 1
                        same_comparable += ours[address].type == kind
        print(f"{len(samples)} samples of {FLUFL}; {theirs_total} failed recipients found by it")
        print(f"recipients also found here: {found} ({found / theirs_total:.1%})")
        print(f"same hard/soft on those: {same_type} ({same_type / max(found, 1):.1%})")
        print(
            f"same hard/soft where both mean the same (user unknown, invalid domain): "
            f"{same_comparable} of {comparable} ({same_comparable / max(comparable, 1):.1%})"
        )


if __name__ == "__main__":
    main()
