"""The root filesystem's own mount points: an image cannot point /proc, /sys or /dev somewhere else, nor make the
notify socket's directory (/run/notify) land outside the container's root.

The notify tests start containers through the real fork server (helper/zygote.py), with the agent's notify
sockets (quilt_agent/notify.py) in the test's own loop: the lowest level at which LaunchSpec.notify_dir exists.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError
from quilt_agent.helper import zygote
from quilt_agent.helper.protocol import NOTIFY_TARGET, Go, LaunchSpec, MonitorForked, Spawned, Started, send
from quilt_agent.model import NAMESPACES
from quilt_agent.notify import CONTAINER_SOCKET, SOCKET_NAME, Notification, NotifySockets
from quilt_agent.userns import POOL_FIRST
from tests.contract.helper import DEADLINE, ENV, Pipe, exited, read_to_end, readable, receive
from tests.imagetools import busybox


def image_with(busybox_tar: Path, out: Path, name: str, link: str) -> Path:
    """busybox with /NAME replaced by a symlink to link."""
    with tarfile.open(busybox_tar) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            top = member.name.lstrip("./").split("/")[0]
            if top != name:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        entry = tarfile.TarInfo(name)
        entry.type, entry.linkname = tarfile.SYMTYPE, link
        dst.addfile(entry)
    return out


@pytest.mark.parametrize(("name", "link"), [("proc", "/etc"), ("sys", "/tmp"), ("dev", "../../../../etc")])
async def test_a_symlinked_proc_sys_or_dev_in_the_image_is_refused(
        client: Client, busybox_tar: Path, tmp_path: Path, name: str, link: str) -> None:
    image = image_with(busybox_tar, tmp_path / f"{name}.tar", name, link)
    with pytest.raises(ClientError) as failed:
        await client.run_container(f"rootfs-{name}", str(image), ["/bin/true"])
    assert failed.value.name == "org.quilt.Runtime.Error.ContainerFailed"
    assert f"the image's /{name} is not a directory" in failed.value.message


# --- the notify socket's directory ---------------------------------------------------------------------------------

ID_FIRST = POOL_FIRST + 65536 * 100  # a user namespace's range no container of the agent's takes in these tests
# What the container checks, one line each, then sends to its socket: busybox has no sd_notify, but its logger
# sends one datagram to /dev/log, which the container points at the socket (the text before the first newline is
# syslog's header, a line parse() skips).
PROBE = f"""
stat -c 'socket=%F %a %u' {CONTAINER_SOCKET}
touch {NOTIFY_TARGET}/made 2>&1; echo touch=$?
rm {NOTIFY_TARGET}/{SOCKET_NAME} 2>&1; echo rm=$?
echo mount=$(grep " $MOUNTED_RUN/notify " /proc/self/mountinfo | cut -d' ' -f6)
ln -s {CONTAINER_SOCKET} /dev/log && logger -t probe "$(printf 'x\\nREADY=1\\nSTATUS=sent from inside')"
echo logger=$?
"""


@pytest.fixture(scope="module")
def fork_server() -> Iterator[zygote.Zygote]:
    """Forked from the test's main thread, as the agent forks its own before its first thread."""
    server = zygote.start()
    yield server
    server.sock.close()  # its recv ends: it exits
    os.waitpid(server.pid, 0)


@pytest.fixture(scope="module")
def busybox_layer(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("layers") / "busybox"
    busybox(root)
    return str(root)


def run_layer(tmp_path: Path, link: str) -> str:
    """A layer of one entry: /run, a symlink to link."""
    layer = tmp_path / "run-layer"
    layer.mkdir()
    (layer / "run").symlink_to(link)
    return str(layer)


@dataclass
class Running:
    """A started container: the write end of its stdin, the read end of its output (stdout and stderr)."""

    spec: LaunchSpec
    stdin: int
    output: int
    init: int
    monitor: int

    async def lines(self) -> list[str]:
        """Its output lines, once it has exited 0 (killed on the way out, if it has not)."""
        try:
            os.close(self.stdin)
            self.stdin = -1
            output, self.output = self.output, -1
            text = (await read_to_end(output)).decode()  # closes it
            await readable(self.monitor)
        finally:
            await self.end()
        assert '"exit_code": 0' in Path(self.spec.exit_file).read_text(), text
        return text.splitlines()

    async def end(self) -> None:
        """Killed if it still runs, and what is left of its fds closed; again: nothing."""
        if self.init >= 0 and not exited(self.init):
            signal.pidfd_send_signal(self.init, signal.SIGKILL)
            await readable(self.monitor)
        for fd in (self.init, self.monitor, self.stdin, self.output):
            if fd >= 0:
                os.close(fd)
        self.init = self.monitor = self.stdin = self.output = -1


async def start(fork_server: zygote.Zygote, tmp_path: Path, lower: str, notify_dir: Path, script: str,
                env: tuple[str, ...] = (), id_first: int = -1, read_only: bool = False) -> Running:
    """sh -c script in a container with notify_dir bound, started (Go answered by Started)."""
    for sub in ("upper", "work", "merged"):
        (tmp_path / sub).mkdir()
    container_id = hashlib.sha256(str(tmp_path).encode()).hexdigest()
    spec = LaunchSpec(container_id=container_id, name="notify", unit=f"quilt-{container_id}.scope", lower=lower,
                      upper=str(tmp_path / "upper"), work=str(tmp_path / "work"), merged=str(tmp_path / "merged"),
                      exit_file=str(tmp_path / "exit.json"), command=("sh", "-c", script), env=(*ENV, *env),
                      workdir="/", user="", hostname="notify", namespaces=NAMESPACES,
                      id_map=f"0 {id_first} 65536\n" if id_first >= 0 else "", id_first=id_first,
                      read_only=read_only, notify_dir=str(notify_dir))
    helper = zygote.Zygote(fork_server.pid, fork_server.sock)  # a handle of this test's loop
    inp, out = Pipe.make(), Pipe.make()
    try:
        sock = await helper.spawn(spec, (inp.read, out.write, out.write))
    finally:
        os.close(inp.read)
        out.close_write()
    with sock:
        forked = await receive(sock, MonitorForked)
        spawned = await receive(sock, Spawned)
        running = Running(spec, inp.write, out.read, os.pidfd_open(spawned.init_pid),
                          os.pidfd_open(forked.monitor_pid))
        send(sock, Go())
        try:
            assert await receive(sock, Started) == Started()
        except BaseException:
            await running.end()
            raise
    return running


class Received:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Notification] = asyncio.Queue()

    def __call__(self, container_id: str, notification: Notification) -> None:
        self.queue.put_nowait(notification)


@pytest.mark.parametrize(("userns", "read_only"), [(False, False), (True, False), (False, True)],
                         ids=["host-ids", "user-namespace", "read-only-root"])
async def test_the_container_sends_on_its_notify_socket_through_a_read_only_bind_of_its_directory(
        fork_server: zygote.Zygote, busybox_layer: str, tmp_path: Path, userns: bool, read_only: bool) -> None:
    sockets = NotifySockets(tmp_path / "notify")
    received = Received()
    id_first = ID_FIRST if userns else -1
    try:
        directory = sockets.open("probe", max(id_first, 0), received)
        running = await start(fork_server, tmp_path, busybox_layer, directory, PROBE, ("MOUNTED_RUN=/run",), id_first,
                              read_only)
        lines = await running.lines()
        # The container's root owns the socket (uid 0 inside, whichever host id that is) and anyone in it may send.
        assert lines[0] == "socket=socket 666 0", lines
        assert lines[1].endswith("Read-only file system") and lines[2] == "touch=1", lines
        assert lines[3].endswith("Read-only file system") and lines[4] == "rm=1", lines
        assert lines[5].split("=", 1)[1].split(",")[:4] == ["ro", "nosuid", "nodev", "noexec"], lines
        assert lines[-1] == "logger=0", lines
        got = await asyncio.wait_for(received.queue.get(), DEADLINE)
        assert (got.ready, got.status) == (True, "sent from inside")
        assert got.sender_uid == max(id_first, 0)
        assert sorted(os.listdir(directory)) == [SOCKET_NAME]  # nothing the container made
    finally:
        sockets.close_all()


@pytest.mark.parametrize("link", ["/etc", "../../../../../../../../../../etc"])
async def test_an_image_whose_run_is_a_symlink_gets_the_notify_directory_inside_its_root(
        fork_server: zygote.Zygote, busybox_layer: str, tmp_path: Path, link: str) -> None:
    assert not os.path.lexists("/etc/notify")  # the test host's own /etc, which the image's link names
    sockets = NotifySockets(tmp_path / "notify")
    received = Received()
    try:
        directory = sockets.open("probe", 0, received)
        lower = f"{run_layer(tmp_path, link)}:{busybox_layer}"
        running = await start(fork_server, tmp_path, lower, directory, PROBE, ("MOUNTED_RUN=/etc",))
        lines = await running.lines()
        assert lines[0] == "socket=socket 666 0", lines  # /run/notify/notify.sock, through the image's link
        assert lines[5].split("=", 1)[1].startswith("ro,"), lines  # mounted at the container's /etc/notify
        assert (await asyncio.wait_for(received.queue.get(), DEADLINE)).ready
    finally:
        sockets.close_all()
    assert not os.path.lexists("/etc/notify")
    assert (tmp_path / "upper/etc/notify").is_dir()  # the mount point, made in the container's own layer


async def test_a_running_container_reaches_the_socket_a_restarted_agent_binds_anew(
        fork_server: zygote.Zygote, busybox_layer: str, tmp_path: Path) -> None:
    before, after = NotifySockets(tmp_path / "notify"), NotifySockets(tmp_path / "notify")
    old, new = Received(), Received()
    try:
        directory = before.open("probe", 0, old)
        script = (f"echo up; read go; ln -s {CONTAINER_SOCKET} /dev/log && "
                  "logger \"$(printf 'x\\nSTATUS=after the restart')\"; echo logger=$?")
        running = await start(fork_server, tmp_path, busybox_layer, directory, script)
        try:
            await readable(running.output)  # "up": its /run/notify is mounted
            before.close_all()  # the agent stops; the container runs on
            after.open("probe", 0, new)
            os.write(running.stdin, b"go\n")
            assert (await running.lines())[-1] == "logger=0"
        finally:
            await running.end()
        assert (await asyncio.wait_for(new.queue.get(), DEADLINE)).status == "after the restart"
        assert old.queue.empty()
    finally:
        before.close_all()
        after.close_all()
