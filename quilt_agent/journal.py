"""Container output and the journal: opening stdout streams, reading lines back.

The container's fd 1 and 2 are journald stdout streams, so the agent is never
in the data path and `journalctl -u quilt-NAME.scope` shows every line.
"""
from __future__ import annotations

import os
import queue
import socket
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, TypeVar

T = TypeVar("T")

JOURNAL_STDOUT = "/run/systemd/journal/stdout"
PRIORITY_STDOUT = 6  # info
PRIORITY_STDERR = 3  # err
DROPPED = "dropped"  # the stream of GetLogs' marks where journald dropped lines (the text: how many)
STREAM_BUFFER = 8 * 1024 * 1024


def open_stream(identifier: str, unit: str, priority: int) -> int:
    """Connect a journald stdout stream and return its fd.

    Written by hand rather than with systemd.journal.stream() because that one
    cannot set the header's unit_id: journald falls back to it to attribute
    lines of a process that has already exited (a container that prints and
    exits at once), so every line still lands under the scope.
    """
    fd = stream_socket()
    try:
        connect_stream(fd, identifier, unit, priority)
    except BaseException:
        os.close(fd)
        raise
    return fd


def stream_socket() -> int:
    """A socket for connect_stream. journald takes the unit of a stream's lines from the process that connected it:
    made by a container's monitor, which writes to it, and connected by the container's init."""
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC).detach()


def connect_stream(fd: int, identifier: str, unit: str, priority: int) -> None:
    sock = socket.socket(fileno=fd)
    try:
        sock.connect(JOURNAL_STDOUT)
        sock.shutdown(socket.SHUT_RD)
        try:
            sock.setsockopt(socket.SOL_SOCKET, 32, STREAM_BUFFER)  # SO_SNDBUFFORCE, as sd_journal_stream_fd
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_BUFFER)
        # identifier, unit_id, priority, level_prefix, forward to syslog, kmsg, console
        sock.sendall(f"{identifier}\n{unit}\n{priority}\n0\n0\n0\n0\n".encode())
    finally:
        sock.detach()


class LogLine(NamedTuple):
    """A NamedTuple rather than a dataclass: it is the (tss) struct of GetLogs' reply as it is, so that a reply of
    100,000 lines is marshalled without a copy of each in the agent's event loop."""

    usec: int  # realtime, usec since the epoch
    stream: str  # "stdout" or "stderr"
    text: str


def match(reader: Any, unit: str, identifier: str = "") -> None:
    """Limit a systemd.journal.Reader to this boot's lines of the scope (of one identifier, if given)."""
    reader.this_boot()
    if identifier:
        reader.add_match(_SYSTEMD_UNIT=unit, SYSLOG_IDENTIFIER=identifier)
    else:
        reader.add_match(_SYSTEMD_UNIT=unit)


JOURNAL_VARLINK = "/run/systemd/journal/io.systemd.journal"
SYNC_TIMEOUT = 5.0


def synchronize(varlink: str = JOURNAL_VARLINK) -> bool:
    """Wait until journald has stored every line written to it before this call: a stream's last lines may still be
    in journald's socket buffer when its writer exits. Asked as `journalctl --sync` asks it, journald's Synchronize
    Varlink call, which journald answers once the input it had queued is written; by hand, since the protocol is
    one NUL-terminated JSON object each way and Debian 12 packages no Varlink library for Python. A journald
    without Varlink gets `journalctl --sync` itself. Whether journald confirmed; a failure (no journalctl, a stuck
    journald) is not an error: the read then shows what is stored. Blocking: call it in a worker thread."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(SYNC_TIMEOUT)
            sock.connect(varlink)
            sock.sendall(b'{"method":"io.systemd.Journal.Synchronize","parameters":{}}\0')
            reply = b""
            while not reply.endswith(b"\0"):
                chunk = sock.recv(4096)
                if not chunk:
                    break  # journald closed without an answer
                reply += chunk
        if reply.endswith(b"\0") and b'"error"' not in reply:
            return True
    except OSError:
        pass
    try:
        return subprocess.run(["journalctl", "--sync"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=SYNC_TIMEOUT, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _open_reader() -> Any:
    from systemd import journal  # imported here: the fork server's children never need it

    # The raw usec, not the default datetime: a float round trip would move lines across `since`.
    return journal.Reader(converters={"__REALTIME_TIMESTAMP": int})


class _ReaderThread:
    """The thread that owns the journal reader kept between reads, and runs the reads that use it.

    Opening a reader costs about 30 us per journal file, and journald keeps a file per uid that logged: one per
    container's id range, tens on a host, and a GetLogs was mostly that. The kept reader learns of files made or
    removed since (rotation, a new uid's file) from its inotify watch, processed before each use. It is closed once
    MAX_AGE old, at the read that finds it so or by the thread when no read comes: a watch whose events piled up
    is not trusted, and an agent that reads no logs holds no journal file open (journald's vacuum frees a file's
    space only once no reader holds it). sd-journal wants each object used by one thread for its whole life (its
    manual, systemd 252): this thread opens, uses and closes the kept reader, and a read that finds it busy, or a
    reader that cannot be kept (no inotify instance left), uses a reader of its own, in its own thread."""

    MAX_AGE = 10.0  # seconds

    def __init__(self) -> None:
        self._clock = time.monotonic
        self._free = threading.Lock()  # held by the read the thread serves: one at a time, never queued
        self._requests: queue.SimpleQueue[tuple[Callable[[Any], Any], Any]] = queue.SimpleQueue()
        self._started = threading.Lock()
        self._thread: threading.Thread | None = None

    def read(self, work: Callable[[Any], T]) -> T:
        """work(reader), in the kept reader's thread if it is free; blocking: call it in a worker thread."""
        from concurrent.futures import Future  # the agent's alone: the fork server imports this module too

        if not self._free.acquire(blocking=False):
            return _with_own_reader(work)
        try:
            self._start()
            done: Future[T] = Future()
            self._requests.put((work, done))
            return done.result()
        finally:
            self._free.release()

    def _start(self) -> None:
        with self._started:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="journal reader", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        kept: Any = None
        opened = 0.0
        while True:
            timeout = None if kept is None else max(0.0, self.MAX_AGE - (self._clock() - opened))
            try:
                work, done = self._requests.get(timeout=timeout)
            except queue.Empty:
                kept.close()  # no read came while it aged
                kept = None
                continue
            if kept is not None and self._clock() - opened >= self.MAX_AGE:
                kept.close()
                kept = None
            try:
                if kept is None:
                    kept, opened = _open_reader(), self._clock()
                    kept.fileno()  # sets up the inotify watch that process() reads
                else:
                    kept.process()  # files made or removed since its last use
                    kept.flush_matches()
            except Exception:  # noqa: BLE001 - no inotify instance left, say: this read uses a reader of its own
                if kept is not None:
                    kept.close()
                kept = None
            if kept is None:
                try:
                    done.set_result(_with_own_reader(work))
                except BaseException as err:  # noqa: BLE001 - the read's failure is its caller's
                    done.set_exception(err)
                continue
            try:
                done.set_result(work(kept))
            except BaseException as err:  # noqa: BLE001 - the read's failure is its caller's; the reader goes
                kept.close()
                kept = None
                done.set_exception(err)


def _with_own_reader(work: Callable[[Any], T]) -> T:
    reader = _open_reader()
    try:
        return work(reader)
    finally:
        reader.close()


_reads = _ReaderThread()


def read_lines(unit: str, since_usec: int, last: int = 0, identifier: str = "", most: int = 0,
               dropped: bool = False) -> list[LogLine]:
    """The lines journald holds for the scope since since_usec; the last `last` ones if last > 0; only those
    of one SYSLOG_IDENTIFIER if given (a container's setup steps'). Without `last`, at most `most` + 1 lines if
    most > 0: the read stops once there are more than a caller takes. dropped: with journald's reports of lines
    of the scope it dropped among them (with_drops), read by the same reader (_ReaderThread says why that matters).

    Blocking: call it in a worker thread.
    """
    def read(reader: Any) -> list[LogLine]:
        lines = _read_lines(reader, unit, since_usec, last, identifier, most)
        if not dropped:
            return lines
        reader.flush_matches()
        return with_drops(lines, _read_drops(reader, since_usec, unit), last)

    return _reads.read(read)


def _read_lines(reader: Any, unit: str, since_usec: int, last: int, identifier: str, most: int) -> list[LogLine]:
    match(reader, unit, identifier)
    if since_usec:
        reader.seek_realtime(since_usec / 1e6 - 0.001)  # a little early: the loop filters exactly
    else:
        reader.seek_head()  # a kept reader is wherever its last read left it
    kept: deque[LogLine] | list[LogLine] = deque(maxlen=last) if last else []
    for entry in reader:
        usec = entry["__REALTIME_TIMESTAMP"]
        if usec < since_usec:
            continue
        message = entry.get("MESSAGE", "")
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        stream = "stderr" if entry.get("PRIORITY") == PRIORITY_STDERR else "stdout"
        kept.append(LogLine(usec, stream, message))
        if most and not last and len(kept) > most:
            break
    return list(kept)


# journald's own entry when its rate limit dropped a unit's messages (SD_MESSAGE_JOURNAL_DROPPED): "Suppressed N
# messages from UNIT", with N_DROPPED=N and the unit as OBJECT_SYSTEMD_UNIT. journald writes it when the unit's next
# message passes the limit again, so lines dropped just before the container's end are never reported this way.
DROPPED_MESSAGE_ID = "a596d6fe7bfa4994828e72309e95d61e"
# quilt-monitor's entries about a container's log file (monitor/logfile.c), with QUILT_CONTAINER=NAME: a write
# failed (ERRNO, MESSAGE), and lines are dropped and counted from then on; the gap ended, or the container did,
# with N_DROPPED lines not written.
LOG_FAILED_ID = "360f9016897c49c887b74b459e90e524"
LOG_DROPPED_ID = "2d9b2ed5267d4395b1d9d6d7bd5cfafa"
REPORT_IDS = (DROPPED_MESSAGE_ID, LOG_FAILED_ID, LOG_DROPPED_ID)

JOURNALD = "journald"  # Drop.source: journald's rate limit dropped the lines
LOG_FILE = "file"  # the container's log file could not take them


MAX_DROPPED = 1 << 48  # a count past this is no real one (and would overflow LogLinesDropped's t)
MONITOR_COMM = "quilt-mon"  # quilt-monitor's process name, before the container's (monitor/quilt-monitor.c)


@dataclass(frozen=True)
class Drop:
    usec: int  # when it was reported: for journald, the first line it kept again came right after
    unit: str  # the container's unit (journald's reports), or ""
    count: int  # lines dropped; 0 when a log file's write has just failed (the gap begins, `reason` says why)
    source: str = JOURNALD
    reason: str = ""
    container: str = ""  # the container's name (quilt-monitor's reports), or ""


def _trusted(entry: dict[str, Any], message_id: str) -> bool:
    """Whether the entry is from whom it says: anybody may send journald any fields but the trusted ones (with a
    leading underscore, journald's own), which say who sent it. journald's reports are its own (_TRANSPORT=driver);
    quilt-monitor's come from a process of that name run as root, as the agent's monitors are."""
    if message_id == DROPPED_MESSAGE_ID:
        return entry.get("_TRANSPORT") == "driver"
    return entry.get("_UID") in (0, "0") and str(entry.get("_COMM", "")).startswith(MONITOR_COMM)


def _drop(entry: dict[str, Any]) -> Drop | None:
    message_id = entry.get("MESSAGE_ID", DROPPED_MESSAGE_ID)
    message_id = getattr(message_id, "hex", message_id)  # systemd.journal.Reader reads it as a uuid.UUID
    if not _trusted(entry, message_id):
        return None
    try:
        count = int(entry.get("N_DROPPED", ""))
    except ValueError:
        return None
    if not 0 <= count < MAX_DROPPED:
        return None
    usec = entry["__REALTIME_TIMESTAMP"]
    if message_id == DROPPED_MESSAGE_ID:
        unit = entry.get("OBJECT_SYSTEMD_UNIT", "")
        return Drop(usec, unit, count) if isinstance(unit, str) and unit and count else None
    container = entry.get("QUILT_CONTAINER", "")
    if not isinstance(container, str) or not container:
        return None
    if message_id == LOG_FAILED_ID:
        return Drop(usec, "", 0, LOG_FILE, str(entry.get("MESSAGE", "")), container)
    return Drop(usec, "", count, LOG_FILE, container=container) if count else None


def with_drops(lines: list[LogLine], drops: list[Drop], last: int = 0) -> list[LogLine]:
    """The lines with a line of stream DROPPED (its text the count) for each of journald's reports among them: just
    before the first line it kept again, which came right after the report."""
    if last and lines:
        drops = [d for d in drops if d.usec >= lines[0].usec]  # those among the lines shown
    merged = [*((line.usec, 1, line) for line in lines),
              *((d.usec, 0, LogLine(d.usec, DROPPED, str(d.count))) for d in drops)]
    return [line for _, _, line in sorted(merged, key=lambda m: (m[0], m[1]))]


def _match_reports(reader: Any, ids: tuple[str, ...]) -> None:
    # Matches of one field are or-ed, of different fields and-ed: this boot's (this_boot) entries of any of these.
    reader.add_match(*(f"MESSAGE_ID={message_id}" for message_id in ids))


def read_drops(since_usec: int = 0, unit: str = "") -> list[Drop]:
    """The reports of this boot of lines dropped, journald's and quilt-monitor's (of one unit and journald's alone
    if unit is given), since since_usec, oldest first. Blocking: call it in a worker thread."""
    return _reads.read(lambda reader: _read_drops(reader, since_usec, unit))


def _read_drops(reader: Any, since_usec: int, unit: str) -> list[Drop]:
    reader.this_boot()
    if unit:
        reader.add_match(MESSAGE_ID=DROPPED_MESSAGE_ID, OBJECT_SYSTEMD_UNIT=unit)
    else:
        _match_reports(reader, REPORT_IDS)
    if since_usec:
        reader.seek_realtime(since_usec / 1e6 - 0.001)
    else:
        reader.seek_head()
    return [d for d in map(_drop, reader) if d is not None and d.usec >= since_usec]


class DropWatch:
    """Reports of dropped lines (journald's and quilt-monitor's) as they come: fileno() turns readable when the journal changed (any
    entry of any unit), then new() returns the reports written since the last call, none from before the watch
    began. Each call seeks to the last report's time again: a reader left at the journal's end did not see the
    entries appended later on this journald (252)."""

    def __init__(self) -> None:
        self._reader = _open_reader()
        self._reader.this_boot()
        _match_reports(self._reader, REPORT_IDS)
        self._after = time.time_ns() // 1000  # usec: reports up to here are not new
        self._fd = self._reader.fileno()

    def fileno(self) -> int:
        return self._fd

    def new(self) -> list[Drop]:
        self._reader.process()  # acknowledges the change, so the fd quiets down
        self._reader.seek_realtime(self._after / 1e6)
        drops = [d for d in map(_drop, self._reader) if d is not None and d.usec > self._after]
        if drops:
            self._after = max(d.usec for d in drops)
        return drops

    def close(self) -> None:
        self._reader.close()
