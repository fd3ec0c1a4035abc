"""Look-ups of (delivery, visitor) pairs, one delivery at a time.

Tables keyed by (delivery_id, visitor_id) are searched with ``delivery_id = d AND
visitor_id IN (...)``: the primary key serves that, while ``visitor_id IN (...)`` alone
scans every delivery's rows, so ingestion would slow down as visitors pile up.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator


def per_delivery(pairs: Iterable[tuple[int, str]], size: int) -> Iterator[tuple[int, list[str]]]:
    """(delivery id, up to ``size`` of its visitor ids), deliveries and ids in order."""
    by_delivery: dict[int, set[str]] = defaultdict(set)
    for delivery_id, visitor_id in pairs:
        by_delivery[delivery_id].add(visitor_id)
    for delivery_id in sorted(by_delivery):
        ids = sorted(by_delivery[delivery_id])
        for i in range(0, len(ids), size):
            yield delivery_id, ids[i : i + size]
