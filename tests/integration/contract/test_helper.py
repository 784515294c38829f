"""The fork server contract (tests/contract/helper.py) against the real Zygote: containers with their namespaces,
an overlay over a busybox tree, seccomp, and execs that enter them, in the test host (no scope: the processes stay
in the test's cgroup, which the contract does not look at).
"""
from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Iterator

import pytest

from quilt_agent.helper import zygote
from quilt_agent.helper.zygote import Zygote
from tests.contract.helper import Containers, HelperContract
from tests.imagetools import busybox
from tests.integration.waiting import until


@pytest.fixture(scope="session")
def fork_server() -> Iterator[Zygote]:
    """Forked once, from the test's main thread, as the agent forks it before its first thread."""
    server = zygote.start()
    yield server
    server.sock.close()  # its recv ends: it exits
    os.waitpid(server.pid, 0)


@pytest.fixture(scope="session")
def busybox_layer(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image's one layer, unpacked: busybox's tree (tmpfs in the test host, which overlayfs accepts)."""
    root = tmp_path_factory.mktemp("layers") / "busybox"
    busybox(root)
    return str(root)


class TestZygote(HelperContract):
    @pytest.fixture
    def helper(self, fork_server: Zygote) -> Zygote:
        # A handle per test on the one server: the handle's send lock belongs to the test's own event loop.
        return Zygote(fork_server.pid, fork_server.sock)

    @pytest.fixture
    def lower(self, busybox_layer: str) -> str:
        return busybox_layer


# --- the real fork server's spare child ----------------------------------------------------------------


def spares(server: Zygote) -> set[int]:
    """The fork server's children that still bear its name: idle ones (a monitor and an exec helper rename
    themselves first thing, and no other request is under way in these tests)."""
    own = Path(f"/proc/{server.pid}/comm").read_text()
    found = set()
    for pid in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split():
        try:
            if Path(f"/proc/{pid}/comm").read_text() == own:
                found.add(int(pid))
        except FileNotFoundError:
            pass  # ended meanwhile
    return found


async def one_spare(server: Zygote, other_than: int = 0) -> int:
    (spare,) = await until(lambda: (found := spares(server)) and len(found) == 1 and other_than not in found
                           and found, lambda: f"the fork server's idle children: {spares(server)}")
    return spare


async def ended(pid: int) -> None:
    await until(lambda: not Path(f"/proc/{pid}").exists(), f"the child {pid} never ended")


async def test_a_request_is_served_by_the_child_forked_before_it_and_the_next_waits_already(
        fork_server: Zygote) -> None:
    helper = Zygote(fork_server.pid, fork_server.sock)
    waiting = await one_spare(fork_server)
    os.close(await asyncio.to_thread(helper.user_namespace, "0 600000 65536\n"))
    # The one that waited served it and ended; another was forked for the next request.
    await one_spare(fork_server, other_than=waiting)
    await ended(waiting)


async def test_a_waiting_child_killed_from_outside_is_replaced_for_the_request(fork_server: Zygote) -> None:
    helper = Zygote(fork_server.pid, fork_server.sock)
    waiting = await one_spare(fork_server)
    os.kill(waiting, signal.SIGKILL)
    await ended(waiting)
    fd = await asyncio.to_thread(helper.user_namespace, "0 600000 65536\n")
    try:
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("user:[")
    finally:
        os.close(fd)
    await one_spare(fork_server, other_than=waiting)


async def test_a_child_forked_for_a_request_holds_only_the_copies_it_was_sent(fork_server: Zygote,
                                                                                busybox_layer: str,
                                                                                tmp_path: Path) -> None:
    # With no child waiting (killed here), the one forked for the request would inherit the fork server's copy
    # of the request's fds besides the ones it is sent: a second reference to the agent's socket, for one.
    helper = Zygote(fork_server.pid, fork_server.sock)
    waiting = await one_spare(fork_server)
    os.kill(waiting, signal.SIGKILL)
    await ended(waiting)
    containers = Containers(helper, busybox_layer, tmp_path)
    try:
        c = await containers.spawn(["true"])
        fds = Path(f"/proc/{c.forked.monitor_pid}/fd")
        held = [os.readlink(fds / fd) for fd in os.listdir(fds)]
        sockets = [target for target in held if target.startswith("socket:")]
        assert sockets and len(sockets) == len(set(sockets)), held
    finally:
        await containers.close()
