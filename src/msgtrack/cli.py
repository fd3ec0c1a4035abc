"""The ``msgtrack`` command.

Every command works on ``MSGTRACK_HOME`` (default ``./msgtrack-data``) and the database
of ``MSGTRACK_DB`` (default: SQLite under the home). ``msgtrack init`` prepares a home;
the other commands bring the schema up to date and create missing keys by themselves,
so a newcomer's first command works.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from msgtrack import __version__
from msgtrack.context import Context
from msgtrack.setup import ensure_ready


def _context() -> Context:
    ctx = Context()
    ensure_ready(ctx)
    return ctx


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@click.group()
@click.version_option(__version__, prog_name="msgtrack")
def main() -> None:
    """msgtrack: tracked email deliveries, a tracking server, and their reports."""


# -- setup ----------------------------------------------------------------------


@main.command()
def init() -> None:
    """Create the schema, the signing keys and an API token (printed once)."""
    from msgtrack.storage.auth import create_api_token

    ctx = Context()
    ensure_ready(ctx)
    with ctx.engine.begin() as conn:
        token = create_api_token(conn)
    click.echo(f"msgtrack home: {ctx.settings.home}")
    click.echo(f"database: {ctx.engine.url.render_as_string(hide_password=True)}")
    click.echo("API token (shown once, keep it):")
    click.echo(token)


@main.command()
def migrate() -> None:
    """Bring the database schema to the newest version."""
    from msgtrack.setup import head_revision

    ctx = _context()
    click.echo(f"schema at revision {head_revision(ctx)}")


@main.group()
def keys() -> None:
    """Signing keys of tracked links."""


@keys.command("list")
def keys_list() -> None:
    """List the keys: id, created, retired, active."""
    ring = _context().keyring
    for key in sorted(ring.keys.values(), key=lambda k: k.key_id):
        flags = "active" if key.key_id == ring.active else ("retired" if key.retired_at else "")
        click.echo(f"{key.key_id}\t{key.created_at}\t{key.retired_at or '-'}\t{flags}")


@keys.command("rotate")
def keys_rotate() -> None:
    """Make a new signing key; links signed before stay valid until their key is retired."""
    ctx = _context()
    ring = ctx.keyring
    kid = ring.rotate()
    ring.save(ctx.settings.keys_file)
    click.echo(f"new signing key {kid}")


@keys.command("retire")
@click.argument("key_id", type=int)
def keys_retire(key_id: int) -> None:
    """Retire KEY_ID: links signed with it answer 404 from then on."""
    ctx = _context()
    ring = ctx.keyring
    try:
        ring.retire(key_id)
    except KeyError:
        _fail(f"no key {key_id}")
    except ValueError as exc:
        _fail(str(exc))
    ring.save(ctx.settings.keys_file)
    click.echo(f"key {key_id} retired")


# -- recipients -------------------------------------------------------------------


@main.group()
def users() -> None:
    """People who sign in to the web UI."""


@users.command("add")
@click.argument("name")
@click.option(
    "--password-stdin", "password_stdin", is_flag=True, help="Read the password from stdin."
)
def users_add(name: str, password_stdin: bool) -> None:
    """Create a user (or set a new password for an existing one)."""
    from msgtrack.storage.users import set_user

    if not password_stdin:
        _fail("give the password on standard input with --password-stdin")
    password = sys.stdin.readline().rstrip("\r\n")
    if not name.strip() or len(name) > 200:
        _fail("a user name is 1 to 200 characters")
    if len(password) < 8:
        _fail("the password must have at least 8 characters")
    ctx = _context()
    with ctx.engine.begin() as conn:
        set_user(conn, name, password)
    click.echo(f"user {name} saved")


@users.command("remove")
@click.argument("name")
def users_remove(name: str) -> None:
    """Remove a user; its sessions end at once."""
    from msgtrack.storage.users import remove_user

    ctx = _context()
    with ctx.engine.begin() as conn:
        if not remove_user(conn, name):
            _fail(f"no user {name}")
    click.echo(f"user {name} removed")


@users.command("list")
@click.option("--json", "as_json", is_flag=True)
def users_list(as_json: bool) -> None:
    """The users of the web UI."""
    from msgtrack.storage.users import user_names

    ctx = _context()
    with ctx.reader.connect() as conn:
        rows = user_names(conn)
    if as_json:
        _print_json([{"name": n, "created_at": c} for n, c in rows])
        return
    for n, c in rows:
        click.echo(f"{n}\t{c}")


@main.group()
def recipients() -> None:
    """Recipient profiles."""


@recipients.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def recipients_import(csv_file: Path, as_json: bool) -> None:
    """Import recipients from CSV_FILE (header row; `email` required)."""
    from msgtrack.storage.recipients import import_recipients_csv

    ctx = _context()
    try:
        report = import_recipients_csv(ctx, csv_file)
    except (ValueError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {csv_file}: {exc}")
    rejected = [
        {"line": line, "email": email, "reason": reason} for line, email, reason in report.rejected
    ]
    if as_json:
        _print_json({"imported": report.imported, "updated": report.updated, "rejected": rejected})
        return
    click.echo(f"imported: {report.imported}, updated: {report.updated}, rejected: {len(rejected)}")
    for row in rejected:
        click.echo(f"  line {row['line']}: {row['email']!r}: {row['reason']}")


@recipients.command("tracking")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def recipients_tracking(email: str, as_json: bool) -> None:
    """Every click of EMAIL across deliveries, newest first."""
    from msgtrack.reports.recipients import recipient_tracking

    ctx = _context()
    rows = recipient_tracking(ctx.reader, email)
    if rows is None:
        _fail(f"no recipient {email}")
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        delivery = f"{row['delivery_name']} (#{row['delivery_id']})"
        click.echo(f"{row['clicked_at']}  {delivery}  {row['label']}  {row['url']}")


# -- deliveries -------------------------------------------------------------------


@main.group()
def deliveries() -> None:
    """Deliveries: create, inspect, send."""


@deliveries.command("create")
@click.option("--name", required=True)
@click.option("--subject", required=True, help="Subject (a Jinja2 template).")
@click.option("--html", "html_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--text", "text_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--from", "from_addr", help="From address (default MSGTRACK_FROM).")
@click.option("--exclude", multiple=True, help="Do not track URLs matching this glob (repeatable).")
@click.option(
    "--append-params",
    "append_params",
    multiple=True,
    metavar="QUERY",
    help="Append these parameters (e.g. utm_source=news&utm_medium=email) to every tracked link.",
)
@click.option(
    "--append-params-to",
    "append_params_to",
    multiple=True,
    nargs=2,
    metavar="GLOB QUERY",
    help="Append QUERY to the tracked links matching GLOB (repeatable).",
)
@click.option(
    "--validity",
    metavar="DURATION",
    help="Retry soft failures for this long after the send starts, e.g. 3d, 12h "
    "(default MSGTRACK_DELIVERY_VALIDITY, 5d).",
)
@click.option("--json", "as_json", is_flag=True)
def deliveries_create(
    name: str,
    subject: str,
    html_file: Path | None,
    text_file: Path | None,
    from_addr: str | None,
    exclude: tuple[str, ...],
    append_params: tuple[str, ...],
    append_params_to: tuple[tuple[str, str], ...],
    validity: str | None,
    as_json: bool,
) -> None:
    """Create a delivery from an HTML and/or text content; prints its id."""
    from msgtrack.config import parse_duration
    from msgtrack.delivery.create import DeliveryError, create_delivery
    from msgtrack.links.params import ParamRule, ParamRuleError

    if html_file is None and text_file is None:
        _fail("give --html FILE and/or --text FILE")
    try:
        rules = [ParamRule("*", q) for q in append_params]
        rules += [ParamRule(glob, q) for glob, q in append_params_to]
    except ParamRuleError as exc:
        _fail(str(exc))
    try:
        validity_seconds = parse_duration(validity) if validity else None
    except ValueError as exc:
        _fail(f"--validity: {exc}")
    ctx = _context()
    try:
        delivery_id = create_delivery(
            ctx,
            name=name,
            subject=subject,
            html=html_file.read_text(encoding="utf-8") if html_file else None,
            text=text_file.read_text(encoding="utf-8") if text_file else None,
            from_addr=from_addr,
            exclude=exclude,
            param_rules=rules,
            validity=validity_seconds,
        )
    except DeliveryError as exc:
        _fail(str(exc))
    if as_json:
        _print_json({"id": delivery_id})
    else:
        click.echo(delivery_id)


@deliveries.command("list")
@click.option("--json", "as_json", is_flag=True)
def deliveries_list(as_json: bool) -> None:
    """List deliveries."""
    from msgtrack.storage.deliveries import list_deliveries

    ctx = _context()
    with ctx.reader.connect() as conn:
        rows = [dict(r) for r in list_deliveries(conn)]
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        click.echo(f"{row['id']}\t{row['state']}\t{row['name']}")


@deliveries.command("show")
@click.argument("delivery_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def deliveries_show(delivery_id: int, as_json: bool) -> None:
    """A delivery's state, analysis (exclusions by cause) and messages by status."""
    from dataclasses import asdict

    from msgtrack.storage.deliveries import get_delivery
    from msgtrack.storage.messages import message_counts

    ctx = _context()
    with ctx.reader.connect() as conn:
        row = get_delivery(conn, delivery_id)
        if row is None:
            _fail(f"no delivery {delivery_id}")
        counts = asdict(message_counts(conn, delivery_id))
    keep = (
        "id name subject from_addr state created_at prepared_at started_at sent_at "
        "initial_population rejected_quarantined rejected_denylisted rejected_opted_out "
        "rejected_invalid rejected_duplicate to_deliver last_error"
    ).split()
    data = {key: row[key] for key in keep}
    data["messages"] = counts
    if as_json:
        _print_json(data)
        return
    for key, value in data.items():
        if key != "messages":
            click.echo(f"{key:<22} {value}")
    click.echo("messages               " + ", ".join(f"{k}: {v}" for k, v in counts.items()))


@deliveries.command("urls")
@click.argument("delivery_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def deliveries_urls(delivery_id: int, as_json: bool) -> None:
    """List the tracked URLs of a delivery."""
    from msgtrack.storage.deliveries import tracked_urls

    ctx = _context()
    with ctx.reader.connect() as conn:
        rows = [dict(r) for r in tracked_urls(conn, delivery_id)]
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        state = "tracked" if row["tracked"] else "not tracked"
        click.echo(
            f"{row['id']}\t{row['type']}\t{state}\t{row['label']!r}\t{row['category']}\t{row['url']}"
        )


@deliveries.command("url")
@click.argument("delivery_id", type=int)
@click.argument("url_id", type=int)
@click.option("--label")
@click.option("--category")
@click.option("--tracking", type=click.Choice(["on", "off"]))
def deliveries_url(
    delivery_id: int, url_id: int, label: str | None, category: str | None, tracking: str | None
) -> None:
    """Relabel a tracked URL or switch its tracking, before sending."""
    from msgtrack.storage.deliveries import set_tracked_url

    ctx = _context()
    with ctx.engine.begin() as conn:
        changed = set_tracked_url(
            conn,
            delivery_id,
            url_id,
            tracked=None if tracking is None else tracking == "on",
            label=label,
            category=category,
        )
    if not changed:
        _fail("no such URL, or the delivery is already being sent")
    click.echo("updated")


@deliveries.command("send")
@click.argument("delivery_id", type=int)
@click.option("--outbox", type=click.Path(file_okay=False), help="Write one .eml per message here.")
@click.option("--smtp", help="Relay HOST:PORT.")
@click.option("--starttls", is_flag=True, help="STARTTLS on the SMTP connection.")
@click.option("--tls", is_flag=True, help="Implicit TLS (SMTPS).")
@click.option("--smtp-user", envvar="MSGTRACK_SMTP_USER")
@click.option(
    "--smtp-password", envvar="MSGTRACK_SMTP_PASSWORD", help="Better: MSGTRACK_SMTP_PASSWORD."
)
@click.option("--concurrency", type=int, default=4, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def deliveries_send(
    delivery_id: int,
    outbox: str | None,
    smtp: str | None,
    starttls: bool,
    tls: bool,
    smtp_user: str | None,
    smtp_password: str | None,
    concurrency: int,
    as_json: bool,
) -> None:
    """Analyse and send a delivery (resumes a stopped or crashed send)."""
    from msgtrack.delivery.send import AlreadySending, SendError, send_delivery
    from msgtrack.delivery.transports import SmtpTransport, TransportError, transport_from_option

    if outbox and smtp:
        _fail("give --outbox or --smtp, not both")
    ctx = _context()
    transport: Any
    if smtp:
        host, _, port = smtp.rpartition(":")
        if not host or not port.isdigit():
            _fail("--smtp takes HOST:PORT")
        transport = SmtpTransport(
            host,
            int(port),
            starttls=starttls,
            tls=tls,
            username=smtp_user,
            password=smtp_password,
            concurrency=concurrency,
        )
    else:
        transport = transport_from_option(outbox, None, ctx.settings)

    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if as_json or not sys.stderr.isatty():
            return
        if bar is None:
            bar = click.progressbar(length=total, label="sending", file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        report = send_delivery(ctx, delivery_id, transport, progress=progress)
    except AlreadySending:
        _fail(f"delivery {delivery_id} is already being sent by another run")
    except TransportError as exc:
        _fail(f"send run failed: {exc}")
    except (LookupError, SendError) as exc:
        _fail(str(exc))
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    counts = report.as_dict()
    if as_json:
        _print_json(counts)
    else:
        click.echo(", ".join(f"{k}: {v}" for k, v in counts.items()))


# -- servers and ingestion -----------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Tracking server, web API and the ingestion loop, in one process."""
    from msgtrack.serve import run_serve

    ctx = _context()
    click.echo(
        f"msgtrack {__version__} on http://{host}:{port} (home {ctx.settings.home})", err=True
    )
    run_serve(ctx, host, port)


@main.command("tracking-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Processes sharing the port, each with its own event log.",
)
def tracking_server(host: str, port: int, workers: int) -> None:
    """The public tracking server alone (starts without the database: it answers from
    the published snapshots, and reads the database only for what they lack)."""
    from msgtrack.tracking.server import ensure_keys, run_tracking_server

    ctx = Context()
    ensure_keys(ctx)
    click.echo(f"msgtrack tracking server on http://{host}:{port}", err=True)
    run_tracking_server(ctx, host, port, workers)


@main.command()
@click.option("--follow", is_flag=True, help="Keep loading new events.")
@click.option(
    "--wait",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to wait for a running ingestion (e.g. the `serve` loop) to finish its pass.",
)
def ingest(follow: bool, wait: float) -> None:
    """Load new tracking events into the database, exactly once."""
    import time

    from msgtrack.ingest.loader import IngestBusy, ingest_once

    ctx = _context()
    loaded = 0

    def progress(lines: int) -> None:
        nonlocal loaded
        loaded += lines
        if sys.stderr.isatty():
            click.echo(f"\rread {loaded:,} lines", nl=False, err=True)

    while True:
        try:
            stats = ingest_once(ctx, wait=wait, progress=progress)
        except IngestBusy:
            if not follow:
                _fail(f"another ingestion is still running after {wait:g} s", code=3)
        else:
            if loaded and sys.stderr.isatty():
                click.echo(err=True)
            if not follow or stats.loaded or stats.rejected:
                click.echo(
                    f"loaded: {stats.loaded}, duplicates: {stats.duplicates}, "
                    f"rejected: {stats.rejected}, segments: {stats.segments}"
                )
        if not follow:
            return
        time.sleep(ctx.settings.ingest_interval)


@main.command()
@click.option("--delivery", "delivery_id", type=int, help="Only this delivery.")
def recompute(delivery_id: int | None) -> None:
    """Rebuild every indicator and aggregate from the tracking logs."""
    from msgtrack.ingest.loader import IngestBusy
    from msgtrack.ingest.recompute import recompute as do_recompute

    ctx = _context()
    try:
        do_recompute(ctx, delivery_id)
    except IngestBusy:
        _fail("an ingestion is running and did not finish in time; try again", code=3)
    except LookupError as exc:
        _fail(str(exc))
    click.echo("recomputed")


# -- reports ------------------------------------------------------------------------


@main.group()
def report() -> None:
    """Reports."""


@report.command("indicators")
@click.argument("delivery_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def report_indicators(delivery_id: int, as_json: bool) -> None:
    """Tracking indicators of a delivery (SPEC §6)."""
    from msgtrack.reports.indicators import delivery_indicators

    ctx = _context()
    data = delivery_indicators(ctx.reader, delivery_id)
    if data is None:
        _fail(f"no delivery {delivery_id}")
    if as_json:
        _print_json(data)
        return
    domains = data.pop("domains")
    width = max(len(k) for k in data)
    for key, value in data.items():
        click.echo(f"{key:<{width}}  {value}")
    if domains:
        click.echo("\ndomain                          sent  opens  clicks  reactivity")
        for d in domains:
            counts = f"{d['sent']:>5} {d['opens']:>6} {d['clicks']:>7}"
            click.echo(f"{d['domain']:<30} {counts} {d['raw_reactivity']:>10}")


@main.group()
def domains() -> None:
    """Internet domains of the reports."""


@domains.command("alias")
@click.argument("alias")
@click.argument("domain")
def domains_alias(alias: str, domain: str) -> None:
    """Report ALIAS (e.g. googlemail.com) under DOMAIN (e.g. gmail.com)."""
    from msgtrack.storage.tracking import set_domain_alias

    ctx = _context()
    with ctx.engine.begin() as conn:
        set_domain_alias(conn, alias.lower(), domain.lower())
    click.echo(f"{alias} -> {domain}")


if __name__ == "__main__":  # pragma: no cover
    main()


@deliveries.command("messages")
@click.argument("delivery_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def deliveries_messages(delivery_id: int, as_json: bool) -> None:
    """A delivery's messages: address, status and, on failure, its reason and type."""
    from msgtrack.reports.deliveries import iter_messages
    from msgtrack.storage.deliveries import get_delivery

    ctx = _context()
    with ctx.reader.connect() as conn:
        if get_delivery(conn, delivery_id) is None:
            _fail(f"no delivery {delivery_id}")
    # Streamed page by page (keyset): constant memory for a million messages.
    rows = (
        {
            "id": int(r["id"]),
            "email": r["email"],
            "status": r["status"],
            "failure_reason": r["failure_code"],
            "failure_type": r["failure_type"],
            "failure_text": r["failure_reason"],
            "attempts": int(r["attempts"]),
            "sent_at": r["sent_at"],
        }
        for r in iter_messages(ctx.reader, delivery_id, None)
    )
    if as_json:
        click.echo("[", nl=False)
        for i, row in enumerate(rows):
            click.echo(("," if i else "") + "\n  " + json.dumps(row, ensure_ascii=False), nl=False)
        click.echo("\n]")
        return
    for r in rows:
        failure = f"{r['failure_type']}/{r['failure_reason']}" if r["failure_type"] else ""
        click.echo(f"{r['id']}\t{r['email']}\t{r['status']}\t{failure}")


# -- bounces and quarantine ------------------------------------------------------------


@main.group()
def bounces() -> None:
    """Bounces, complaints and unsubscriptions read back from the bounce mailbox."""


@bounces.command("qualify")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def bounces_qualify(paths: tuple[Path, ...], as_json: bool) -> None:
    """Qualify .eml files or maildirs without touching the database."""
    import os

    from msgtrack.config import load_settings
    from msgtrack.delivery.bounces.mailbox import is_maildir, maildir_messages
    from msgtrack.delivery.bounces.qualify import qualify_message
    from msgtrack.delivery.bounces.rulefile import live_rules

    rules = live_rules(load_settings())
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                maildir_messages(path)
                if is_maildir(path)
                else sorted(path / n for n in os.listdir(path) if (path / n).is_file())
            )
        else:
            files.append(path)
    out = []
    for file in files:
        for verdict in qualify_message(file.read_bytes(), rules):
            out.append({"file": str(file), **verdict.as_dict()})
    if as_json:
        _print_json(out)
        return
    for o in out:
        click.echo(
            f"{o['file']}\t{o['recipient'] or '-'}\t{o['status'] or '-'}\t"
            f"{o['reason']}\t{o['type']}\t{o['diagnostic'][:100]}"
        )


@bounces.command("process")
@click.option("--maildir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--imap", "imap_url", help="imaps://user:password@host[:port]/FOLDER")
@click.option("--pop3", "pop3_url", help="pop3s://user:password@host[:port]")
@click.option("--json", "as_json", is_flag=True)
def bounces_process(
    maildir: Path | None, imap_url: str | None, pop3_url: str | None, as_json: bool
) -> None:
    """Match, qualify and record the messages of the bounce mailbox (by default the one
    in MSGTRACK_BOUNCE_MAILBOX), then move them to its Processed folder (POP3, which has
    no folders: delete them)."""
    import imaplib
    import poplib

    from msgtrack.delivery.bounces.mailbox import (
        mailbox_kind,
        process_imap,
        process_maildir,
        process_pop3,
    )
    from msgtrack.delivery.bounces.process import BounceProcessor

    given = sum(source is not None for source in (maildir, imap_url, pop3_url))
    if given > 1:
        _fail("give exactly one of --maildir DIR, --imap URL or --pop3 URL", 2)
    ctx = _context()
    if not given:  # the mailbox `serve` reads, if one is configured
        configured = ctx.settings.bounce_mailbox
        if configured is None:
            _fail(
                "give one of --maildir DIR, --imap URL or --pop3 URL "
                "(or set MSGTRACK_BOUNCE_MAILBOX)",
                2,
            )
        try:
            kind = mailbox_kind(configured)
        except ValueError as exc:
            _fail(f"MSGTRACK_BOUNCE_MAILBOX: {exc}", 2)
        if kind == "imap":
            imap_url = configured
        elif kind == "pop3":
            pop3_url = configured
        else:
            maildir = Path(configured)
    processor = BounceProcessor(ctx)
    cafile = ctx.settings.imap_cafile
    if maildir is not None:
        if not maildir.is_dir():
            _fail(f"no maildir at {maildir}")
        process_maildir(maildir, processor.process)
    elif imap_url is not None:
        try:
            process_imap(imap_url, processor.process, cafile=cafile)
        except (OSError, ValueError, imaplib.IMAP4.error) as exc:
            _fail(f"IMAP: {exc}")
    else:
        assert pop3_url is not None
        try:
            process_pop3(pop3_url, processor.process, cafile=cafile)
        except (OSError, ValueError, poplib.error_proto) as exc:
            reply = exc.args[0] if exc.args else exc  # poplib's errors carry the reply bytes
            _fail(f"POP3: {reply.decode(errors='replace') if isinstance(reply, bytes) else reply}")
    stats = processor.stats.as_dict()
    if as_json:
        _print_json(stats)
        return
    click.echo(
        f"read {stats['read']}, matched {stats['matched']}, unmatched {stats['unmatched']}, "
        f"already recorded {stats['duplicates']}: hard {stats['hard']}, soft {stats['soft']}, "
        f"complaints {stats['complaints']}, unsubscriptions {stats['unsubscriptions']}, "
        f"new quarantines {stats['new_quarantines']}"
    )


@bounces.command("report")
@click.argument("delivery_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def bounces_report(delivery_id: int, as_json: bool) -> None:
    """What went wrong in a delivery: errors by reason and by domain, hard and soft
    bounce rates, complaints and new quarantines."""
    from msgtrack.storage.bounces import bounce_counters, failures_by_domain
    from msgtrack.storage.deliveries import get_delivery

    ctx = _context()
    with ctx.reader.connect() as conn:
        if get_delivery(conn, delivery_id) is None:
            _fail(f"no delivery {delivery_id}")
        counters = bounce_counters(conn, delivery_id)
        failures = failures_by_domain(conn, delivery_id)
    handed = counters["success"] + counters["errors"]
    by_reason: dict[str, int] = {}
    by_domain: dict[str, dict[str, Any]] = {}
    for domain, reason, _type, n in failures:
        by_reason[reason] = by_reason.get(reason, 0) + n
        row = by_domain.setdefault(domain, {"domain": domain, "errors": 0, "by_reason": {}})
        row["errors"] += n
        row["by_reason"][reason] = row["by_reason"].get(reason, 0) + n
    report: dict[str, Any] = {
        "delivery_id": delivery_id,
        **counters,
        "hard_bounce_rate": round(counters["hard_bounces"] / handed, 4) if handed else 0.0,
        "soft_bounce_rate": round(counters["soft_bounces"] / handed, 4) if handed else 0.0,
        "by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
        "by_domain": sorted(by_domain.values(), key=lambda r: (-r["errors"], r["domain"])),
    }
    if as_json:
        _print_json(report)
        return
    click.echo(
        f"hard bounces {report['hard_bounces']} ({report['hard_bounce_rate']:.2%}), "
        f"soft bounces {report['soft_bounces']} ({report['soft_bounce_rate']:.2%}), "
        f"complaints {report['complaints']}, new quarantines {report['new_quarantines']}"
    )
    for reason, n in report["by_reason"].items():
        click.echo(f"  {reason}\t{n}")
    for row in report["by_domain"]:
        click.echo(f"  {row['domain']}\t{row['errors']}")


@bounces.command("texts")
@click.option("--json", "as_json", is_flag=True)
def bounces_texts(as_json: bool) -> None:
    """The delivery log qualification list: failure texts with their variable parts
    replaced, grouped, with a count and the first text seen."""
    from msgtrack.reports.failures import failure_text_groups

    rows = failure_text_groups(_context().reader)
    if as_json:
        _print_json(rows)
        return
    for g in rows:
        click.echo(f"{g['count']}\t{g['reason']}\t{g['type']}\t{g['text'][:120]}")


@main.group("quarantine")
def quarantine_group() -> None:
    """Quarantined and denylisted addresses."""


@quarantine_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def quarantine_list(as_json: bool) -> None:
    """Addresses excluded from deliveries now."""
    from msgtrack.storage.quarantine import active_quarantines
    from msgtrack.storage.types import utcnow

    ctx = _context()
    with ctx.reader.connect() as conn:
        rows = [q.as_dict() for q in active_quarantines(conn, utcnow())]
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        click.echo(f"{r['address']}\t{r['kind']}\t{r['reason']}\t{r['failure_type'] or '-'}")


@quarantine_group.command("release")
@click.argument("address")
@click.option("--note", default=None, help="Why, kept in the history.")
def quarantine_release(address: str, note: str | None) -> None:
    """Release a quarantined or denylisted address by hand."""
    from msgtrack.storage.quarantine import release
    from msgtrack.storage.types import utcnow

    ctx = _context()
    with ctx.engine.begin() as conn:
        done = release(conn, address, utcnow(), note)
    if not done:
        _fail(f"{address} is not quarantined")
    click.echo(f"released {address.strip().lower()}")


@quarantine_group.command("history")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True)
def quarantine_history(address: str, as_json: bool) -> None:
    """Every quarantine change of an address."""
    from msgtrack.storage.quarantine import history_of

    ctx = _context()
    with ctx.reader.connect() as conn:
        rows = history_of(conn, address)
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        click.echo(f"{r['at']}\t{r['action']}\t{r['kind'] or '-'}\t{r['reason'] or '-'}")
