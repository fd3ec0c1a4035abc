"""Small builders for ingestion and report tests: rows inserted directly with Core (as the
delivery side would leave them) and event log segments written with ``encode_event`` (as
the tracking server would)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from msgtrack.links.addresses import MIRROR_ORDINAL, OPEN_ORDINAL, OPT_OUT_ORDINAL
from msgtrack.storage import send_stats
from msgtrack.storage.schema import (
    deliveries,
    delivery_indicators,
    delivery_persons,
    domain_stats,
    messages,
    recipients,
    tracked_urls,
)
from msgtrack.tracking.events import Event, encode_event

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC).timestamp()


def add_recipient(
    conn: Connection, email: str, *, first_name: str | None = None, email_format: str = "html"
) -> int:
    now = datetime.now(UTC)
    return int(
        conn.execute(
            insert(recipients).values(
                email=email,
                email_key=email.lower(),
                first_name=first_name,
                email_format=email_format,
                created_at=now,
                updated_at=now,
            )
        ).inserted_primary_key[0]
    )


@dataclass
class Delivery:
    id: int
    open_url: int
    opt_out_url: int
    mirror_url: int
    links: list[int] = field(default_factory=list)


def add_tracked_url(
    conn: Connection,
    delivery_id: int,
    url: str,
    *,
    ordinal: int,
    label: str = "",
    type: str = "click",
) -> int:
    return int(
        conn.execute(
            insert(tracked_urls).values(
                delivery_id=delivery_id, ordinal=ordinal, url=url, label=label, type=type
            )
        ).inserted_primary_key[0]
    )


def add_delivery(
    conn: Connection,
    name: str = "Spring newsletter",
    *,
    to_deliver: int = 0,
    links: Iterable[tuple[str, str]] = (),
    state: str = "sent",
) -> Delivery:
    """A delivery with its open/opt-out/mirror tracked URLs and ``links`` as (url, label)."""
    did = int(
        conn.execute(
            insert(deliveries).values(
                name=name,
                subject="Hello",
                from_addr="news@example.org",
                state=state,
                to_deliver=to_deliver,
                created_at=datetime.now(UTC),
            )
        ).inserted_primary_key[0]
    )
    d = Delivery(
        did,
        add_tracked_url(conn, did, "", ordinal=OPEN_ORDINAL, type="open"),
        add_tracked_url(conn, did, "", ordinal=OPT_OUT_ORDINAL, type="opt-out"),
        add_tracked_url(conn, did, "", ordinal=MIRROR_ORDINAL, type="mirror"),
    )
    for i, (url, label) in enumerate(links, start=1):
        d.links.append(add_tracked_url(conn, did, url, ordinal=i, label=label))
    return d


def _bump(conn: Connection, delivery_id: int, **deltas: int) -> None:
    t = delivery_indicators
    if conn.execute(select(t.c.delivery_id).where(t.c.delivery_id == delivery_id)).first() is None:
        conn.execute(insert(t).values(delivery_id=delivery_id))
    conn.execute(
        update(t)
        .where(t.c.delivery_id == delivery_id)
        .values({k: t.c[k] + v for k, v in deltas.items()})
    )


def add_message(
    conn: Connection,
    delivery_id: int,
    recipient_id: int,
    email: str,
    *,
    status: str = "sent",
    text_only: bool = False,
    seed: bool = False,
    failure_code: str | None = None,
    failure_reason: str | None = None,
) -> int:
    """A message, counted the way analysis and sending count it: text_only at analysis;
    when sent, success (seeds excluded) and the domain's sends (seeds included); errors
    when failed; and the send-side aggregates (its domain's messages to deliver and
    outcome, a failure under its reason)."""
    domain = email.rsplit("@", 1)[1].lower()
    mid = int(
        conn.execute(
            insert(messages).values(
                delivery_id=delivery_id,
                recipient_id=recipient_id,
                email=email,
                domain=domain,
                status=status,
                text_only=text_only,
                seed=seed,
                failure_type="hard" if status == "failed" else None,
                failure_code=failure_code,
                failure_reason=failure_reason,
                sent_at=datetime.now(UTC) if status == "sent" else None,
            )
        ).inserted_primary_key[0]
    )
    deltas = send_stats.Deltas()
    deltas.domains[domain][0] += 1  # processed: one more message to deliver
    deltas.add(
        send_stats.SendState(
            domain, status, "hard" if status == "failed" else None, failure_code, seed
        )
    )
    deltas.write(conn, delivery_id)
    _bump(
        conn,
        delivery_id,
        success=int(status == "sent" and not seed),
        errors=int(status == "failed"),
        text_only=int(text_only),
    )
    if status == "sent":
        ds = domain_stats
        key = (ds.c.delivery_id == delivery_id) & (ds.c.domain == domain)
        if conn.execute(select(ds.c.domain).where(key)).first() is None:
            conn.execute(insert(ds).values(delivery_id=delivery_id, domain=domain, sent=1))
        else:
            conn.execute(update(ds).where(key).values(sent=ds.c.sent + 1))
    return mid


def ev(
    kind: str,
    delivery: Delivery,
    message_id: int | None,
    t: float,
    *,
    url_id: int | None = None,
    visitor: str | None = None,
    values: tuple[str, ...] = (),
    source: str | None = None,
    ua: str = "Mozilla/5.0 (test)",
) -> Event:
    """An event as the tracking server logs it; the tracked URL defaults by kind."""
    if url_id is None:
        url_id = {
            "open": delivery.open_url,
            "opt-out": delivery.opt_out_url,
            "mirror": delivery.mirror_url,
            "unsubscribe": delivery.opt_out_url,
        }.get(kind)
    if kind == "unsubscribe" and source is None:
        source = "form"
    return Event(
        t=t,
        kind=kind,
        delivery_id=delivery.id,
        message_id=message_id,
        url_id=url_id,
        visitor_id=visitor,
        ip="127.0.0.1",
        user_agent=ua,
        values=values,
        source=source,
    )


def write_segment(
    events_dir: Path, name: str, events: Iterable[Event | bytes], *, sealed: bool = False
) -> Path:
    """Append events (or raw bytes, for torn or corrupted lines) to a segment file."""
    events_dir.mkdir(parents=True, exist_ok=True)
    path = events_dir / name
    with open(path, "ab") as f:
        for e in events:
            f.write(e if isinstance(e, bytes) else encode_event(e))
    if sealed:
        seal(path)
    return path


def seal(path: Path) -> None:
    path.with_name(path.name + ".sealed").touch()


def line_offsets(path: Path) -> list[int]:
    """Byte offset of each line of a segment."""
    offsets, pos = [], 0
    for line in path.read_bytes().splitlines(keepends=True):
        offsets.append(pos)
        pos += len(line)
    return offsets


# -- snapshots of everything the counters say, for comparisons ---------------------------


def counters_snapshot(engine: Engine) -> dict[str, Any]:
    """Every aggregate ingestion keeps, in a comparable form."""
    with engine.connect() as conn:
        ind = {
            r.delivery_id: dict(r._mapping)
            for r in conn.execute(
                select(delivery_indicators).order_by(delivery_indicators.c.delivery_id)
            )
        }
        msgs = [
            tuple(r)
            for r in conn.execute(
                select(
                    messages.c.id,
                    messages.c.first_event_at,
                    messages.c.first_click_at,
                    messages.c.open_count,
                    messages.c.click_count,
                ).order_by(messages.c.id)
            )
        ]
        persons = [
            tuple(r) for r in conn.execute(select(delivery_persons).order_by(*delivery_persons.c))
        ]
        domains = [
            tuple(r)
            for r in conn.execute(
                select(domain_stats).order_by(domain_stats.c.delivery_id, domain_stats.c.domain)
            )
        ]
    return {"indicators": ind, "messages": msgs, "persons": persons, "domains": domains}


def count_rows(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
