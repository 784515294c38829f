"""Reading a container's log file back (quilt_agent/logfile.py): the k8s-file records quilt-monitor writes, in
order across its rotations, with long lines joined from their pieces and a follow resumed at a cursor. The files
are written here as the monitor writes them; tests/host/test_quilt_monitor.py has the monitor write real ones."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from quilt_agent.journal import LogLine
from quilt_agent.logfile import Tail, parse, read_lines

BASE = 1_765_000_000  # seconds since the epoch: 2025-12-06T05:46:40Z


def record(second: int, stream: str, text: str, flag: str = "F", nanos: int = 0) -> str:
    import time

    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(BASE + second))
    return f"{stamp}.{nanos:09d}Z {stream} {flag} {text}\n"


def usec(second: int, nanos: int = 0) -> int:
    return (BASE + second) * 1_000_000 + nanos // 1000


def test_a_record_is_parsed_with_its_time_to_the_microsecond() -> None:
    assert parse(record(1, "stderr", "boom", nanos=123456789).encode()[:-1]) == (
        usec(1, 123456789), "stderr", False, b"boom")
    assert parse(b"2025-12-06T05:46:41+01:00 stdout P half")[:3] == (usec(1 - 3600), "stdout", True)
    assert parse(b"2025-12-06T05:46:41.5Z stdout F ")[3] == b""


@pytest.mark.parametrize("text", [b"", b"garbage", b"2025-12-06T05:46:41Z stdin F x", b"2025-12-06T05:46:41Z stdout X x",
                                  b"2025-13-45T05:46:41Z stdout F x", b"2025-12-06T05:46:41Q stdout F x",
                                  b"2025-12-06T05:46:41.123Z"])
def test_what_is_not_a_record_is_none(text: bytes) -> None:
    assert parse(text) is None


def test_the_rotated_files_are_read_oldest_first_and_pieces_make_one_line(tmp_path: Path) -> None:
    (tmp_path / "ctr.log.2").write_text(record(0, "stdout", "one") + record(1, "stdout", "tw", "P"))
    (tmp_path / "ctr.log.1").write_text(record(1, "stderr", "err") + record(2, "stdout", "o", "P")
                                        + "2025-12-06T05:46:42.000000000Z stdo")  # cut by a failed write
    (tmp_path / "ctr.log").write_text("ut F cut\n" + record(2, "stdout", "") + record(3, "dropped", "7")
                                      + record(4, "stdout", "last"))
    (tmp_path / "ctr.log.x").write_text(record(9, "stdout", "not a rotation"))
    assert read_lines(str(tmp_path), dropped=True) == [
        LogLine(usec(0), "stdout", "one"), LogLine(usec(1), "stderr", "err"), LogLine(usec(2), "stdout", "two"),
        LogLine(usec(3), "dropped", "7"), LogLine(usec(4), "stdout", "last")]
    assert read_lines(str(tmp_path), since_usec=usec(2), last=2) == [
        LogLine(usec(2), "stdout", "two"), LogLine(usec(4), "stdout", "last")]
    assert read_lines(str(tmp_path), until_usec=usec(1)) == [
        LogLine(usec(0), "stdout", "one"), LogLine(usec(1), "stderr", "err")]


def test_no_log_file_yet_is_no_lines(tmp_path: Path) -> None:
    assert read_lines(str(tmp_path)) == []
    assert read_lines(str(tmp_path / "gone")) == []


def test_a_tail_reads_what_is_added_and_goes_on_through_a_rotation(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    log.write_text(record(0, "stdout", "a"))
    with Tail(str(tmp_path)) as tail:
        assert [r.text for r in tail.records()] == ["a"]
        assert list(tail.records()) == []
        with log.open("a") as f:
            f.write(record(1, "stdout", "b") + record(2, "stdout", "half"))  # no newline yet for the second
        os.truncate(log, log.stat().st_size - 1)
        assert [r.text for r in tail.records()] == ["b"]
        with log.open("a") as f:
            f.write("\n" + record(3, "stdout", "c"))
        os.rename(log, tmp_path / "ctr.log.1")  # the monitor's rotation, then its new file
        log.write_text(record(4, "stderr", "d"))
        assert [r.text for r in tail.records()] == ["half", "c", "d"]


def test_a_tail_reads_a_file_rotated_away_to_its_end(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    log.write_text(record(0, "stdout", "a"))
    with Tail(str(tmp_path)) as tail:
        assert [r.text for r in tail.records()] == ["a"]
        with log.open("a") as f:
            f.write(record(1, "stdout", "b"))
        log.unlink()  # max-files 1: the full file goes
        log.write_text(record(2, "stdout", "c"))
        assert [r.text for r in tail.records()] == ["b", "c"]


def test_a_cursor_resumes_after_its_record_even_once_rotated(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    log.write_text(record(0, "stdout", "a") + record(1, "stdout", "b"))
    with Tail(str(tmp_path)) as tail:
        cursor = next(iter(tail.records())).cursor
    with log.open("a") as f:
        f.write(record(2, "stdout", "c"))
    os.rename(log, tmp_path / "ctr.log.1")
    log.write_text(record(3, "stdout", "d"))
    with Tail(str(tmp_path)) as tail:
        assert tail.seek_cursor(cursor)
        assert [r.text for r in tail.records()] == ["b", "c", "d"]
    with Tail(str(tmp_path)) as tail:
        assert not tail.seek_cursor("1:0")  # its file is gone: from the oldest
        assert not tail.seek_cursor("nonsense")
        assert [r.text for r in tail.records()] == ["a", "b", "c", "d"]


def test_a_symlink_in_place_of_the_directory_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "ctr.log").write_text(record(0, "stdout", "a"))
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OSError):
        Tail(str(tmp_path / "link"))


def test_a_symlinked_log_file_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text(record(0, "stdout", "secret"))
    (tmp_path / "ctr.log").symlink_to(tmp_path / "elsewhere")
    with Tail(str(tmp_path)) as tail, pytest.raises(OSError):
        list(tail.records())


def test_a_read_with_a_most_stops_once_past_it_but_the_last_lines_are_read_to_the_end(tmp_path: Path) -> None:
    (tmp_path / "ctr.log").write_text("".join(record(i, "stdout", str(i)) for i in range(10)))
    assert [line.text for line in read_lines(str(tmp_path), most=3)] == ["0", "1", "2", "3"]
    assert [line.text for line in read_lines(str(tmp_path), last=2, most=3)] == ["8", "9"]
