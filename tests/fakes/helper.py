"""A fork server without containers: a ForkServer (quilt_agent/helper/forkserver.py) whose monitors and exec
helpers speak the real protocol over the real kind of socket, with real pids, pidfds and exit files, but run
the container's command as a plain host process (tests/fakes/fake_monitor.py says what is left out). For the
agent's own logic (the container state machine, execs) in unit tests, in milliseconds and without root.
"""
from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from quilt_agent.helper import protocol
from quilt_agent.helper.protocol import ExecSpec, LaunchSpec
from quilt_agent.images import tarball

PROGRAM = Path(__file__).with_name("fake_monitor.py")
PROJECT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT = 5.0


class FakeForkServer:
    """The agent's handle on a fake fork server process; close() ends it (the helpers it forked run on, as the
    real ones do when the agent goes)."""

    def __init__(self) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            # A program started afresh, not a fork of the test's process, which may have threads.
            self._process = subprocess.Popen([sys.executable, str(PROGRAM), str(theirs.fileno())],
                                             pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self._process.pid

    def close(self) -> None:
        self.sock.close()  # the server's recv ends: it exits
        try:
            self._process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _request(self, message: object, fds: tuple[int, ...]) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # A blocking send, even from the event loop: a test never queues enough requests to fill the socket.
            socket.send_fds(self.sock, [protocol.encode(message)], [theirs.fileno(), *fds])
            ours.setblocking(False)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    async def spawn(self, spec: LaunchSpec, stdio: tuple[int, ...] = ()) -> socket.socket:
        return self._request(spec, stdio)

    async def execute(self, spec: ExecSpec, stdin: int, stdout: int, stderr: int, init_pidfd: int) -> socket.socket:
        return self._request(spec, (stdin, stdout, stderr, init_pidfd))

    def extract(self, path: Path, dest: Path, *, offset: int = 0, size: int | None = None, label: str = "",
                progress: Callable[[int], None] | None = None) -> tarball.Extracted:
        # The unpacking is tarball's own, which forks a chrooted child of its own: no fork server needed.
        return tarball.extract(path, dest, offset=offset, size=size, label=label, progress=progress)

    def user_namespace(self, id_map: str) -> int:
        # Made by the real code, in a process started afresh: the test's own may have threads.
        code = ("import socket, sys\nfrom quilt_agent.helper import userns\n"
                "sock = socket.socket(fileno=int(sys.argv[1]))\n"
                "socket.send_fds(sock, [b'made'], [userns.make(sys.argv[2])])\n")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with ours, theirs:
            maker = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno()), id_map],
                                     pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, cwd=PROJECT)
            theirs.close()
            try:
                _data, fds, _flags, _addr = socket.recv_fds(ours, 16, 1)
            finally:
                maker.wait()
        if maker.returncode != 0 or len(fds) != 1:
            raise OSError(f"could not make a user namespace for {id_map!r}")
        return fds[0]
