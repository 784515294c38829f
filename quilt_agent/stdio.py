"""A caller's stdin, stdout and stderr for a container's process (ExecWithFds, StartWithFds).

The container's process runs as root with CAP_DAC_OVERRIDE, and a file it holds can be opened again through
/proc/self/fd/N with the container's rights, not with the caller's: a regular file the caller opened read-only
would be written, a directory fd would open the host's tree, an O_PATH fd would be read. So only what cannot be
reopened into more (a pipe, a socket, a terminal, /dev/null) is handed over as it is; a regular file is relayed
through a pipe by the agent's loop, which only reads or writes the open file the caller gave (never by a name);
anything else is refused.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import stat
from dataclasses import dataclass, field

from quilt_agent.errors import InvalidArgument

NAMES = ("stdin", "stdout", "stderr")
CHUNK = 1 << 16
# How long the end of a call waits for a relay to deliver what the process wrote: a background process that keeps
# the stream open is relayed on, after the reply.
DRAIN_SECONDS = 1.0
_NULL = os.makedev(1, 3)


@dataclass
class Relays:
    """The fds to hand to the container, our ends of them to close once handed over, and the relays' ends."""

    fds: tuple[int, int, int]
    handed: list[int] = field(default_factory=list)
    done: list[asyncio.Future[None]] = field(default_factory=list)

    def close_handed(self) -> None:
        for fd in self.handed:
            os.close(fd)
        self.handed = []

    async def drained(self) -> None:
        """Once the process has ended: what it wrote is delivered (bounded by DRAIN_SECONDS)."""
        self.close_handed()
        if self.done:
            await asyncio.wait(self.done, timeout=DRAIN_SECONDS)


def _passes(fd: int, index: int) -> bool:
    """True for a stream handed over as it is, False for a regular file to relay; InvalidArgument otherwise."""
    name = NAMES[index]
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        st = os.fstat(fd)
    except OSError as e:
        raise InvalidArgument(f"The {name} descriptor is not usable: {e.strerror}") from None
    if flags & os.O_PATH:
        raise InvalidArgument(f"The {name} descriptor is an O_PATH one: give an open stream")
    mode = flags & os.O_ACCMODE
    if index == 0 and mode not in (os.O_RDONLY, os.O_RDWR):
        raise InvalidArgument("The stdin descriptor is not open for reading")
    if index > 0 and mode not in (os.O_WRONLY, os.O_RDWR):
        raise InvalidArgument(f"The {name} descriptor is not open for writing")
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        return True
    if stat.S_ISCHR(st.st_mode) and (st.st_rdev == _NULL or os.isatty(fd)):
        return True
    if stat.S_ISREG(st.st_mode):
        return False
    raise InvalidArgument(f"The {name} descriptor must be a pipe, a socket, a terminal, /dev/null or a regular file")


def prepare(fds: tuple[int, int, int]) -> Relays:
    """Check the caller's three fds and set up a relay for each regular file (the caller's fds stay the caller's:
    each relay works on a duplicate)."""
    kinds = [_passes(fd, i) for i, fd in enumerate(fds)]
    loop = asyncio.get_running_loop()
    relays = Relays(fds)
    out = list(fds)
    for i, (fd, passes) in enumerate(zip(fds, kinds)):
        if passes:
            continue
        read, write = os.pipe2(os.O_CLOEXEC)
        done: asyncio.Future[None] = loop.create_future()
        if i == 0:
            os.set_blocking(write, False)  # ours alone: the process's end stays blocking, as programs expect
            _feed(loop, os.dup(fd), write, done)
            out[i] = read
            relays.handed.append(read)
        else:
            os.set_blocking(read, False)
            _drain(loop, read, os.dup(fd), done)
            out[i] = write
            relays.handed.append(write)
        relays.done.append(done)
    relays.fds = (out[0], out[1], out[2])
    return relays


def _finish(done: asyncio.Future[None], *fds: int) -> None:
    for fd in fds:
        os.close(fd)
    if not done.done():
        done.set_result(None)


def _feed(loop: asyncio.AbstractEventLoop, source: int, pipe: int, done: asyncio.Future[None]) -> None:
    """The caller's file -> the pipe the process reads, as the pipe has room."""
    pending = bytearray()

    def writable() -> None:
        try:
            if not pending:
                pending.extend(os.read(source, CHUNK))  # a regular file: never waits long
                if not pending:
                    raise EOFError
            del pending[:os.write(pipe, pending)]
        except BlockingIOError:
            return
        except (EOFError, OSError):
            loop.remove_writer(pipe)
            _finish(done, source, pipe)

    loop.add_writer(pipe, writable)


def _drain(loop: asyncio.AbstractEventLoop, pipe: int, target: int, done: asyncio.Future[None]) -> None:
    """The pipe the process writes -> the caller's file."""

    def readable() -> None:
        try:
            data = os.read(pipe, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(target, view):]
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ENOSPC, errno.EBADF):
                raise
            data = b""  # nowhere to write: the rest is dropped, the process is not held up
        if not data:
            loop.remove_reader(pipe)
            _finish(done, pipe, target)

    loop.add_reader(pipe, readable)
