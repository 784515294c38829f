"""Following a container's log: FollowLogs and `quiltctl logs -f`.

Each follower is a thread of its own (never one of asyncio's worker threads: a follow lasts as long as the
container) that reads the journal, filtered on the container's scope, and writes one JSON object per line to
a pipe whose read end the caller got: {"usec": realtime usec, "stream": "stdout"|"stderr", "text": line,
"cursor": the entry's journal cursor}. The pipe is closed, after the last line, when the container ends, when
`until` has passed, or when the reader goes away. The event loop never waits on it: the manager only tells a
follower that its container ended.

A pipe also ends when the agent does (a crash, an upgrade, a restart). A reader that asked for end_marker gets
{"end": true} as the last line of a follow that ended on its own, so it can tell the two apart, and resumes a
cut follow where it was with after_cursor (the cursor of the last line it got): nothing lost, nothing twice.

When the container ends, its last lines may still be in journald's stream buffers; the follower asks journald
to synchronize (io.systemd.Journal.Synchronize over Varlink, which journald answers only after the input it had
queued), then reads to the end.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from quilt_agent.errors import InvalidArgument
from quilt_agent import logfile
from quilt_agent.journal import DROPPED, PRIORITY_STDERR, PRIORITY_STDOUT, Drop
from quilt_agent.journal import read_drops as journal_read_drops
from quilt_agent.journal import synchronize as journal_synchronize
from quilt_agent.journal import match as journal_match
from quilt_agent.model import Container, State
from quilt_agent.setup import identifier as setup_identifier

log = logging.getLogger("quilt.logs")

POLL_MS = 1000  # a safety net: journal and wake-up fds are what end a wait
FILE_POLL_MS = 100  # how often a log file is looked at: the latency of a followed line
MAX_FOLLOWERS = 256  # threads at once, over all containers
WRITE_BATCH = 1000  # lines per write: a backlog of a million lines is never held at once
FINISHED = (State.EXITED, State.FAILED, State.REMOVING)


@dataclass(frozen=True)
class FollowOptions:
    lines: int = 0  # the last N lines before following; 0 = all since `since`
    since: int = 0  # usec since the epoch
    until: int = 0  # usec since the epoch; 0 = no end
    follow: bool = True  # False: what is there now, then the end of the pipe
    setup: bool = False  # only the setup steps' lines (quilt_agent/setup.py)
    after_cursor: str = ""  # only the lines after this journal entry (a cut follow resumed); `lines` is ignored
    end_marker: bool = False  # a last line {"end": true} when the follow ends on its own
    dropped: bool = False  # with lines of stream DROPPED where lines were lost (those reported before the call)


def _unsigned(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"Log option '{key}' must be an unsigned integer, not {value!r}")
    return value


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"Log option '{key}' must be a boolean, not {value!r}")
    return value


def _cursor(key: str, value: Any) -> str:
    # A journal cursor is short printable ASCII (s=...;i=...;b=...): anything else cannot be one.
    if not isinstance(value, str) or not value or len(value) > 512 or not value.isascii() or not value.isprintable():
        raise InvalidArgument(f"Log option '{key}' must be a journal cursor (as a line's \"cursor\"), not {value!r}")
    return value


FOLLOW_OPTIONS = {"lines": _unsigned, "since": _unsigned, "until": _unsigned, "follow": _boolean,
                  "setup": _boolean, "after_cursor": _cursor, "end_marker": _boolean, "dropped": _boolean}


def parse_follow_options(options: dict[str, Any]) -> FollowOptions:
    fields: dict[str, Any] = {}
    for key, value in options.items():
        if key not in FOLLOW_OPTIONS:
            raise InvalidArgument(f"Unknown log option '{key}': known options are {', '.join(FOLLOW_OPTIONS)}")
        fields[key] = FOLLOW_OPTIONS[key](key, value)
    return FollowOptions(**fields)


class _Follower(threading.Thread):
    def __init__(self, container: Container, options: FollowOptions, write_fd: int, done: Any,
                 log_dir: str = "") -> None:
        super().__init__(name=f"follow {container.name}", daemon=True)
        self._log_dir = log_dir
        self.container_id = container.id
        self._unit = container.unit
        self._identifier = setup_identifier(container.name) if options.setup else ""
        # A former container of the same name had the same unit: only lines since this one was made.
        self._since = max(options.since, container.created_at)
        self._options = options
        self._fd = write_fd
        self._done = done
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._ended = threading.Event()
        self._marks: deque[Drop] = deque()  # journald's reports of dropped lines still to be marked, oldest first

    def end(self) -> None:
        """The container has ended: write what is left, then close (called from the event loop)."""
        self._ended.set()
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass

    def run(self) -> None:
        opened: list[Any] = []  # the journal reader or the log file, closed at the end
        try:
            if self._run_file(opened) if self._log_dir else self._run_journal(opened):
                self._end_marker()
        except BrokenPipeError:
            pass  # the reader went away
        except Exception:  # noqa: BLE001 - a follower's failure ends its pipe, never the agent
            log.exception("following the log of %s failed", self._unit)
        finally:
            for source in opened:
                source.close()
            for fd in (self._fd, self._wake_read, self._wake_write):
                os.close(fd)
            self._done(self)

    def _run_journal(self, opened: list[Any]) -> bool:
        """Send the backlog, then follow if asked; True when the follow ended on its own."""
        from systemd import journal  # as in journal.py: imported where needed, never in the fork server

        reader = journal.Reader(converters={"__REALTIME_TIMESTAMP": int})
        opened.append(reader)
        journal_match(reader, self._unit, self._identifier)
        after = self._options.after_cursor
        if after:
            reader.seek_cursor(after)  # the next entry is that one, if it is still there: skipped below
        elif self._since:
            reader.seek_realtime(self._since / 1e6 - 0.001)  # a little early: _send filters exactly
        entries: Iterator[dict[str, Any]] = iter(reader)
        resumed_at = -1  # usec of the line the cursor names: the reader has the marks up to it
        if after:
            head = next(entries, None)
            if head is not None and head.get("__CURSOR") == after:
                resumed_at = head["__REALTIME_TIMESTAMP"]  # the reader's last line: it has it
            elif head is not None:
                entries = itertools.chain([head], entries)  # its line is gone: from the oldest left
        backlog = self._backlog(entries)
        if self._options.dropped:
            # As GetLogs' marks (journal.with_drops): those among the lines sent, each before the first line
            # journald kept again; after a cursor, those since its line.
            if after:
                first = resumed_at + 1
            else:
                first = backlog[0]["__REALTIME_TIMESTAMP"] if isinstance(backlog, deque) and backlog else 0
            self._marks.extend(d for d in journal_read_drops(self._since, self._unit) if d.usec >= first)
        if not self._send(backlog) or not self._options.follow:
            self._send_marks(self._options.until or None)
            return True
        return self._follow(reader)

    def _run_file(self, opened: list[Any]) -> bool:
        """The same over the container's log file (the file log drivers): its cursors are the file's
        (logfile.Record.cursor), and it is looked at every FILE_POLL_MS, the monitor telling nobody of a write."""
        tail = logfile.Tail(self._log_dir)
        opened.append(tail)
        if self._options.after_cursor and not tail.seek_cursor(self._options.after_cursor):
            log.warning("the log file a follow of %s resumes in has been rotated away: from the oldest kept",
                        self._unit)
        backlog = self._backlog(_entries(tail.records(), self._options.dropped))
        if not self._send(backlog) or not self._options.follow:
            return True
        poller = self._poller()
        while True:
            ended = self._ended.is_set()  # before the read: what the monitor wrote before the end is in it
            if any(fd == self._fd for fd, _ in poller.poll(self._timeout(FILE_POLL_MS))):
                return False
            if not self._send(_entries(tail.records(), self._options.dropped)) or ended or self._past_until():
                return True

    def _backlog(self, entries: Iterator[dict[str, Any]]) -> deque[dict[str, Any]] | Iterator[dict[str, Any]]:
        """The lines before the follow: the last `lines` of them, if asked (not after a cursor), else all of them
        as they are read, never held at once (a log of 100,000s of lines would be, and the collector would walk
        them all, holding every thread of the agent meanwhile)."""
        if self._options.lines and not self._options.after_cursor:
            return deque(entries, maxlen=self._options.lines)
        return entries

    def _poller(self) -> select.poll:
        poller = select.poll()
        poller.register(self._wake_read, select.POLLIN)
        poller.register(self._fd, 0)  # a pipe's writer gets POLLERR once its reader has closed
        return poller

    def _timeout(self, most: int) -> int:
        """ms to wait for more: `most`, or less when `until` comes sooner."""
        until = self._options.until
        return most if not until else max(0, min(most, (until - time.time_ns() // 1000) // 1000))

    def _past_until(self) -> bool:
        return bool(self._options.until) and time.time_ns() // 1000 > self._options.until

    def _end_marker(self) -> None:
        if self._options.end_marker:
            self._write([b'{"end": true}\n'])

    def _follow(self, reader: Any) -> bool:
        """Follow to the end; True when it ended on its own (the container's end, `until`), False when the
        reader went away."""
        poller = self._poller()
        poller.register(reader.fileno(), reader.get_events())
        while True:
            for fd, events in poller.poll(self._timeout(POLL_MS)):
                if fd == self._fd and events & (select.POLLERR | select.POLLHUP):
                    return False
            reader.process()
            if not self._send(reader):
                return True
            if self._ended.is_set() or self._past_until():
                journal_synchronize()  # its last lines may still be on their way through journald
                reader.process()
                self._send(reader)
                return True

    def _send(self, entries: Any) -> bool:
        """Write the entries' lines; False once `until` is passed (the follow is over)."""
        chunk: list[bytes] = []
        over = False
        for entry in entries:
            usec = entry["__REALTIME_TIMESTAMP"]
            if usec < self._since:
                continue
            if self._options.until and usec > self._options.until:
                over = True
                break
            if self._marks and self._marks[0].usec <= usec:
                self._send_marks(usec, chunk)
            text = entry.get("MESSAGE", "")
            if isinstance(text, bytes):
                text = text.decode("utf-8", "replace")
            stream = entry.get(_STREAM) or ("stderr" if entry.get("PRIORITY") == PRIORITY_STDERR else "stdout")
            line = {"usec": usec, "stream": stream, "text": text, "cursor": entry.get("__CURSOR", "")}
            chunk.append(json.dumps(line).encode() + b"\n")
            if len(chunk) >= WRITE_BATCH:
                self._write(chunk)
        self._write(chunk)
        return not over

    def _send_marks(self, up_to: int | None, chunk: list[bytes] | None = None) -> None:
        """The marks of journald's reports up to up_to (usec; None: all left), into chunk or written now."""
        out: list[bytes] = [] if chunk is None else chunk
        while self._marks and (up_to is None or self._marks[0].usec <= up_to):
            drop = self._marks.popleft()
            mark = {"usec": drop.usec, "stream": DROPPED, "text": str(drop.count), "cursor": ""}
            out.append(json.dumps(mark).encode() + b"\n")
        if chunk is None:
            self._write(out)

    def _write(self, chunk: list[bytes]) -> None:
        """Write the lines (blocking: a reader that does not read holds only this thread) and empty the list."""
        data = b"".join(chunk)
        chunk.clear()
        while data:
            data = data[os.write(self._fd, data):]


_STREAM = "_QUILT_STREAM"  # an entry's stream when it is no journal priority's: a log file's "dropped" record


def _entries(records: Any, dropped: bool) -> Any:
    """Log file records as the journal's entries, which _send writes; the "dropped" ones only if asked."""
    for record in records:
        if record.stream != DROPPED:
            yield {"__REALTIME_TIMESTAMP": record.usec, "MESSAGE": record.text, "__CURSOR": record.cursor,
                   "PRIORITY": PRIORITY_STDERR if record.stream == "stderr" else PRIORITY_STDOUT}
        elif dropped:
            yield {"__REALTIME_TIMESTAMP": record.usec, "MESSAGE": record.text, "__CURSOR": record.cursor,
                   _STREAM: DROPPED}


class LogFollowers:
    """The followers of every container; a manager Listener, so that each ends with its container."""

    def __init__(self) -> None:
        self._followers: set[_Follower] = set()
        self._lock = threading.Lock()  # followers remove themselves from their own threads

    def start(self, container: Container, options: FollowOptions, log_dir: str = "") -> int:
        """Start following (the log file in log_dir, if given, else the journal); return the read end of the pipe
        (the caller's to close)."""
        with self._lock:
            if len(self._followers) >= MAX_FOLLOWERS:
                raise InvalidArgument(f"Too many logs followed at once (at most {MAX_FOLLOWERS}): close some first")
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        follower = _Follower(container, options, write_fd, self._finished, log_dir)
        if container.state in FINISHED or container.state is State.CREATED:
            # Nothing runs to follow: what is there, then the end (a created one may be started: not waited for).
            follower.end()
        with self._lock:
            self._followers.add(follower)
        follower.start()
        return read_fd

    def __len__(self) -> int:
        with self._lock:
            return len(self._followers)

    def _finished(self, follower: _Follower) -> None:
        with self._lock:
            self._followers.discard(follower)

    def _end(self, container_id: str) -> None:
        with self._lock:
            ending = [f for f in self._followers if f.container_id == container_id]
        for follower in ending:
            follower.end()

    # Listener: the state changes that end a follow.
    def container_added(self, container: Container) -> None:
        pass

    def container_changed(self, container: Container) -> None:
        if container.state in FINISHED:
            self._end(container.id)

    def container_removed(self, container: Container) -> None:
        self._end(container.id)

    def event(self, kind: str, container: Container, details: dict[str, Any]) -> None:
        pass
