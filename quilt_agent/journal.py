"""Container output and the journal: opening stdout streams, reading lines back.

The container's fd 1 and 2 are journald stdout streams, so the agent is never
in the data path and `journalctl -u quilt-NAME.scope` shows every line.
"""
from __future__ import annotations

import os
import socket
import subprocess
from collections import deque
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class LogLine:
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


def read_lines(unit: str, since_usec: int, last: int = 0, identifier: str = "") -> list[LogLine]:
    """The lines journald holds for the scope since since_usec; the last `last` ones if last > 0; only those
    of one SYSLOG_IDENTIFIER if given (a container's setup steps').

    Blocking: call it in a worker thread.
    """
    from systemd import journal  # imported here: the fork server's children never need it

    # The raw usec, not the default datetime: a float round trip would move lines across `since`.
    reader = journal.Reader(converters={"__REALTIME_TIMESTAMP": int})
    try:
        match(reader, unit, identifier)
        if since_usec:
            reader.seek_realtime(since_usec / 1e6 - 0.001)  # a little early: the loop filters exactly
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
        return list(kept)
    finally:
        reader.close()


# journald's own entry when its rate limit dropped a unit's messages (SD_MESSAGE_JOURNAL_DROPPED): "Suppressed N
# messages from UNIT", with N_DROPPED=N and the unit as OBJECT_SYSTEMD_UNIT. journald writes it when the unit's next
# message passes the limit again, so lines dropped just before the container's end are never reported this way.
DROPPED_MESSAGE_ID = "a596d6fe7bfa4994828e72309e95d61e"


@dataclass(frozen=True)
class Drop:
    usec: int  # when journald reported it: the first line it kept again came right after
    unit: str
    count: int


def _drop(entry: dict[str, Any]) -> Drop | None:
    unit = entry.get("OBJECT_SYSTEMD_UNIT", "")
    try:
        count = int(entry.get("N_DROPPED", ""))
    except ValueError:
        return None
    if not isinstance(unit, str) or not unit or count <= 0:
        return None
    return Drop(entry["__REALTIME_TIMESTAMP"], unit, count)


def read_drops(since_usec: int = 0, unit: str = "") -> list[Drop]:
    """journald's reports of this boot of units' dropped lines (of one unit if given), since since_usec, oldest
    first. Blocking: call it in a worker thread."""
    from systemd import journal

    reader = journal.Reader(converters={"__REALTIME_TIMESTAMP": int})
    try:
        reader.this_boot()
        if unit:
            reader.add_match(MESSAGE_ID=DROPPED_MESSAGE_ID, OBJECT_SYSTEMD_UNIT=unit)
        else:
            reader.add_match(MESSAGE_ID=DROPPED_MESSAGE_ID)
        if since_usec:
            reader.seek_realtime(since_usec / 1e6 - 0.001)
        return [d for d in map(_drop, reader) if d is not None and d.usec >= since_usec]
    finally:
        reader.close()


class DropWatch:
    """journald's reports of dropped lines as they come: fileno() turns readable when the journal changed (any
    entry of any unit), then new() returns the reports written since the last call, none from before the watch
    began. Each call seeks to the last report's time again: a reader left at the journal's end did not see the
    entries appended later on this journald (252)."""

    def __init__(self) -> None:
        import time

        from systemd import journal

        self._reader = journal.Reader(converters={"__REALTIME_TIMESTAMP": int})
        self._reader.this_boot()
        self._reader.add_match(MESSAGE_ID=DROPPED_MESSAGE_ID)
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
