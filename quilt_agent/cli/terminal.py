"""quiltctl's side of an interactive terminal (exec -t): a pty whose slave the command gets (through the agent,
as a file descriptor) and whose master quiltctl copies to and from its own terminal.

quiltctl owns the master, so nothing of the session passes through the agent: the agent hands the slave to
the command, which makes it its controlling terminal. The window size follows quiltctl's terminal (SIGWINCH ->
TIOCSWINSZ on the master, which the kernel passes on to the command as its own SIGWINCH).
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import signal
import struct
import termios
import tty
from typing import Awaitable, Callable

DRAIN_WAIT = 0.3  # after the command's end, how long we wait for the rest of its output (see run_in_pty)
EOF_CHAR = b"\x04"  # what a terminal sends for end of input (VEOF of a default, canonical terminal)


class Orphaned(Exception):
    """Raised by run_in_pty's call when it ended without the command's exit code while the command runs on (the
    agent that ran it went away): run_in_pty then copies on until the command has ended (every slave closed),
    and raises it again."""


def window_size(fd: int) -> bytes | None:
    """The (rows, cols, xpixel, ypixel) of a terminal, packed as TIOCGWINSZ gives it; None if fd is no terminal."""
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    except OSError:
        return None


def copy_window_size(source: int, pty_master: int) -> None:
    size = window_size(source)
    if size is not None and struct.unpack("HHHH", size)[:2] != (0, 0):
        fcntl.ioctl(pty_master, termios.TIOCSWINSZ, size)


class _Writer:
    """Non-blocking writes to one fd, buffered while it is full."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._pending = bytearray()

    def write(self, data: bytes) -> None:
        if self._pending:
            self._pending += data
            return
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return  # the other side is gone: drop it, the session is ending
        if written < len(data):
            self._pending += data[written:]
            self._loop.add_writer(self._fd, self._flush)

    def _flush(self) -> None:
        try:
            written = os.write(self._fd, self._pending)
        except BlockingIOError:
            return
        except OSError:
            written = len(self._pending)
        del self._pending[:written]
        if not self._pending:
            self._loop.remove_writer(self._fd)


async def run_in_pty(call: Callable[[int], Awaitable[int]], forward_input: bool) -> int:
    """Make a pty, run `call(slave)` (which gives the slave to the command as stdin, stdout and stderr) while
    copying our stdin to the master (if forward_input) and the master to our stdout; return call's result."""
    loop = asyncio.get_running_loop()
    master, slave = os.openpty()
    copy_window_size(0, master)
    os.set_blocking(master, False)
    to_pty = _Writer(loop, master)
    saved = None
    if forward_input and os.isatty(0):
        saved = termios.tcgetattr(0)
        # Raw: every key (^C, ^Z, arrows) goes to the command's terminal, which applies its own settings. With
        # TCSADRAIN, not setraw's default TCSAFLUSH: that would discard what was typed before this moment (while
        # quiltctl started and connected), and a command waiting for those keys would wait forever.
        tty.setraw(0, termios.TCSADRAIN)
    stdout_blocking = os.get_blocking(1)
    output_seen = loop.create_future()

    def from_pty() -> None:
        try:
            data = os.read(master, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""  # EIO: every slave fd is closed
        if not data:
            loop.remove_reader(master)
            if not output_seen.done():
                output_seen.set_result(None)
            return
        os.write(1, data)

    def from_stdin() -> None:
        try:
            data = os.read(0, 65536)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(0)
            to_pty.write(EOF_CHAR)  # our input ended: so does the command's
            return
        to_pty.write(data)

    def resized() -> None:
        copy_window_size(0, master)

    loop.add_reader(master, from_pty)
    if forward_input:
        try:
            loop.add_reader(0, from_stdin)
        except PermissionError:  # a regular file (`< file`): epoll cannot watch it, and it never blocks
            while data := os.read(0, 65536):
                to_pty.write(data)
            to_pty.write(EOF_CHAR)
            forward_input = False
    try:
        loop.add_signal_handler(signal.SIGWINCH, resized)
        winch = True
    except (ValueError, RuntimeError):
        winch = False  # not the main thread: the size stays as it was at the start
    try:
        os.set_blocking(1, True)
        call_task = asyncio.ensure_future(call(slave))
        try:
            code = await call_task
        except Orphaned:
            os.close(slave)
            slave = -1
            await output_seen  # the command's end: no other process keeps the slave open
            raise
        finally:
            if slave >= 0:
                os.close(slave)
            slave = -1
        # The command has ended; what it wrote last may still be on its way through the pty. Read until every
        # slave is closed (EIO), but no longer than DRAIN_WAIT: a background process may keep one open.
        try:
            await asyncio.wait_for(output_seen, DRAIN_WAIT)
        except asyncio.TimeoutError:
            pass
        return code
    finally:
        loop.remove_reader(master)
        if forward_input:
            loop.remove_reader(0)
        if winch:
            loop.remove_signal_handler(signal.SIGWINCH)
        if slave >= 0:
            os.close(slave)
        os.close(master)
        os.set_blocking(1, stdout_blocking)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
