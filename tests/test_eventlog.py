"""The tracking server's event log on its own: segment names, whole lines, rotation,
sealing, group fsync, and what happens when a write fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgtrack.tracking.eventlog import SEGMENT_NAME, EventLog, is_sealed, node_name, sealed_marker
from msgtrack.tracking.events import Event, decode_event, encode_event, encode_hit
from tests.helpers import wait_for


def event(i: int, kind: str = "click") -> Event:
    return Event(
        t=time.time(),
        kind=kind,
        delivery_id=1,
        message_id=i,
        url_id=10,
        visitor_id="v" * 22,
        ip="127.0.0.1",
        user_agent="test",
        values=(str(i),),
    )


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def read_events(directory: Path) -> list[Event]:
    out = []
    for path in segments(directory):
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path.name} ends inside a line"
        out += [decode_event(line) for line in data.splitlines()]
    return out


def test_segment_name_lines_and_seal_on_close(tmp_path: Path) -> None:
    log = EventLog(
        tmp_path / "events", fsync_interval=0.05, max_bytes=1 << 20, max_age=3600, node="web-01"
    )
    assert segments(tmp_path / "events") == []  # no event, no file
    for i in range(5):
        assert log.append(event(i))
    (segment,) = segments(tmp_path / "events")
    match = SEGMENT_NAME.match(segment.name)
    assert match, segment.name
    assert match["node"] == "web_01" and match["run"] == log.run_id and match["seq"] == "000001"
    assert not is_sealed(segment)
    log.close()
    assert sealed_marker(segment).exists() and sealed_marker(segment).read_bytes() == b""
    assert sealed_marker(segment).name == segment.name + ".sealed"
    assert [e.message_id for e in read_events(tmp_path / "events")] == list(range(5))
    assert log.stats["written"] == 5 and log.stats["dropped"] == 0 and log.stats["sealed"] == 1
    # after close nothing more is written, and that is counted
    assert log.append(event(99)) is False
    assert log.stats["dropped"] == 1
    with pytest.raises(OSError):
        log.append_durable(event(100))
    assert len(read_events(tmp_path / "events")) == 5


def test_two_logs_never_share_a_segment(tmp_path: Path) -> None:
    a = EventLog(tmp_path, fsync_interval=0.05, max_bytes=1 << 20, max_age=3600, node="n")
    b = EventLog(tmp_path, fsync_interval=0.05, max_bytes=1 << 20, max_age=3600, node="n")
    a.append(event(1))
    b.append(event(2))
    a.close()
    b.close()
    assert a.run_id != b.run_id
    assert len(segments(tmp_path)) == 2


def test_node_name_is_file_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    assert node_name("a b/c-d") == "a_b_c_d"
    monkeypatch.setenv("MSGTRACK_NODE", "edge-7")
    assert node_name() == "edge_7"


def test_rotation_by_size_seals_finished_segments(tmp_path: Path) -> None:
    log = EventLog(tmp_path, fsync_interval=0.02, max_bytes=600, max_age=3600, node="n")
    for i in range(20):
        assert log.append(event(i))
    names = segments(tmp_path)
    assert len(names) > 2
    assert all(p.stat().st_size <= 600 for p in names)
    # The flusher seals every finished segment, never the one being written.
    assert wait_for(lambda: all(is_sealed(p) for p in names[:-1]))
    assert not is_sealed(names[-1])
    seqs = [int(SEGMENT_NAME.match(p.name)["seq"]) for p in names]  # type: ignore[index]
    assert seqs == list(range(1, len(names) + 1))
    log.close()
    assert all(is_sealed(p) for p in names)
    assert [e.message_id for e in read_events(tmp_path)] == list(range(20))


def test_rotation_by_age_even_when_idle(tmp_path: Path) -> None:
    log = EventLog(tmp_path, fsync_interval=0.02, max_bytes=1 << 20, max_age=0.2, node="n")
    log.append(event(1))
    (first,) = segments(tmp_path)
    # No new event: the flusher still finishes the old segment.
    assert wait_for(lambda: is_sealed(first))
    log.append(event(2))
    assert len(segments(tmp_path)) == 2
    log.close()
    assert [e.message_id for e in read_events(tmp_path)] == [1, 2]


def test_group_fsync_happens_off_the_request_path(tmp_path: Path) -> None:
    log = EventLog(tmp_path, fsync_interval=0.02, max_bytes=1 << 20, max_age=3600, node="n")
    for i in range(10):
        log.append(event(i))
    assert wait_for(lambda: log.stats["fsyncs"] >= 1)
    log.append_durable(event(10, "unsubscribe"))
    log.close()
    assert len(read_events(tmp_path)) == 11


def test_concurrent_appends_stay_whole_lines(tmp_path: Path) -> None:
    log = EventLog(tmp_path, fsync_interval=0.01, max_bytes=20_000, max_age=3600, node="n")

    def work(base: int) -> None:
        for i in range(500):
            if i % 50 == 0:
                log.append_durable(event(base + i))
            else:
                log.append(event(base + i))

    threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    ids = sorted(e.message_id or 0 for e in read_events(tmp_path))
    assert ids == sorted(k * 1000 + i for k in range(4) for i in range(500))
    assert all(is_sealed(p) for p in segments(tmp_path))


FAILING_WRITES = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    from msgtrack.tracking.eventlog import EventLog
    from msgtrack.tracking.events import Event

    # A file size limit makes write() fail like a full disk (EFBIG), also for root.
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
    log = EventLog(Path(sys.argv[1]), fsync_interval=0.02, max_bytes=1 << 20, max_age=3600)
    ok = [log.append(Event(time.time(), "open", 1, i, 12, user_agent="x" * 40)) for i in range(20)]
    try:
        log.append_durable(Event(time.time(), "unsubscribe", 1, 99, 13, source="form"))
        durable = "ok"
    except OSError as exc:
        durable = type(exc).__name__
    log.close()
    print(json.dumps({"ok": ok, "durable": durable, "stats": log.stats}))
    """
)


def run_limited(script: str, directory: Path) -> dict[str, Any]:
    """Run ``script`` in a child process (its file size limit must not stick to us)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"), *sys.path])
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(directory)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_failed_writes_are_counted_and_leave_whole_lines(tmp_path: Path) -> None:
    report = run_limited(FAILING_WRITES, tmp_path)
    ok = report["ok"]
    assert ok[0] is True and ok[-1] is False
    assert ok == sorted(ok, reverse=True)  # once full, every later write fails
    assert report["durable"] != "ok"
    assert report["stats"]["written"] == ok.count(True)
    assert report["stats"]["dropped"] == ok.count(False) + 1
    (segment,) = segments(tmp_path)
    # the line that did not fit was cut off again: only whole lines remain
    events = read_events(tmp_path)
    assert [e.message_id for e in events] == list(range(ok.count(True)))
    assert segment.stat().st_size <= 1000
    assert is_sealed(segment)


FAILING_HELD_WRITES = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    from msgtrack.tracking.eventlog import EventLog
    from msgtrack.tracking.events import Event, encode_event

    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
    log = EventLog(Path(sys.argv[1]), fsync_interval=0.02, max_bytes=1 << 20, max_age=3600)
    lines = [encode_event(Event(time.time(), "open", 1, i, 12, user_agent="x" * 40))
             for i in range(12)]
    dropped = []
    for group in (lines[:3], lines[3:12]):  # the second group does not fit whole
        for line in group:
            log.hold_line(line)
        dropped.append(log.write_held())
    log.hold_line(lines[0])
    dropped.append(log.write_held())  # full: dropped
    log.close()
    print(json.dumps({"sizes": [len(x) for x in lines], "dropped": dropped,
                      "stats": log.stats}))
    """
)


def test_a_held_group_that_does_not_fit_keeps_its_whole_lines(tmp_path: Path) -> None:
    report = run_limited(FAILING_HELD_WRITES, tmp_path)
    fitting = 1000 // report["sizes"][0]  # the lines are all the same size
    assert 3 < fitting < 12
    assert report["dropped"] == [0, 12 - fitting, 1]
    assert report["stats"]["written"] == fitting
    assert report["stats"]["dropped"] == 12 - fitting + 1
    (segment,) = segments(tmp_path)
    assert [e.message_id for e in read_events(tmp_path)] == list(range(fitting))
    assert segment.stat().st_size == fitting * report["sizes"][0]


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.sampled_from(["click", "open", "opt-out", "mirror"]),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.one_of(st.none(), st.text(max_size=30)),
    st.one_of(st.none(), st.text(max_size=40)),
    st.lists(st.text(max_size=10), max_size=3).map(tuple),
)
def test_the_hot_path_line_is_the_line_of_encode_event(
    t: float, kind: str, n: int, visitor: str | None, ua: str | None, values: tuple[str, ...]
) -> None:
    """The tracking server writes ``encode_hit`` lines: byte for byte what
    ``encode_event`` writes for the same event, so ingestion reads them alike."""
    ev = Event(t, kind, n, n // 2, 7, visitor, "::1", ua, values)
    line = encode_hit(t, kind, n, n // 2, 7, visitor, "::1", ua, values)
    assert line == encode_event(ev)
    assert decode_event(line) == Event(round(t, 6), kind, n, n // 2, 7, visitor, "::1", ua, values)
