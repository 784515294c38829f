"""The fork server: forked at agent start, before any thread exists, it forks one monitor per container.

Forking from the threaded agent (aiosqlite runs a thread) could copy a lock
held by another thread; the fork server has a single thread, so its children
start clean.
"""
from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass

from quilt_agent.helper import monitor, protocol, syscalls
from quilt_agent.helper.protocol import LaunchSpec


@dataclass
class Zygote:
    """The agent's handle on the fork server."""

    pid: int
    sock: socket.socket

    def spawn(self, spec: LaunchSpec) -> socket.socket:
        """Fork a monitor for spec; return the agent's end of the socket to it."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            socket.send_fds(self.sock, [protocol.encode(spec)], [theirs.fileno()])
        finally:
            theirs.close()
        ours.setblocking(False)
        return ours


def start() -> Zygote:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        parent.close()
        try:
            _serve(child)
        finally:
            os._exit(0)
    child.close()
    return Zygote(pid, parent)


def _serve(sock: socket.socket) -> None:
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are reaped by the kernel
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    while True:
        data, fds, _flags, _addr = socket.recv_fds(sock, protocol.MAX_MESSAGE, 1)
        if not data:
            return  # the agent is gone
        spec = protocol.decode(data, LaunchSpec)
        pid = os.fork()
        if pid == 0:
            sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, 0)
            status = 1
            try:
                status = monitor.run(spec, socket.socket(fileno=fds[0]))
            finally:
                os._exit(status)
        for fd in fds:
            os.close(fd)
