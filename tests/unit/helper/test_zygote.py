"""The agent's side of the fork server's socket: a request sent from the event loop never blocks it."""
import asyncio
import os
import socket

import pytest

from quilt_agent.helper import protocol
from quilt_agent.helper.protocol import ExecSpec
from quilt_agent.helper.zygote import MAX_FDS, Zygote

SPEC = ExecSpec(container_id="c" * 64, name="web", command=("/bin/true",), env=(), workdir="/", user="",
                namespaces=("mnt",), tty=False, cgroup_procs=())


def fill(sock: socket.socket) -> int:
    """Send requests until the peer's queue has no room; return how many went."""
    sent = 0
    while True:
        try:
            sock.send(b"filler", socket.MSG_DONTWAIT)
        except BlockingIOError:
            return sent
        sent += 1


async def test_a_request_waits_for_room_in_the_queue_without_blocking_the_loop() -> None:
    agent, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with agent, server:
        zygote = Zygote(pid=os.getpid(), sock=agent)
        queued = fill(agent)
        r, w = os.pipe()
        try:
            request = asyncio.create_task(zygote.execute(SPEC, r, w, w, r))
            ticks = 0
            while ticks < 20:  # the loop runs other callbacks while the request waits
                await asyncio.sleep(0)
                ticks += 1
            assert not request.done()
            for _ in range(queued):
                server.recv(protocol.MAX_MESSAGE)
            ours = await asyncio.wait_for(request, 10)
        finally:
            os.close(r)
            os.close(w)
        with ours:
            data, fds, _flags, _addr = socket.recv_fds(server, protocol.MAX_MESSAGE, MAX_FDS)
            assert protocol.decode(data, ExecSpec) == SPEC
            assert len(fds) == 5 and not ours.getblocking()
            peer = socket.socket(fileno=fds[0])
            for fd in fds[1:]:
                os.close(fd)
            with peer:  # the first fd is the other end of the socket the caller got
                peer.send(b"hello")
                assert ours.recv(16) == b"hello"
        assert agent.getblocking()  # the worker threads' extracts still block in send, as they should


async def test_a_cancelled_request_sends_nothing_and_leaves_no_fd() -> None:
    agent, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with agent, server:
        zygote = Zygote(pid=os.getpid(), sock=agent)
        queued = fill(agent)
        before = set(os.listdir("/proc/self/fd"))
        request = asyncio.create_task(zygote.execute(SPEC, 0, 1, 2, 0))
        await asyncio.sleep(0)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert set(os.listdir("/proc/self/fd")) == before
        got = [server.recv(protocol.MAX_MESSAGE) for _ in range(queued)]
        assert set(got) == {b"filler"}
        with pytest.raises(BlockingIOError):
            server.recv(protocol.MAX_MESSAGE, socket.MSG_DONTWAIT)
