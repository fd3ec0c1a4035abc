"""Analysis: from the target (every recipient, for now) to one message per recipient to
deliver, with the exclusions counted by cause and kept on the delivery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from msgtrack.storage import deliveries as store
from msgtrack.storage import send_stats
from msgtrack.storage.types import utcnow

if TYPE_CHECKING:
    from collections.abc import Mapping

    from msgtrack.context import Context

# Exclusion cause (storage) -> the delivery column that counts it.
CAUSE_COLUMNS = {
    "quarantine": "rejected_quarantined",
    "denylist": "rejected_denylisted",
    "opt-out": "rejected_opted_out",
}


@dataclass(frozen=True)
class AnalysisResult:
    delivery_id: int
    state: str
    initial_population: int
    rejected_quarantined: int
    rejected_denylisted: int
    rejected_opted_out: int
    rejected_invalid: int
    rejected_duplicate: int
    to_deliver: int
    text_only: int

    @property
    def rejected(self) -> int:
        return (
            self.rejected_quarantined
            + self.rejected_denylisted
            + self.rejected_opted_out
            + self.rejected_invalid
            + self.rejected_duplicate
        )

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "rejected": self.rejected}


def _result(row: Mapping[Any, Any], text_only: int) -> AnalysisResult:
    return AnalysisResult(
        delivery_id=int(row["id"]),
        state=row["state"],
        initial_population=int(row["initial_population"]),
        rejected_quarantined=int(row["rejected_quarantined"]),
        rejected_denylisted=int(row["rejected_denylisted"]),
        rejected_opted_out=int(row["rejected_opted_out"]),
        rejected_invalid=int(row["rejected_invalid"]),
        rejected_duplicate=int(row["rejected_duplicate"]),
        to_deliver=int(row["to_deliver"]),
        text_only=text_only,
    )


def prepare_delivery(ctx: Context, delivery_id: int) -> AnalysisResult:
    """Analyse a draft delivery and create its messages ('draft' -> 'prepared').

    For a delivery past 'draft' (or prepared concurrently by another run) nothing
    changes and the stored result is returned. Raises ``LookupError`` for an unknown
    delivery.
    """
    now = utcnow()
    with ctx.engine.begin() as conn:
        delivery = store.get_delivery(conn, delivery_id)
        if delivery is None:
            raise LookupError(f"no delivery {delivery_id}")
        if delivery["state"] == "draft" and store.claim_preparation(conn, delivery_id, now):
            has_html = bool(delivery["html_template"] or delivery["html"])
            to_deliver = store.create_messages(conn, delivery_id, has_html=has_html, now=now)
            by_cause = store.exclusion_counts(conn, now)
            counts = {column: by_cause.get(cause, 0) for cause, column in CAUSE_COLUMNS.items()}
            counts["initial_population"] = to_deliver + sum(counts.values())
            counts["to_deliver"] = to_deliver
            text_only = store.count_text_only(conn, delivery_id)
            store.record_analysis(conn, delivery_id, counts, text_only)
            send_stats.record_processed(conn, delivery_id)
    with ctx.engine.connect() as conn:
        row = store.get_delivery(conn, delivery_id)
        assert row is not None
        return _result(row, store.stored_text_only(conn, delivery_id))
