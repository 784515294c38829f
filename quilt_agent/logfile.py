"""A container's log file (the log drivers k8s-file and journald+file), read back for GetLogs and FollowLogs.

quilt-monitor (monitor/logfile.c), the process that holds the container's output, writes it: ctr.log in the
container's directory, rotated by size into ctr.log.1 (the newest before ctr.log) ... ctr.log.N-1, in Podman's
k8s-file format, one record a line:

    2026-12-06T15:32:19.123456789Z stdout F the line's text

the time in RFC 3339 with nanoseconds; the stream, stdout or stderr, or "dropped" for a record that says how many
lines before it could not be written (a full disk); F for a whole line, P for a piece of a long one (the pieces up
to the next F of the same stream make the line). The agent only reads: the files are the monitor's, and a
restart of the agent loses nothing of them.
"""
from __future__ import annotations

import calendar
import os
import re
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple

from quilt_agent.journal import DROPPED, LogLine

LOG_NAME = "ctr.log"
READ_SIZE = 1 << 20


class Record(NamedTuple):  # not a dataclass: made once a line, 100,000s of times for a big log, and cheaper so
    usec: int
    stream: str
    text: str
    inode: int  # the file's
    end: int  # the offset of the record's end in it

    @property
    def cursor(self) -> str:
        """ "INODE:OFFSET" of the record's end: a follow resumes after it (Tail.seek_cursor)."""
        return f"{self.inode}:{self.end}"


# One record and its newline: the time to the second, its fraction and zone; the stream; the flag; the text. A
# line that does not match (a piece left by a write that failed half-way) is skipped.
_RECORD = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) "
                     rb"(stdout|stderr|dropped) ([FP])(?: ([^\n]*))?\n", re.M)
_seconds: dict[bytes, int] = {}


def _usec(head: bytes, fraction: bytes | None, zone: bytes) -> int:
    """RFC 3339's parts (_RECORD's) to usec since the epoch. The seconds of a head are kept: the records of one
    second share it."""
    seconds = _seconds.get(head)
    if seconds is None:
        seconds = calendar.timegm((int(head[0:4]), int(head[5:7]), int(head[8:10]), int(head[11:13]),
                                   int(head[14:16]), int(head[17:19]), 0, 0, 0))
        if len(_seconds) > 4096:
            _seconds.clear()
        _seconds[head] = seconds
    if zone != b"Z":
        offset = int(zone[1:3]) * 3600 + int(zone[4:6]) * 60
        seconds -= offset if zone[0:1] == b"+" else -offset
    return seconds * 1_000_000 + (int((fraction + b"00000")[:6]) if fraction else 0)


def _parsed(match: re.Match[bytes]) -> tuple[int, str, bool, bytes]:
    head, fraction, zone, stream, flag, text = match.groups()
    return _usec(head, fraction, zone), stream.decode(), flag == b"P", text or b""


def parse(record: bytes) -> tuple[int, str, bool, bytes] | None:
    """A record without its newline: (usec, stream, partial, text), or None when it is not one (a piece left by a
    write that failed half-way)."""
    match = _RECORD.match(record + b"\n")
    if match is None or match.end() != len(record) + 1:
        return None
    try:
        return _parsed(match)
    except ValueError:  # a date that is none, the 31st of February
        return None


def _files(dir_fd: int) -> list[tuple[str, int]]:
    """The log files there now with their inodes, oldest first."""
    rotated: list[tuple[int, str, int]] = []
    current: list[tuple[str, int]] = []
    for entry in os.scandir(dir_fd):
        if entry.name == LOG_NAME:
            current = [(entry.name, entry.inode())]
        elif entry.name.startswith(LOG_NAME + ".") and entry.name[len(LOG_NAME) + 1:].isdigit():
            rotated.append((int(entry.name[len(LOG_NAME) + 1:]), entry.name, entry.inode()))
    return [(name, inode) for _, name, inode in sorted(rotated, reverse=True)] + current


class Tail:
    """A container's log files read in order, from the oldest or from a cursor, as they grow and rotate: records()
    gives what was written since the last call. The file being read stays open, so a rotation (or its removal,
    past max-files) never cuts it: it is read to its end before the next newer one."""

    def __init__(self, directory: str) -> None:
        self._dir = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._fd = -1
        self._inode = 0
        self._offset = 0
        self._buffer = b""
        self._pieces: dict[str, bytes] = {}  # the P records of a line not finished yet, by stream

    def close(self) -> None:
        for fd in (self._fd, self._dir):
            if fd >= 0:
                os.close(fd)
        self._fd = self._dir = -1

    def __enter__(self) -> Tail:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def seek_cursor(self, cursor: str) -> bool:
        """Go on after the record the cursor names; False (and from the oldest) when its file is gone."""
        inode, _, offset = cursor.partition(":")
        if inode.isdigit() and offset.isdigit():
            for name, found in _files(self._dir):
                if found == int(inode) and self._open(name, found):
                    self._offset = int(offset)
                    return True
        return False

    def _open(self, name: str, inode: int) -> bool:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir)
        except FileNotFoundError:
            return False  # rotated away meanwhile: the next listing has it under its new name, or not at all
        if os.fstat(fd).st_ino != inode:
            os.close(fd)
            return False
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._inode, self._offset, self._buffer = fd, inode, 0, b""
        return True

    def _next_file(self) -> bool:
        """Move to the file written after the current one (or to the oldest at the start); False if none is."""
        files = _files(self._dir)
        inodes = [inode for _, inode in files]
        # The current file, gone from the listing, was the oldest of all: every file there is newer.
        later = files[inodes.index(self._inode) + 1:] if self._inode in inodes else files
        return any(self._open(name, inode) for name, inode in later)

    def records(self) -> Iterator[Record]:
        """The records written since the last call, whole lines only (pieces joined)."""
        if self._fd < 0 and not self._next_file():
            return
        while True:
            yield from self._read_to_end()
            if not self._next_file():
                return

    def _read_to_end(self) -> Iterator[Record]:
        while chunk := os.pread(self._fd, READ_SIZE, self._offset + len(self._buffer)):
            data = self._buffer + chunk
            start = 0
            for match in _RECORD.finditer(data):
                start = match.end()
                try:
                    usec, stream, partial, text = _parsed(match)
                except ValueError:
                    continue
                if partial:
                    self._pieces[stream] = self._pieces.get(stream, b"") + text
                    continue
                if stream in self._pieces:
                    text = self._pieces.pop(stream) + text
                yield Record(usec, stream, text.decode("utf-8", "replace"), self._inode, self._offset + start)
            if start == 0 and len(data) > 2 * READ_SIZE:
                # No record in all of it: skip what cannot be one. A record is at most ~16 KiB (the monitor's
                # LOG_LINE_MAX), so only the last 64 KiB can still be the start of one being written.
                start = max(data.rfind(b"\n") + 1, len(data) - (1 << 16))
            self._offset += start
            self._buffer = data[start:]


def read_lines(directory: str, since_usec: int = 0, last: int = 0, until_usec: int = 0,
               dropped: bool = False, most: int = 0) -> list[LogLine]:
    """The lines of the container's log files since since_usec (and up to until_usec, if given); the last `last`
    ones if last > 0; with the "dropped" records if asked (their text: how many lines). Without `last`, at most
    `most` + 1 lines if most > 0: the read stops once there are more than a caller takes. Blocking: call it in a
    worker thread."""
    kept: deque[LogLine] | list[LogLine] = deque(maxlen=last) if last else []
    try:
        tail = Tail(directory)
    except FileNotFoundError:
        return []
    with tail:
        for record in tail.records():
            if record.usec < since_usec or (until_usec and record.usec > until_usec):
                continue
            if record.stream == DROPPED and not dropped:
                continue
            kept.append(LogLine(record.usec, record.stream, record.text))
            if most and not last and len(kept) > most:
                break
    return list(kept)
