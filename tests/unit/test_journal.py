"""The reports of dropped lines as journal.py reads them from journal entries: journald's own and quilt-monitor's
(monitor/logfile.c), their MESSAGE_ID as systemd.journal.Reader gives it (a uuid.UUID) or as text, and only from
whom they say they are (journald's trusted fields); and the journal reader kept between reads, against a fake
reader. Reading from the real journal is the integration suite's."""
from __future__ import annotations

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
    """What _KeptReader asks of a systemd.journal.Reader: the calls it made, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def fileno(self) -> int:
        self.calls.append("fileno")
        return 3

    def process(self) -> int:
        self.calls.append("process")
        return 0

    def flush_matches(self) -> None:
        self.calls.append("flush_matches")

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture
def kept(monkeypatch: pytest.MonkeyPatch) -> tuple[journal._KeptReader, list[FakeReader], list[float]]:
    opened: list[FakeReader] = []
    now = [100.0]

    def open_reader() -> FakeReader:
        opened.append(FakeReader())
        return opened[-1]

    monkeypatch.setattr(journal, "_open_reader", open_reader)
    readers = journal._KeptReader()
    readers._clock = lambda: now[0]
    return readers, opened, now


def test_a_kept_reader_is_reused_after_processing_its_watch_and_dropping_its_matches(kept: Any) -> None:
    readers, opened, now = kept
    first, at = readers.take()
    assert first.calls == ["fileno"]  # its inotify watch, set up at the open
    readers.give(first, at)
    now[0] += journal._KeptReader.MAX_AGE - 1
    again, _ = readers.take()
    assert again is first and first.calls == ["fileno", "process", "flush_matches"] and len(opened) == 1


def test_a_reader_older_than_the_bound_is_closed_and_opened_afresh(kept: Any) -> None:
    readers, opened, now = kept
    first, at = readers.take()
    readers.give(first, at)
    now[0] += journal._KeptReader.MAX_AGE
    second, _ = readers.take()
    assert second is not first and first.calls[-1] == "close" and len(opened) == 2


def test_a_read_that_finds_the_reader_taken_opens_its_own_and_only_one_is_kept(kept: Any) -> None:
    readers, opened, _ = kept
    (one, at_one), (two, at_two) = readers.take(), readers.take()
    assert one is not two
    readers.give(one, at_one)
    readers.give(two, at_two)
    assert two.calls[-1] == "close" and "close" not in one.calls
    assert readers.take()[0] is one


def test_a_failed_read_closes_its_reader_rather_than_keep_it(kept: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    readers, opened, _ = kept
    monkeypatch.setattr(journal, "_kept", readers)

    def broken(*args: Any) -> list[journal.LogLine]:
        raise OSError("the journal went away")

    monkeypatch.setattr(journal, "_read_lines", broken)
    with pytest.raises(OSError):
        journal.read_lines("quilt-x.scope", 0)
    assert opened[0].calls[-1] == "close" and readers.take()[0] is not opened[0]


def test_an_idle_reader_is_closed_once_old_without_a_read_to_notice(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[FakeReader] = []
    monkeypatch.setattr(journal, "_open_reader", lambda: opened.append(FakeReader()) or opened[-1])
    readers = journal._KeptReader()
    readers.MAX_AGE = 0.05
    reader, at = readers.take()
    busy, busy_at = readers.take()  # taken, not given back: never the closer's
    readers.give(reader, at)
    deadline = time.monotonic() + 5
    while "close" not in reader.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reader.calls[-1] == "close" and "close" not in busy.calls
    assert readers.take()[0] is not reader
