"""The tracking server's crash rules, on a real server process:

- killed with SIGKILL in the middle of a burst, it has logged every request it
  answered, exactly once (each event is written before its answer);
- when the log cannot be written, clicks and opens are still answered (and counted as
  dropped) but an unsubscription is never acknowledged: 503.

The server answers from the published snapshot alone, so these tests need no database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from msgtrack.config import load_settings
from msgtrack.links.sign import KeyRing, LinkToken
from msgtrack.tracking import snapshot
from msgtrack.tracking.events import Event
from tests.helpers import free_port, logged_events, serving

DELIVERY = 1
CLICK, OPEN, OPT_OUT = 10, 12, 13


def make_home(tmp_path: Path) -> tuple[dict[str, str], KeyRing]:
    """A home with signing keys and one published delivery; env for the server."""
    home = tmp_path / "home"
    settings = load_settings(home)
    keyring = KeyRing.generate()
    keyring.save(settings.keys_file)
    snapshot.publish(
        settings.snapshots_dir,
        DELIVERY,
        [
            snapshot.PublishedUrl(
                CLICK, DELIVERY, "click", "https://shop.example/item/{{ recipient.id }}", "", True
            ),
            snapshot.PublishedUrl(OPEN, DELIVERY, "open", "", "", True),
            snapshot.PublishedUrl(OPT_OUT, DELIVERY, "opt-out", "", "", True),
        ],
    )
    env = dict(os.environ)
    env.update(
        MSGTRACK_HOME=str(home),
        MSGTRACK_DB=f"sqlite:///{tmp_path / 'unused.db'}",
        MSGTRACK_FSYNC_INTERVAL="0.05",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"), *sys.path]),
    )
    return env, keyring


# Runs the server module with a file size limit: write() then fails with EFBIG, as on a
# full disk, even for root (Python ignores SIGXFSZ).
LIMITED = (
    "import resource, runpy, sys; "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1]))); "
    "sys.argv = ['server'] + sys.argv[2:]; "
    "runpy.run_module('msgtrack.tracking.server', run_name='__main__')"
)


@contextmanager
def tracking_server(
    env: dict[str, str], *, file_size_limit: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    args = ["--host", "127.0.0.1", "--port", str(port)]
    if file_size_limit is None:
        command = [sys.executable, "-m", "msgtrack.tracking.server", *args]
    else:
        command = [sys.executable, "-c", LIMITED, str(file_size_limit), *args]
    with serving(command, env, port) as proc:
        yield proc, f"http://127.0.0.1:{port}"


def logged(env: dict[str, str]) -> list[Event]:
    return logged_events(Path(env["MSGTRACK_HOME"]))


def test_sigkill_loses_nothing_that_was_answered(tmp_path: Path) -> None:
    env, keyring = make_home(tmp_path)
    total, kill_after, workers = 300, 150, 4
    answered: set[int] = set()
    lock = threading.Lock()

    def sign(url_id: int, i: int, values: tuple[str, ...] = ()) -> str:
        return keyring.sign_link(LinkToken(DELIVERY, i, url_id, values))

    with tracking_server(env) as (proc, base):

        def fire(ids: list[int]) -> None:
            # Message id i names request i, so the log says which requests it holds.
            with httpx.Client(base_url=base, timeout=10) as client:
                for i in ids:
                    try:
                        if i % 3 == 0:
                            response = client.get(f"/o/{sign(OPEN, i)}")
                            expected = 200
                        elif i % 3 == 1:
                            response = client.get(f"/c/{sign(CLICK, i, (str(i),))}")
                            expected = 302
                        else:
                            response = client.post(
                                f"/u/{sign(OPT_OUT, i)}", data={"List-Unsubscribe": "One-Click"}
                            )
                            expected = 200
                    except httpx.TransportError:
                        return  # the server is gone
                    assert response.status_code == expected, (i, response.status_code)
                    with lock:
                        answered.add(i)
                        if len(answered) == kill_after:
                            os.kill(proc.pid, signal.SIGKILL)

        threads = [
            threading.Thread(target=fire, args=(list(range(k, total, workers)),))
            for k in range(workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert proc.wait(timeout=30) == -signal.SIGKILL

    assert kill_after <= len(answered) < total
    events = logged(env)
    counts = Counter(e.message_id for e in events)
    missing = sorted(i for i in answered if counts[i] == 0)
    assert not missing, f"answered but not logged: {missing}"
    assert max(counts.values()) == 1, "an event was logged twice"
    for e in events:
        assert e.message_id is not None
        kind = ("open", "click", "unsubscribe")[e.message_id % 3]
        assert e.kind == kind
        if kind == "click":
            assert e.values == (str(e.message_id),)
    # killed, not closed: nothing is sealed
    assert not list((Path(env["MSGTRACK_HOME"]) / "events").glob("*.sealed"))


def test_unwritable_log_still_redirects_but_never_acknowledges_unsubscription(
    tmp_path: Path,
) -> None:
    env, keyring = make_home(tmp_path)
    beacon = keyring.sign_link(LinkToken(DELIVERY, 1, OPEN))
    click = keyring.sign_link(LinkToken(DELIVERY, 1, CLICK, ("42",)))
    opt_out = f"/u/{keyring.sign_link(LinkToken(DELIVERY, 1, OPT_OUT))}"
    with (
        tracking_server(env, file_size_limit=2048) as (proc, base),
        httpx.Client(base_url=base) as client,
    ):
        for _ in range(100):  # fill the segment up to the limit
            response = client.get(f"/o/{beacon}")
            assert response.status_code == 200 and response.headers["content-type"] == "image/gif"
            if client.get("/health").json()["events_dropped"]:
                break
        stats = client.get("/health").json()
        assert stats["events_dropped"] == 1 and stats["events_written"] > 0
        # the person still gets where they were going, and the beacon still loads
        response = client.get(f"/c/{click}")
        assert (
            response.status_code == 302
            and response.headers["location"] == "https://shop.example/item/42"
        )
        assert client.get(f"/o/{beacon}").status_code == 200
        # but an unsubscription that is not on disk is not acknowledged
        one_click = client.post(opt_out, data={"List-Unsubscribe": "One-Click"})
        assert one_click.status_code == 503
        assert "set-cookie" not in one_click.headers and "location" not in one_click.headers
        form = client.post(opt_out, data={"confirm": "yes"})
        assert form.status_code == 503 and "unsubscribed" not in form.text.lower()
        final = client.get("/health").json()
        # the click and both unsubscriptions are longer than the open that did not fit
        assert final["events_dropped"] >= 1 + 1 + 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    events = logged(env)
    assert len(events) == final["events_written"]
    assert {e.kind for e in events} == {"open"}


def test_restarted_server_never_reuses_a_segment(tmp_path: Path) -> None:
    env, keyring = make_home(tmp_path)
    beacon = keyring.sign_link(LinkToken(DELIVERY, 1, OPEN))
    for _ in range(2):
        with tracking_server(env) as (proc, base):
            assert httpx.get(f"{base}/o/{beacon}").status_code == 200
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    segments = sorted((Path(env["MSGTRACK_HOME"]) / "events").glob("*.log"))
    assert len(segments) == 2
    assert [len(p.read_bytes().splitlines()) for p in segments] == [1, 1]
    assert {e.kind for e in logged(env)} == {"open"}
