"""The behaviour every ForkServer has (quilt_agent/helper/forkserver.py), as the Manager, the Executor and the
image store rely on it: subclassed with fixtures `helper` (the implementation) and `lower` (the image layers a
LaunchSpec names: a busybox tree for the real fork server, whatever the fake ignores).

Each container a test starts is killed at its end if it still runs, and its monitor's exit waited for.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from quilt_agent.errors import ImageInvalid
from quilt_agent.helper import protocol
from quilt_agent.helper.forkserver import ForkServer
from quilt_agent.helper.protocol import (
    Abort, ExecExited, ExecFailed, ExecSetupFailed, ExecSpawned, ExecSpec, Go, LaunchSpec, MonitorForked, Spawned, Started,
)
from quilt_agent.model import NAMESPACES
from tests.contract.protocols import missing_methods
from tests.imagetools import tar_layer

DEADLINE = 10.0  # seconds for a helper to answer, or a process to end, before the test fails
ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root")
M = TypeVar("M")


async def receive(sock: socket.socket, *expected: type[M]) -> M:
    loop = asyncio.get_running_loop()
    return protocol.decode(await asyncio.wait_for(loop.sock_recv(sock, protocol.MAX_MESSAGE), DEADLINE), *expected)


async def readable(fd: int) -> None:
    """Until fd is readable: a pidfd once its process has exited, a pipe once it has data or its end."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, DEADLINE)
    finally:
        loop.remove_reader(fd)


async def receive_with_fds(sock: socket.socket, *expected: type[M]) -> tuple[M, list[int]]:
    await readable(sock.fileno())
    data, fds, _flags, _addr = socket.recv_fds(sock, protocol.MAX_MESSAGE, 4)
    return protocol.decode(data, *expected), fds


def exited(pidfd: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return True
    return False


async def read_to_end(fd: int) -> bytes:
    """What a pipe holds until all its writers are gone; fd is closed."""
    chunks = []
    os.set_blocking(fd, False)
    try:
        while True:
            await readable(fd)
            if not (chunk := os.read(fd, 65536)):
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


@dataclass
class Pipe:
    read: int
    write: int

    @classmethod
    def make(cls) -> Pipe:
        return cls(*os.pipe2(os.O_CLOEXEC))

    def close_write(self) -> None:
        if self.write >= 0:
            os.close(self.write)
            self.write = -1


@dataclass
class Container:
    """One spawn as the agent sees it: the socket to its monitor, what MonitorForked and Spawned said, pidfds of
    both."""

    spec: LaunchSpec
    sock: socket.socket
    forked: MonitorForked
    spawned: Spawned
    monitor_pidfd: int
    init_pidfd: int

    async def go(self) -> Started | ExecFailed:
        protocol.send(self.sock, Go())
        return await receive(self.sock, Started, ExecFailed)

    async def monitor_exit(self) -> None:
        await readable(self.monitor_pidfd)

    def exit_status(self) -> dict:
        return json.loads(Path(self.spec.exit_file).read_text())


@dataclass
class Containers:
    helper: ForkServer
    lower: str
    directory: Path
    started: list[Container] = field(default_factory=list)

    def spec(self, command: Sequence[str]) -> LaunchSpec:
        n = len(self.started)
        base = self.directory / f"c{n}"
        for sub in ("upper", "work", "merged"):
            (base / sub).mkdir(parents=True)
        container_id = hashlib.sha256(str(base).encode()).hexdigest()
        return LaunchSpec(container_id=container_id, name=f"contract{n}", unit=f"quilt-{container_id}.scope",
                          lower=self.lower, upper=str(base / "upper"), work=str(base / "work"),
                          merged=str(base / "merged"), exit_file=str(base / "exit.json"), command=tuple(command),
                          env=ENV, workdir="/", user="", hostname=f"contract{n}", namespaces=NAMESPACES)

    async def spawn(self, command: Sequence[str], stdio: tuple[int, ...] = ()) -> Container:
        spec = self.spec(command)
        sock = await self.helper.spawn(spec, stdio)
        try:
            forked = await receive(sock, MonitorForked)
            spawned = await receive(sock, Spawned)
        except BaseException:
            sock.close()
            raise
        monitor_pidfd = os.pidfd_open(forked.monitor_pid)
        init_pidfd = os.pidfd_open(spawned.init_pid)
        container = Container(spec, sock, forked, spawned, monitor_pidfd, init_pidfd)
        self.started.append(container)
        return container

    async def running(self, command: Sequence[str]) -> Container:
        container = await self.spawn(command)
        assert await container.go() == Started()
        return container

    async def close(self) -> None:
        for c in self.started:
            c.sock.close()  # before Go: the monitor gives up
            if not exited(c.init_pidfd):
                signal.pidfd_send_signal(c.init_pidfd, signal.SIGKILL)
            await c.monitor_exit()
            os.close(c.monitor_pidfd)
            os.close(c.init_pidfd)


class HelperContract:
    """Subclasses provide the fixtures `helper` (a ForkServer) and `lower` (a LaunchSpec's image layers)."""

    @pytest.fixture
    async def containers(self, helper: ForkServer, lower: str, tmp_path: Path) -> AsyncIterator[Containers]:
        containers = Containers(helper, lower, tmp_path)
        yield containers
        await containers.close()

    def exec_spec(self, command: Sequence[str]) -> ExecSpec:
        return ExecSpec(container_id="c" * 64, name="contract", command=tuple(command), env=ENV, workdir="/",
                        user="", namespaces=NAMESPACES, tty=False, cgroup_procs=())

    async def execute(self, helper: ForkServer, container: Container, command: Sequence[str],
                      stdin: bytes = b"") -> tuple[socket.socket, Pipe, Pipe]:
        """Exec command in container, stdin given (then closed), stdout and stderr pipes: the socket to the
        helper and the pipes, their write ends closed."""
        inp, out, err = Pipe.make(), Pipe.make(), Pipe.make()
        os.write(inp.write, stdin)
        inp.close_write()
        try:
            sock = await helper.execute(self.exec_spec(command), inp.read, out.write, err.write, container.init_pidfd)
        finally:
            os.close(inp.read)
            out.close_write()
            err.close_write()
        return sock, out, err

    async def test_it_offers_every_method_of_the_protocol(self, helper: ForkServer) -> None:
        assert missing_methods(ForkServer, helper) == []
        assert helper.pid > 0

    # --- containers --------------------------------------------------------------------------------

    async def test_the_monitor_names_itself_then_the_init_the_agent_opens_pidfds_on(
            self, containers: Containers) -> None:
        c = await containers.spawn(["true"])
        monitor_pid, init_pid = c.forked.monitor_pid, c.spawned.init_pid
        assert monitor_pid != init_pid
        assert not exited(c.monitor_pidfd) and not exited(c.init_pidfd)
        with open(f"/proc/{monitor_pid}/stat") as f:  # the start time recover() matches against
            assert int(f.read().rsplit(")", 1)[1].split()[19]) == c.forked.monitor_start
        with open(f"/proc/{init_pid}/status") as f:
            ppid = next(line.split()[1] for line in f if line.startswith("PPid:"))
        assert int(ppid) == monitor_pid  # the monitor reaps the init and learns how it ended

    async def test_go_runs_the_command_and_its_exit_code_is_recorded_before_the_monitor_exits(
            self, containers: Containers) -> None:
        before = time.time_ns() // 1000
        c = await containers.spawn(["sh", "-c", "exit 3"])
        assert await c.go() == Started()
        await c.monitor_exit()
        status = c.exit_status()
        assert (status["exit_code"], status["exit_signal"], status["failed"], status["oom_killed"]) == (3, 0, False,
                                                                                                      False)
        assert before <= status["finished_at"] <= time.time_ns() // 1000

    async def test_a_missing_command_fails_with_127_and_a_reason_naming_it(self, containers: Containers) -> None:
        c = await containers.spawn(["no-such-command-here"])
        failed = await c.go()
        assert isinstance(failed, ExecFailed)
        assert failed.exit_code == 127 and "no-such-command-here" in failed.reason
        await c.monitor_exit()
        assert c.exit_status()["exit_code"] == 127

    async def test_abort_before_go_kills_the_init_unrun_and_records_nothing(self, containers: Containers) -> None:
        out = Pipe.make()
        c = await containers.spawn(["echo", "ran"], (out.write, out.write, out.write))
        out.close_write()
        protocol.send(c.sock, Abort("no scope"))
        await c.monitor_exit()
        assert exited(c.init_pidfd)
        assert await read_to_end(out.read) == b""
        assert not Path(c.spec.exit_file).exists()

    async def test_the_agent_hanging_up_before_go_is_an_abort(self, containers: Containers) -> None:
        out = Pipe.make()
        c = await containers.spawn(["echo", "ran"], (out.write, out.write, out.write))
        out.close_write()
        c.sock.close()
        await c.monitor_exit()
        assert exited(c.init_pidfd)
        assert await read_to_end(out.read) == b""
        assert not Path(c.spec.exit_file).exists()

    async def test_a_sigkilled_init_is_recorded_as_signal_9(self, containers: Containers) -> None:
        c = await containers.running(["sleep", "60"])
        signal.pidfd_send_signal(c.init_pidfd, signal.SIGKILL)
        await c.monitor_exit()
        status = c.exit_status()
        assert (status["exit_code"], status["exit_signal"]) == (137, 9)

    async def test_the_given_stdin_stdout_and_stderr_are_the_commands(self, containers: Containers) -> None:
        inp, out, err = Pipe.make(), Pipe.make(), Pipe.make()
        os.write(inp.write, b"ping\n")
        inp.close_write()
        c = await containers.spawn(["sh", "-c", 'read line; echo "out $line"; echo err >&2'],
                                   (inp.read, out.write, err.write))
        for fd in (inp.read, out.write, err.write):
            os.close(fd)  # the caller's copies: the helper has its own
        assert await c.go() == Started()
        assert await read_to_end(out.read) == b"out ping\n"
        assert await read_to_end(err.read) == b"err\n"
        await c.monitor_exit()
        assert c.exit_status()["exit_code"] == 0

    # --- execs -------------------------------------------------------------------------------------

    async def test_exec_in_a_running_container_gives_its_output_and_exit_code(self, helper: ForkServer,
                                                                              containers: Containers) -> None:
        c = await containers.running(["sleep", "60"])
        sock, out, err = await self.execute(helper, c, ["sh", "-c", 'read line; echo "got $line"; echo oops >&2; '
                                                                    'exit 4'], b"hi\n")
        with sock:
            spawned, fds = await receive_with_fds(sock, ExecSpawned)
            assert spawned.pid > 0 and len(fds) == 1  # a pidfd of the command, for the agent's timeout
            os.close(fds[0])
            assert await receive(sock, ExecExited) == ExecExited(4, 0)
        assert await read_to_end(out.read) == b"got hi\n"
        assert await read_to_end(err.read) == b"oops\n"
        assert not exited(c.init_pidfd)

    async def test_exec_of_a_missing_command_exits_127_and_says_so_on_its_stderr(
            self, helper: ForkServer, containers: Containers) -> None:
        c = await containers.running(["sleep", "60"])
        sock, out, err = await self.execute(helper, c, ["no-such-command-here"])
        with sock:
            _, fds = await receive_with_fds(sock, ExecSpawned)
            for fd in fds:
                os.close(fd)
            assert await receive(sock, ExecExited) == ExecExited(127, 0)
        assert await read_to_end(out.read) == b""
        assert b"no-such-command-here" in await read_to_end(err.read)

    async def test_an_exec_killed_through_its_pidfd_ends_with_signal_9(self, helper: ForkServer,
                                                                       containers: Containers) -> None:
        c = await containers.running(["sleep", "60"])
        sock, out, err = await self.execute(helper, c, ["sleep", "60"])
        with sock:
            _, (pidfd,) = await receive_with_fds(sock, ExecSpawned)
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            finally:
                os.close(pidfd)
            assert await receive(sock, ExecExited) == ExecExited(137, 9)
        for pipe in (out, err):
            os.close(pipe.read)

    async def test_an_exec_into_a_container_whose_init_has_exited_is_refused_as_gone(
            self, helper: ForkServer, containers: Containers) -> None:
        c = await containers.running(["true"])
        await c.monitor_exit()
        sock, out, err = await self.execute(helper, c, ["true"])
        with sock:
            failed = await receive(sock, ExecSetupFailed)
        assert failed.kind == "gone"
        for pipe in (out, err):
            os.close(pipe.read)

    # --- user namespaces ---------------------------------------------------------------------------

    async def test_user_namespace_gives_a_namespace_with_the_map(self, helper: ForkServer) -> None:
        fd = await asyncio.to_thread(helper.user_namespace, "0 600000 65536\n")
        try:
            assert os.readlink(f"/proc/self/fd/{fd}").startswith("user:[")
            assert os.readlink(f"/proc/self/fd/{fd}") != os.readlink("/proc/self/ns/user")
        finally:
            os.close(fd)

    async def test_a_map_the_kernel_refuses_is_an_os_error(self, helper: ForkServer) -> None:
        with pytest.raises(OSError):
            await asyncio.to_thread(helper.user_namespace, "0 600000 4294967295\n")

    # --- extraction --------------------------------------------------------------------------------

    async def test_extract_unpacks_a_layer_and_names_its_digest(self, helper: ForkServer, tmp_path: Path) -> None:
        layer = tar_layer(("etc/", None), ("etc/motd", b"hello\n"))
        (tmp_path / "layer.tar").write_bytes(layer)
        (tmp_path / "dest").mkdir()
        got = await asyncio.to_thread(helper.extract, tmp_path / "layer.tar", tmp_path / "dest")
        digest = f"sha256:{hashlib.sha256(layer).hexdigest()}"
        assert (got.digest, got.diff_id, got.size, got.compression) == (digest, digest, len(layer), "none")
        assert (tmp_path / "dest/etc/motd").read_bytes() == b"hello\n"

    async def test_extract_of_a_file_that_is_no_tarball_raises_image_invalid_with_its_label(
            self, helper: ForkServer, tmp_path: Path) -> None:
        (tmp_path / "layer.tar").write_bytes(b"not a tar at all" * 64)
        (tmp_path / "dest").mkdir()
        with pytest.raises(ImageInvalid, match="'broken'"):
            await asyncio.to_thread(helper.extract, tmp_path / "layer.tar", tmp_path / "dest", label="broken")
