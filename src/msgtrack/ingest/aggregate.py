"""Counters moved by tracking events: one function for ingestion and for recompute, so a
rebuilt delivery equals an incrementally kept one by construction.

Everything here is order-independent: firsts are minimums and the rest are sums, so
events arriving out of order (across segments, or replayed by recompute) end in the same
state. Work is set-wise per batch: one query loads the touched messages, one the touched
persons, and the writes are executemany.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from msgtrack.ingest.agents import apply_agents
from msgtrack.storage import buckets as bucket_store
from msgtrack.storage import tracking as store

# Any of these shows that the message was opened (SPEC §6); web pages never do.
OPENING = frozenset({"click", "open", "opt-out", "mirror"})

# Event type -> the delivery counter it adds one to.
TYPE_COUNTER = {
    "open": "total_opens",
    "click": "total_clicks",
    "opt-out": "opt_outs",
    "mirror": "mirror_views",
    "web": "visited_pages",
    "transaction": "visited_pages",
}


@dataclass(frozen=True)
class CountedEvent:
    """What aggregation needs of one newly inserted tracking log row."""

    delivery_id: int
    message_id: int | None
    type: str
    visitor_id: str | None
    at: datetime
    amount: float | None = None
    articles: int | None = None
    tracked_url_id: int | None = None
    user_agent: str | None = None


@dataclass
class HeldMessages:
    """Message firsts and counts a rebuild holds instead of writing them page by page.

    Recompute replays a delivery's events in time order, so a message's events fall on
    many pages; written per page, each message row was rewritten once per page inside
    one transaction (each rewrite a new row version on PostgreSQL). Held, a message is
    written once per ``limit`` messages held: ``states`` is what the next page's firsts
    compare with, ``rows`` what is not written yet. ``flush`` writes and forgets them.
    """

    limit: int = 100_000
    states: dict[int, store.MessageState] = field(default_factory=dict)
    # message id -> [first_event_at, first_click_at, opens, clicks]
    rows: dict[int, list[Any]] = field(default_factory=dict)

    def load(self, conn: Connection, ids: set[int]) -> dict[int, store.MessageState]:
        self.states.update(store.message_states(conn, ids - self.states.keys()))
        return self.states

    def hold(self, touched: Mapping[int, list[Any]]) -> None:
        for mid, (first_event, first_click, opens, clicks) in touched.items():
            self.states[mid] = replace(
                self.states[mid], first_event_at=first_event, first_click_at=first_click
            )
            row = self.rows.setdefault(mid, [None, None, 0, 0])
            row[0], row[1] = first_event, first_click  # already the earliest of both
            row[2] += opens
            row[3] += clicks

    def flush(self, conn: Connection) -> None:
        _write_messages(conn, self.rows)
        self.states.clear()
        self.rows.clear()


def apply_events(
    conn: Connection,
    events: Sequence[CountedEvent],
    extra: Mapping[int, Mapping[str, int]] | None = None,
    states: Mapping[int, store.MessageState] | None = None,
    held: HeldMessages | None = None,
) -> None:
    """Move every counter for ``events``, which must be rows just inserted (never a
    replay of rows already counted). ``extra`` adds other per-delivery deltas (e.g.
    unsubscriptions) in the same update. ``states``: the events' messages as already
    loaded in this transaction by the caller (loaded here otherwise). ``held``: keep
    the messages' firsts and counts there rather than writing them (recompute), and
    read their states from there."""
    indicators: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(int))
    for delivery_id, delta in (extra or {}).items():
        for name, value in delta.items():
            indicators[delivery_id][name] += value
    if not events and not indicators:
        return
    apply_agents(conn, events)  # browsers, OSes, devices and visitors

    if states is None:
        ids = {e.message_id for e in events if e.message_id is not None}
        states = held.load(conn, ids) if held is not None else store.message_states(conn, ids)
    # message id -> [first_event_at, first_click_at, opens, clicks]
    touched: dict[int, list[Any]] = {}
    domains: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
    persons: dict[tuple[int, str], datetime] = {}
    buckets = _Buckets()

    for e in events:
        buckets.add_event(e)
        counts = indicators[e.delivery_id]
        counter = TYPE_COUNTER.get(e.type)
        if counter:
            counts[counter] += 1
        if e.type == "transaction":
            counts["transactions"] += 1
            counts["amount"] += e.amount or 0.0
            counts["articles"] += e.articles or 0
        if e.type == "click" and e.visitor_id:
            key = (e.delivery_id, e.visitor_id)
            if key not in persons or e.at < persons[key]:
                persons[key] = e.at

        state = states.get(e.message_id) if e.message_id is not None else None
        if state is None or e.type not in OPENING:
            continue
        row = touched.setdefault(state.id, [state.first_event_at, state.first_click_at, 0, 0])
        domain = (state.delivery_id, state.domain)
        if row[0] is None:
            counts["recipient_opens"] += 1
            domains[domain][0] += 1
        if row[0] is None or e.at < row[0]:
            row[0] = e.at
        if e.type == "click":
            if row[1] is None:
                counts["recipient_clicks"] += 1
                domains[domain][1] += 1
            if row[1] is None or e.at < row[1]:
                row[1] = e.at
            row[3] += 1
        elif e.type == "open":
            row[2] += 1

    # Persons: a (delivery, visitor) row on the visitor's first click in the delivery.
    known = store.delivery_person_firsts(conn, persons)
    new_persons: list[dict[str, Any]] = []
    earlier: list[dict[str, Any]] = []
    for (delivery_id, visitor_id), at in sorted(persons.items()):
        if (delivery_id, visitor_id) not in known:
            new_persons.append(
                {"delivery_id": delivery_id, "visitor_id": visitor_id, "first_click_at": at}
            )
            indicators[delivery_id]["person_clicks"] += 1
        elif at < known[(delivery_id, visitor_id)]:
            earlier.append(
                {"delivery_id": delivery_id, "visitor_id": visitor_id, "first_click_at": at}
            )
    store.add_delivery_persons(conn, new_persons)
    store.move_delivery_person_firsts(conn, earlier)
    for p in new_persons:
        buckets.move_first(p["delivery_id"], "person_click", None, p["first_click_at"])
    for p in earlier:
        key = (p["delivery_id"], p["visitor_id"])
        buckets.move_first(p["delivery_id"], "person_click", known[key], p["first_click_at"])
    for mid, r in touched.items():
        state = states[mid]
        buckets.move_first(state.delivery_id, "recipient_open", state.first_event_at, r[0])
        buckets.move_first(state.delivery_id, "recipient_click", state.first_click_at, r[1])
    bucket_store.add_to_buckets(conn, buckets.deltas)

    if held is None:
        _write_messages(conn, touched)
    else:
        held.hold(touched)
        if len(held.states) >= held.limit:
            held.flush(conn)
    store.ensure_indicator_rows(conn, indicators)
    store.add_to_indicators(conn, indicators)
    wanted = {k: (v[0], v[1]) for k, v in domains.items() if v[0] or v[1]}
    store.ensure_domain_rows(conn, wanted)
    store.add_to_domain_stats(conn, wanted)


def _write_messages(conn: Connection, touched: Mapping[int, list[Any]]) -> None:
    store.update_message_aggregates(
        conn,
        [
            {
                "id": mid,
                "first_event_at": r[0],
                "first_click_at": r[1],
                "opens": r[2],
                "clicks": r[3],
            }
            for mid, r in sorted(touched.items())
        ],
    )


class _Buckets:
    """A batch's deltas to the 15-minute buckets (``event_buckets``): events per type
    and tracked URL, and the firsts, where a first that moved earlier leaves its old
    bucket for its new one (so the result does not depend on the events' order)."""

    def __init__(self) -> None:
        self.deltas: dict[tuple[int, str, datetime, int], list[float]] = defaultdict(
            lambda: [0, 0.0, 0]
        )

    def add_event(self, e: CountedEvent) -> None:
        row = self.deltas[
            (e.delivery_id, e.type, bucket_store.bucket_of(e.at), e.tracked_url_id or 0)
        ]
        row[0] += 1
        if e.type == "transaction":
            row[1] += e.amount or 0.0
            row[2] += e.articles or 0

    def move_first(
        self, delivery_id: int, metric: str, old: datetime | None, new: datetime | None
    ) -> None:
        if new is None or new == old:
            return
        if old is not None:
            self.deltas[(delivery_id, metric, bucket_store.bucket_of(old), 0)][0] -= 1
        self.deltas[(delivery_id, metric, bucket_store.bucket_of(new), 0)][0] += 1
