"""Helpers shared by the benchmarks: a throwaway home on SQLite or PostgreSQL."""

from __future__ import annotations

import csv
import os
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from msgtrack.config import load_settings
from msgtrack.context import Context
from msgtrack.setup import ensure_ready

PG_ADMIN_URL = os.environ.get("MSGTRACK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
DOMAINS = [
    "gmail.com",
    "yahoo.com",
    "hotmail.com",
    "orange.fr",
    "example.com",
    "outlook.com",
    "gmx.de",
]


@contextmanager
def bench_context(backend: str) -> Iterator[Context]:
    """A fresh home (and a fresh PostgreSQL database when asked), removed afterwards."""
    import psycopg

    with tempfile.TemporaryDirectory(prefix="msgtrack-bench-") as tmp:
        home = Path(tmp) / "home"
        db_name = None
        if backend == "postgresql":
            db_name = f"msgtrack_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{db_name}"')
            os.environ["MSGTRACK_DB"] = PG_ADMIN_URL.rpartition("/")[0] + f"/{db_name}"
        else:
            os.environ.pop("MSGTRACK_DB", None)
        ctx = Context(load_settings(home))
        ensure_ready(ctx)
        try:
            yield ctx
        finally:
            ctx.close()
            if db_name:
                with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def write_recipients_csv(path: Path, count: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "first_name", "last_name", "email_format", "customer_id", "city"])
        for i in range(count):
            w.writerow(
                [
                    f"user{i}@{rng.choice(DOMAINS)}",
                    rng.choice(["Ann", "Bruno", "Chloé", "Dmitri", "Eve", "Farid"]),
                    rng.choice(["Martin", "Bernard", "Dubois", "Müller", "Smith"]),
                    "text" if rng.random() < 0.05 else "html",
                    f"C{i:07d}",
                    rng.choice(["Paris", "Lyon", "Berlin", "Madrid"]),
                ]
            )


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
