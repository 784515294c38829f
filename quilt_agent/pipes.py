"""A caller's pipe, read or written by a worker thread that never waits on it for ever.

A caller that holds its end of a pipe open and sends nothing (or reads nothing) would otherwise hold one of the
agent's few worker threads for good.
"""
from __future__ import annotations

import io
import os
import select
from typing import Any, BinaryIO

from quilt_agent.errors import CopyFailed

IDLE_SECONDS = 60.0
CHUNK = 1 << 20


class _Pipe(io.RawIOBase):
    """A caller's pipe (its fd duplicated: the caller's copy is closed by the bus layer), each read or write
    waiting at most IDLE_SECONDS for the other end. Writes go PIPE_BUF at a time: a poll's POLLOUT promises
    no more room than that."""

    def __init__(self, fd: int, writing: bool) -> None:
        super().__init__()
        self._fd = os.dup(fd)
        self._writing = writing

    def readable(self) -> bool:
        return not self._writing

    def writable(self) -> bool:
        return self._writing

    def _wait(self, event: int) -> None:
        poll = select.poll()
        poll.register(self._fd, event)
        if not poll.poll(IDLE_SECONDS * 1000):
            raise CopyFailed(f"the caller's end of the pipe was idle for {IDLE_SECONDS:.0f} s")

    def readinto(self, buffer: Any) -> int:
        self._wait(select.POLLIN)
        data = os.read(self._fd, len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def write(self, data: Any) -> int:
        self._wait(select.POLLOUT)
        return os.write(self._fd, bytes(data[:select.PIPE_BUF]))

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def stream(fd: int, writing: bool) -> BinaryIO:
    """A buffered stream over a caller's pipe end (see _Pipe)."""
    raw = _Pipe(fd, writing)
    return io.BufferedWriter(raw) if writing else io.BufferedReader(raw)  # type: ignore[return-value]


def spool(fd: int, path: str) -> None:
    """Everything the caller's pipe sends, into the file at path."""
    with stream(fd, writing=False) as inp, open(path, "wb") as out:
        while data := inp.read(CHUNK):
            out.write(data)
