"""The reports of dropped lines as journal.py reads them from journal entries: journald's own and quilt-monitor's
(monitor/logfile.c), their MESSAGE_ID as systemd.journal.Reader gives it (a uuid.UUID) or as text, and only from
whom they say they are (journald's trusted fields); and the journal reader kept between reads, against a fake
reader. Reading from the real journal is the integration suite's."""
from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from quilt_agent import journal
from quilt_agent.journal import (
    DROPPED_MESSAGE_ID, JOURNALD, LOG_DROPPED_ID, LOG_FAILED_ID, LOG_FILE, MAX_DROPPED, Drop, _drop,
)

JOURNALD_SENT = {"_TRANSPORT": "driver"}
MONITOR_SENT = {"_UID": 0, "_COMM": "quilt-mon web", "_TRANSPORT": "journal"}


def test_journalds_report_names_the_unit_and_the_count() -> None:
    entry = {"MESSAGE_ID": uuid.UUID(DROPPED_MESSAGE_ID), "__REALTIME_TIMESTAMP": 5, "N_DROPPED": "42",
             "OBJECT_SYSTEMD_UNIT": "quilt-web.scope", **JOURNALD_SENT}
    assert _drop(entry) == Drop(5, "quilt-web.scope", 42, JOURNALD)


def test_the_monitors_failed_write_is_a_gap_begun_with_its_reason() -> None:
    entry = {"MESSAGE_ID": LOG_FAILED_ID, "__REALTIME_TIMESTAMP": 7, "N_DROPPED": "0", "QUILT_CONTAINER": "web",
             "MESSAGE": "cannot write ctr.log (No space left on device): dropping lines", **MONITOR_SENT}
    assert _drop(entry) == Drop(7, "", 0, LOG_FILE, "cannot write ctr.log (No space left on device): dropping lines",
                                container="web")


def test_the_monitors_count_is_lines_lost_from_the_containers_file() -> None:
    entry = {"MESSAGE_ID": uuid.UUID(LOG_DROPPED_ID), "__REALTIME_TIMESTAMP": 9, "N_DROPPED": "1200",
             "QUILT_CONTAINER": "web", **MONITOR_SENT}
    assert _drop(entry) == Drop(9, "", 1200, LOG_FILE, container="web")


@pytest.mark.parametrize("entry", [
    # anybody may send journald an entry with these ids: only the trusted fields say who did
    {"MESSAGE_ID": DROPPED_MESSAGE_ID, "OBJECT_SYSTEMD_UNIT": "quilt-web.scope", "N_DROPPED": "3",
     "_TRANSPORT": "journal"},
    {"MESSAGE_ID": LOG_DROPPED_ID, "QUILT_CONTAINER": "web", "N_DROPPED": "3", "_UID": 1000, "_COMM": "quilt-mon web"},
    {"MESSAGE_ID": LOG_DROPPED_ID, "QUILT_CONTAINER": "web", "N_DROPPED": "3", "_UID": 0, "_COMM": "bash"},
    # what is not a report
    {"MESSAGE_ID": DROPPED_MESSAGE_ID, "N_DROPPED": "3", **JOURNALD_SENT},
    {"MESSAGE_ID": DROPPED_MESSAGE_ID, "OBJECT_SYSTEMD_UNIT": "quilt-web.scope", "N_DROPPED": "x", **JOURNALD_SENT},
    {"MESSAGE_ID": DROPPED_MESSAGE_ID, "OBJECT_SYSTEMD_UNIT": "quilt-web.scope", "N_DROPPED": str(MAX_DROPPED),
     **JOURNALD_SENT},
    {"MESSAGE_ID": LOG_DROPPED_ID, "N_DROPPED": "3", **MONITOR_SENT},
    {"MESSAGE_ID": LOG_DROPPED_ID, "QUILT_CONTAINER": "web", "N_DROPPED": "0", **MONITOR_SENT},
    {"MESSAGE_ID": LOG_FAILED_ID, "QUILT_CONTAINER": "web", "N_DROPPED": "-1", **MONITOR_SENT},
])
def test_entries_from_others_or_without_a_container_or_count_are_no_reports(entry: dict) -> None:
    assert _drop({"__REALTIME_TIMESTAMP": 1, **entry}) is None


class FakeReader:
    """What the kept reader's thread asks of a systemd.journal.Reader: the calls made, with the thread of each."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail = fail

    def _note(self, call: str) -> None:
        self.calls.append((call, threading.get_ident()))
        if call == self.fail:
            raise OSError(f"{call} failed")

    def names(self) -> list[str]:
        return [call for call, _ in self.calls]

    def threads(self) -> set[int]:
        return {thread for _, thread in self.calls}

    def fileno(self) -> int:
        self._note("fileno")
        return 3

    def process(self) -> int:
        self._note("process")
        return 0

    def flush_matches(self) -> None:
        self._note("flush_matches")

    def close(self) -> None:
        self._note("close")


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[FakeReader]:
    """Every reader opened, in order; FAIL_NEXT[0], when set, is the call the next one fails."""
    made: list[FakeReader] = []
    FAIL_NEXT.clear()

    def open_reader() -> FakeReader:
        made.append(FakeReader(FAIL_NEXT.pop() if FAIL_NEXT else ""))
        return made[-1]

    monkeypatch.setattr(journal, "_open_reader", open_reader)
    return made


FAIL_NEXT: list[str] = []


def closed(reader: FakeReader, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while "close" not in reader.names() and time.monotonic() < deadline:
        time.sleep(0.005)
    return "close" in reader.names()


def test_the_kept_reader_is_reused_by_its_own_thread_after_its_watch_is_processed(opened: list[FakeReader]) -> None:
    reads = journal._ReaderThread()
    used = [reads.read(lambda reader: reader), reads.read(lambda reader: reader)]
    assert used == [opened[0], opened[0]] and len(opened) == 1
    assert opened[0].names() == ["fileno", "process", "flush_matches"]  # its watch set up at the open
    assert opened[0].threads() == {reads._thread.ident} != {threading.get_ident()}


def test_a_reader_older_than_the_bound_is_closed_by_the_read_that_finds_it_so(opened: list[FakeReader]) -> None:
    reads = journal._ReaderThread()
    now = [100.0]
    reads._clock = lambda: now[0]
    reads.read(lambda reader: None)
    now[0] += journal._ReaderThread.MAX_AGE
    assert reads.read(lambda reader: reader) is opened[1]
    assert opened[0].names()[-1] == "close" and opened[0].threads() == opened[1].threads()


def test_an_idle_reader_is_closed_once_old_without_a_read_to_notice(opened: list[FakeReader]) -> None:
    reads = journal._ReaderThread()
    reads.MAX_AGE = 0.05
    reads.read(lambda reader: None)
    assert closed(opened[0]) and opened[0].threads() == {reads._thread.ident}
    assert reads.read(lambda reader: reader) is opened[1]


def test_a_read_that_finds_the_thread_busy_uses_a_reader_of_its_own_in_its_own_thread(
        opened: list[FakeReader]) -> None:
    reads = journal._ReaderThread()
    inside, release = threading.Event(), threading.Event()
    first = threading.Thread(target=reads.read, args=(lambda reader: (inside.set(), release.wait(5)),))
    first.start()
    assert inside.wait(5)
    try:
        own = reads.read(lambda reader: reader)
    finally:
        release.set()
        first.join(5)
    assert own is opened[1] and own.names() == ["close"] and own.threads() == {threading.get_ident()}
    assert "close" not in opened[0].names()


def test_a_reader_whose_watch_fails_is_not_kept_and_the_read_still_answers(opened: list[FakeReader]) -> None:
    reads = journal._ReaderThread()
    FAIL_NEXT.append("fileno")  # no inotify instance left, say
    assert reads.read(lambda reader: "lines") == "lines"
    assert opened[0].names() == ["fileno", "close"] and opened[1].names() == ["close"]
    assert reads.read(lambda reader: reader) is opened[2]  # the next read tries to keep one again


def test_a_failed_read_reaches_its_caller_and_its_reader_is_not_kept(opened: list[FakeReader]) -> None:
    reads = journal._ReaderThread()

    def broken(reader: FakeReader) -> None:
        raise OSError("the journal went away")

    with pytest.raises(OSError, match="went away"):
        reads.read(broken)
    assert opened[0].names()[-1] == "close"
    assert reads.read(lambda reader: reader) is opened[1]
