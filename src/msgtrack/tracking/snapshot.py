"""Tracked URLs published for the tracking server, so it answers without the database.

When a delivery is sent, its tracked URLs are written to
``MSGTRACK_HOME/urls/{delivery_id}.json`` (atomically: temp file, fsync, rename). The
tracking server reads that file the first time a token names the delivery, and falls
back to the database only when no snapshot exists.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PublishedUrl:
    id: int
    delivery_id: int
    type: str  # click, open, opt-out, mirror
    url: str  # as written; may hold {{ expressions }} (see links.personalize)
    label: str
    tracked: bool


def snapshot_path(snapshots_dir: Path, delivery_id: int) -> Path:
    return snapshots_dir / f"{int(delivery_id)}.json"


def publish(snapshots_dir: Path, delivery_id: int, urls: list[PublishedUrl]) -> Path:
    snapshots_dir.mkdir(parents=True, exist_ok=True)
    path = snapshot_path(snapshots_dir, delivery_id)
    data: dict[str, Any] = {
        "delivery_id": delivery_id,
        "urls": [
            {"id": u.id, "type": u.type, "url": u.url, "label": u.label, "tracked": u.tracked}
            for u in urls
        ],
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(snapshots_dir: Path, delivery_id: int) -> list[PublishedUrl] | None:
    """The published URLs of a delivery, or None when it was never published."""
    path = snapshot_path(snapshots_dir, delivery_id)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return [
        PublishedUrl(
            int(u["id"]), delivery_id, u["type"], u["url"], u.get("label", ""), bool(u["tracked"])
        )
        for u in data["urls"]
    ]
