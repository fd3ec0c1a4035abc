"""The recipient tracking tab: one entry per click, newest first, with the URL reached."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete

from factories import T0, add_delivery, add_message, add_recipient, ev, write_segment
from msgtrack.context import Context
from msgtrack.ingest.loader import ingest_once
from msgtrack.reports.recipients import recipient_tracking
from msgtrack.storage.schema import deliveries


def test_clicks_of_a_recipient_newest_first(ctx: Context) -> None:
    with ctx.engine.begin() as conn:
        spring = add_delivery(
            conn,
            "Spring",
            links=[
                (
                    "https://shop.example/p/{{ recipient.id }}?n={{ recipient.first_name }}",
                    "Product",
                ),
                ("https://example.org/news", "News"),
            ],
        )
        summer = add_delivery(conn, "Summer", links=[("https://example.org/summer", "Summer sale")])
        gone = add_delivery(conn, "Deleted", links=[("https://example.org/old", "Old")])
        ann = add_recipient(conn, "Ann.Lee@Example.ORG", first_name="Ann Marie")
        bob = add_recipient(conn, "bob@example.org")
        add_recipient(conn, "never@example.org")
        a1 = add_message(conn, spring.id, ann, "Ann.Lee@Example.ORG")
        a2 = add_message(conn, summer.id, ann, "Ann.Lee@Example.ORG")
        a3 = add_message(conn, gone.id, ann, "Ann.Lee@Example.ORG")
        b1 = add_message(conn, spring.id, bob, "bob@example.org")
    write_segment(
        ctx.settings.events_dir,
        "n1-aaaa-000001.log",
        [
            ev(
                "click",
                spring,
                a1,
                T0 + 10,
                url_id=spring.links[0],
                values=(str(ann), "Ann Marie/é"),
            ),
            ev("open", spring, a1, T0 + 5),
            ev("opt-out", spring, a1, T0 + 30),
            ev("mirror", spring, a1, T0 + 31),
            ev("click", summer, a2, T0 + 20.25, url_id=summer.links[0]),
            ev("click", spring, a1, T0 + 40, url_id=spring.links[1]),
            ev("click", gone, a3, T0 + 50, url_id=gone.links[0]),
            ev("click", spring, b1, T0 + 60, url_id=spring.links[1]),  # someone else
            ev("unsubscribe", spring, a1, T0 + 70),
        ],
        sealed=True,
    )
    ingest_once(ctx)
    with ctx.engine.begin() as conn:
        conn.execute(delete(deliveries).where(deliveries.c.id == gone.id))

    def at(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat()

    expected = [
        {
            "url": "https://example.org/news",
            "label": "News",
            "clicked_at": at(T0 + 40),
            "delivery_id": spring.id,
            "delivery_name": "Spring",
        },
        {
            "url": "https://example.org/summer",
            "label": "Summer sale",
            "clicked_at": at(T0 + 20.25),
            "delivery_id": summer.id,
            "delivery_name": "Summer",
        },
        {
            "url": f"https://shop.example/p/{ann}?n=Ann%20Marie%2F%C3%A9",
            "label": "Product",
            "clicked_at": at(T0 + 10),
            "delivery_id": spring.id,
            "delivery_name": "Spring",
        },
    ]
    assert recipient_tracking(ctx.engine, "ann.lee@example.org") == expected
    assert recipient_tracking(ctx.engine, "ANN.LEE@EXAMPLE.ORG") == expected
    assert expected[1]["clicked_at"] == "2024-03-01T09:00:20.250000+00:00"
    assert recipient_tracking(ctx.engine, "never@example.org") == []
    assert recipient_tracking(ctx.engine, "nobody@example.org") is None
    with ctx.engine.connect() as conn:
        assert recipient_tracking(conn, "bob@example.org") == [
            {
                "url": "https://example.org/news",
                "label": "News",
                "clicked_at": at(T0 + 60),
                "delivery_id": spring.id,
                "delivery_name": "Spring",
            }
        ]


def test_a_heavy_clicker_pages_with_a_keyset(ctx: Context) -> None:
    """250 clicks (some at the same second): the profile shows 100 at a time, newest
    first, every click once; the CSV export has them all, in the same order."""
    import csv
    import io

    from fastapi.testclient import TestClient

    from msgtrack.storage.auth import create_api_token
    from msgtrack.web.app import create_app

    with ctx.engine.begin() as conn:
        d = add_delivery(conn, "Busy", links=[("https://example.org/a", "A")])
        rid = add_recipient(conn, "busy@example.org")
        mid = add_message(conn, d.id, rid, "busy@example.org")
        token = create_api_token(conn)
    events = [ev("click", d, mid, T0 + i // 2, url_id=d.links[0], visitor="v") for i in range(250)]
    events.append(ev("open", d, mid, T0 + 500))  # not a click
    write_segment(ctx.settings.events_dir, "n1-busy-000001.log", events, sealed=True)
    ingest_once(ctx)
    everything = recipient_tracking(ctx.engine, "busy@example.org")
    assert everything is not None and len(everything) == 250
    client = TestClient(create_app(ctx))
    api = {"Authorization": f"Bearer {token}"}
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"clicks_before": cursor} if cursor else {}
        answer = client.get("/api/recipients/busy@example.org", params=params, headers=api)
        assert answer.status_code == 200
        data = answer.json()
        seen += [c["clicked_at"] for c in data["clicks"]]
        pages += 1
        cursor = data["clicks_next"]
        if cursor is None:
            break
    assert pages == 3 and seen == [c["clicked_at"] for c in everything]
    assert seen == sorted(seen, reverse=True)
    exported = client.get("/api/recipients/busy@example.org?format=csv", headers=api)
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["clicked_at"] for r in rows] == seen
    bad = client.get("/api/recipients/busy@example.org?clicks_before=nope", headers=api)
    assert bad.status_code == 400
