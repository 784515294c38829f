"""Exec: running a command inside a running container, for the manager.

The command is forked by the fork server (the agent is threaded and never
forks), enters every namespace of the container's init, is put into the
container's scope before it runs, and gets the container's user, capability set,
no_new_privs and environment, as the container's own command does
(helper/enter.py). Its stdin, stdout and stderr are either the caller's file
descriptors, handed on as they are (no byte passes through the agent), or pipes
whose output the agent collects up to MAX_OUTPUT bytes per stream.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
from dataclasses import dataclass
from typing import Any

from quilt_agent import cgroups
from quilt_agent.errors import ContainerFailed, InvalidArgument, NotRunning, TimedOut
from quilt_agent.helper import protocol
from quilt_agent.helper.protocol import ExecExited, ExecSetupFailed, ExecSpawned, ExecSpec
from quilt_agent.helper.forkserver import ForkServer
from quilt_agent.model import OPTION_PARSERS, Container, capability_mask, validate_command

MAX_OUTPUT = 1 << 20  # bytes kept of each of stdout and stderr by Exec; the rest is read and dropped
MAX_TIMEOUT = 86400 * 365
KILL_GRACE = 10.0  # seconds to wait for the helper to report a killed command


@dataclass(frozen=True)
class ExecOptions:
    """An exec's options, checked. Unset strings mean the container's own."""

    env: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    timeout: float = 0  # seconds, 0 = none
    tty: bool = False


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes = b""  # Exec's collected output; empty when the caller passed its own fds
    stderr: bytes = b""


def _timeout(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TIMEOUT:
        raise InvalidArgument(f"Invalid timeout {value!r}: must be a number of seconds from 0 (none) to {MAX_TIMEOUT}")
    return value


def _tty(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"Option 'tty' must be a boolean, not {value!r}")
    return value


# Option key -> parser; env, workdir and user follow the same rules as at create. Unknown keys are an error.
EXEC_OPTIONS = {
    "env": OPTION_PARSERS["env"][1],
    "workdir": OPTION_PARSERS["workdir"][1],
    "user": OPTION_PARSERS["user"][1],
    "timeout": _timeout,
    "tty": _tty,
}


def parse_exec_options(options: dict[str, Any]) -> ExecOptions:
    fields: dict[str, Any] = {}
    for key, value in options.items():
        if key not in EXEC_OPTIONS:
            raise InvalidArgument(f"Unknown exec option '{key}': known options are {', '.join(sorted(EXEC_OPTIONS))}")
        fields[key] = EXEC_OPTIONS[key](value)
    return ExecOptions(**fields)


def exec_environment(container_env: tuple[str, ...], options: ExecOptions) -> tuple[str, ...]:
    """The container's environment, then the exec's own; TERM for a terminal unless given, as Podman does."""
    env = dict(e.split("=", 1) for e in container_env)
    if options.tty:
        env.setdefault("TERM", "xterm")
    env.update(e.split("=", 1) for e in options.env)
    return tuple(f"{k}={v}" for k, v in env.items())


class _Collector:
    """Reads one pipe on the loop, keeping its first `limit` bytes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, limit: int) -> None:
        self._loop = loop
        self._fd = fd
        self._limit = limit
        self.data = bytearray()
        os.set_blocking(fd, False)
        loop.add_reader(fd, self.read)

    def read(self, chunks: int = 16) -> bool:
        """Read what is there, at most `chunks` reads (a fast writer must not hold the loop); False at the end."""
        for _ in range(chunks):
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return True
            if not chunk:
                self._loop.remove_reader(self._fd)
                return False
            room = self._limit - len(self.data)
            if room > 0:
                self.data += chunk[:room]
        return True

    def close(self) -> bytes:
        """Take what the command wrote before it ended: all of it is in the pipe by now (a background child
        may go on writing: that is not waited for)."""
        self.read(chunks=64)
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        return bytes(self.data)


async def _receive_with_fds(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message and the fds sent with it (asyncio has no sock_recvmsg)."""
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, protocol.MAX_MESSAGE, 1)
            return data, fds
        except BlockingIOError:
            readable = loop.create_future()
            loop.add_reader(sock.fileno(), lambda: readable.done() or readable.set_result(None))
            try:
                await readable
            finally:
                loop.remove_reader(sock.fileno())


class Executor:
    """Runs exec requests through the fork server."""

    def __init__(self, zygote: ForkServer) -> None:
        self._zygote = zygote
        # container id -> (init pid, the cgroup.procs files to write): a running container's cgroups stay put,
        # and finding them in /proc was a third of the agent's own time per exec.
        self._procs: dict[str, tuple[int, tuple[str, ...]]] = {}

    def _cgroup_procs(self, c: Container) -> tuple[str, ...]:
        known = self._procs.get(c.id)
        if known is not None and known[0] == c.main_pid:
            return known[1]
        try:
            # The exec helper is forked from the fork server: it is in its cgroups already.
            procs = cgroups.procs_files(c.main_pid, already=self._zygote.pid)
        except OSError:
            raise NotRunning(c.name, "exited") from None
        if len(self._procs) >= 1024:
            self._procs.clear()  # removed containers' entries: dropped now and then rather than tracked
        self._procs[c.id] = (c.main_pid, procs)
        return procs

    async def run(self, c: Container, init_pidfd: int, command: list[str] | tuple[str, ...], options: ExecOptions,
                  env: tuple[str, ...], stdio: tuple[int, int, int] | None = None) -> ExecResult:
        """Run `command` in the running container `c` (its init's pidfd: init_pidfd) and wait for it.

        stdio: the caller's stdin, stdout and stderr (still the caller's to close); None collects the output.
        """
        command = validate_command(command)
        if options.tty and stdio is None:
            raise InvalidArgument("Option 'tty' needs the caller's terminal: use ExecWithFds with a terminal as stdin")
        procs = self._cgroup_procs(c)
        spec = ExecSpec(container_id=c.id, name=c.name, command=command, env=exec_environment(env, options),
                        workdir=options.workdir or c.spec.workdir, user=options.user or c.spec.user,
                        namespaces=(*c.spec.namespaces, "user") if c.id_first >= 0 else c.spec.namespaces,
                        tty=options.tty, cgroup_procs=procs,
                        seccomp=c.spec.seccomp != "unconfined",
                        capabilities=capability_mask(c.spec))
        protocol.check_size(spec, "The exec's command and environment")
        loop = asyncio.get_running_loop()
        collectors: list[_Collector] = []
        if stdio is None:
            null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            out_read, out_write = os.pipe2(os.O_CLOEXEC)
            err_read, err_write = os.pipe2(os.O_CLOEXEC)
            try:
                sock = await self._zygote.execute(spec, null, out_write, err_write, init_pidfd)
            except BaseException:
                for fd in (out_read, err_read):
                    os.close(fd)
                raise
            finally:
                for fd in (null, out_write, err_write):
                    os.close(fd)  # the helper has its copies: EOF comes when the command's side is closed
            collectors = [_Collector(loop, out_read, MAX_OUTPUT), _Collector(loop, err_read, MAX_OUTPUT)]
        else:
            sock = await self._zygote.execute(spec, *stdio, init_pidfd)
        pidfd = -1
        timed_out = False
        try:
            data, fds = await _receive_with_fds(loop, sock)
            if fds:
                pidfd = fds[0]  # opened by the helper while the command was its unreaped child: never another's
            spawned = protocol.decode(data, ExecSpawned, ExecSetupFailed)
            if isinstance(spawned, ExecSetupFailed):
                raise self._error(c, spawned)
            receive = loop.sock_recv(sock, protocol.MAX_MESSAGE)
            try:
                data = await asyncio.wait_for(receive, options.timeout or None)
            except asyncio.TimeoutError:
                timed_out = True
                self._kill(pidfd, spawned.pid)
                data = await asyncio.wait_for(loop.sock_recv(sock, protocol.MAX_MESSAGE), KILL_GRACE)
            ended = protocol.decode(data, ExecExited, ExecSetupFailed)
        except protocol.ProtocolError as err:
            raise ContainerFailed(f"Exec in container '{c.name}' failed: the helper said {err}") from err
        finally:
            sock.close()
            if pidfd >= 0:
                os.close(pidfd)
            outputs = [collector.close() for collector in collectors]
        if isinstance(ended, ExecSetupFailed):
            raise self._error(c, ended)
        if timed_out:
            raise TimedOut(f"Command {list(command)!r} in container '{c.name}' did not finish within "
                           f"{options.timeout} s and was killed")
        return ExecResult(ended.exit_code, *outputs)

    @staticmethod
    def _kill(pidfd: int, pid: int) -> None:
        """SIGKILL the command and its process group (it leads one: setsid), so its children go too."""
        try:
            if pidfd >= 0:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    @staticmethod
    def _error(c: Container, failed: ExecSetupFailed) -> Exception:
        if failed.kind == "invalid":
            return InvalidArgument(f"Cannot exec in container '{c.name}': {failed.reason}")
        if failed.kind == "gone":
            return NotRunning(c.name, "exited")
        return ContainerFailed(f"Exec in container '{c.name}' failed: {failed.reason}")
