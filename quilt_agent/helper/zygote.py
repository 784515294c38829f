"""The fork server: forked at agent start, before any thread exists, it forks one monitor per
container, one exec helper per exec, and one extractor per image tarball to unpack (each forked ahead of its
request: _serve).

Forking from the threaded agent (aiosqlite runs a thread) could copy a lock
held by another thread; the fork server has a single thread, so its children
start clean.
"""
from __future__ import annotations

import array
import asyncio
import gc
import os
import select
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from quilt_agent import errors
from quilt_agent.helper import enter, monitor, protocol, seccomp, syscalls, userns
from quilt_agent.helper.process import SetupError
from quilt_agent.helper.protocol import (
    ExecSpec, ExtractDone, ExtractLayer, ExtractProgress, LaunchSpec, MakeUserNamespace, UserNamespaceMade,
)
from quilt_agent.images import tarball

# The most fds a request carries: an exec's socket, stdin, stdout, stderr and the container init's pidfd.
MAX_FDS = 5
# How long the fork server waits, after a request, for the next one before it forks the child for it (a start's
# fork phase in the test host, median of 50, three rounds: 6.3-7.2 ms forked at once, 6.0-6.3 ms after 10 ms).
SPARE_AFTER = 0.010
# Errors an extractor may report, by name, raised again in the agent.
_EXTRACT_ERRORS = {cls.__name__: cls for cls in (errors.ImageInvalid, errors.NoSuchImage, errors.InvalidArgument)}


@dataclass
class Zygote:
    """The agent's handle on the fork server."""

    pid: int
    sock: socket.socket
    # The event loop's sends, one at a time: a wait for room in the socket is one add_writer on its fd.
    _loop_send: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False, compare=False)

    def _request(self, message: object, fds: tuple[int, ...] = ()) -> socket.socket:
        """Send a request from a worker thread, blocking while the fork server's queue is full."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # One datagram with its fds: sends from several threads cannot interleave.
            socket.send_fds(self.sock, [protocol.encode(message)], [theirs.fileno(), *fds])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    async def _request_from_loop(self, message: object, fds: tuple[int, ...] = ()) -> socket.socket:
        """Send a request from the event loop, which never waits in send: the fork server reads one request at a
        time, forking for each, so a burst can fill its queue. MSG_DONTWAIT leaves the socket blocking for the
        worker threads' extracts; a SOCK_SEQPACKET send is whole or nothing, so a retry resends it all."""
        loop = asyncio.get_running_loop()
        data = protocol.encode(message)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            async with self._loop_send:
                while True:
                    try:
                        # Not socket.send_fds: Python 3.11's drops its flags argument.
                        self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                    array.array("i", [theirs.fileno(), *fds]))], socket.MSG_DONTWAIT)
                        break
                    except BlockingIOError:
                        await _writable(loop, self.sock)
            ours.setblocking(False)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    async def spawn(self, spec: LaunchSpec, stdio: tuple[int, ...] = ()) -> socket.socket:
        """Fork a monitor for spec; return the agent's end of the socket to it, non-blocking. stdio: the init's
        stdin, stdout and stderr, copied into the request (the caller still owns its own); none: /dev/null and the
        journal."""
        return await self._request_from_loop(spec, stdio)

    async def execute(self, spec: ExecSpec, stdin: int, stdout: int, stderr: int, init_pidfd: int) -> socket.socket:
        """Fork an exec helper for spec; the fds are copied into the request (the caller still owns its own).
        Returns the agent's end of the socket to the helper, non-blocking."""
        return await self._request_from_loop(spec, (stdin, stdout, stderr, init_pidfd))

    def extract(self, path: Path, dest: Path, *, offset: int = 0, size: int | None = None, label: str = "",
                progress: Callable[[int], None] | None = None) -> tarball.Extracted:
        """tarball.extract, done by a child of the fork server. Blocking: call it from a worker thread."""
        request = ExtractLayer(str(path), str(dest), offset, -1 if size is None else size, label)
        with self._request(request) as ours:
            while isinstance(done := protocol.receive(ours, ExtractProgress, ExtractDone), ExtractProgress):
                if progress is not None:
                    progress(done.done)
        if not done.error:
            return tarball.Extracted(digest=done.digest, diff_id=done.diff_id, size=done.size,
                                     compression=done.compression, skipped=tuple(map(tuple, done.skipped)),
                                     skipped_count=done.skipped_count)
        if done.error in _EXTRACT_ERRORS:
            raise _EXTRACT_ERRORS[done.error](done.message)
        if done.error == "OSError":
            # The extractor's paths are inside its chroot: name the layer's directory, on the same filesystem.
            raise OSError(done.errno, done.message, str(dest))
        if done.error:
            raise RuntimeError(done.message)


    def user_namespace(self, id_map: str) -> int:
        """An fd of a new user namespace with id_map, made by a child of the fork server (the agent has threads:
        it cannot unshare one, nor fork). Blocking: call it from a worker thread."""
        with self._request(MakeUserNamespace(id_map)) as ours:
            data, fds, _flags, _addr = socket.recv_fds(ours, protocol.MAX_MESSAGE, 1)
        made = protocol.decode(data, UserNamespaceMade)
        if made.error or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise OSError(made.error or "the fork server sent no user namespace")
        return fds[0]


async def _writable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready = loop.create_future()
    loop.add_writer(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_writer(sock.fileno())


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
    # Every page a child writes is copied: keep the cyclic GC from walking (and writing to) all the
    # objects the children inherit.
    seccomp.prepare()  # once: each container's init and each exec only installs the program
    gc.collect()
    gc.freeze()
    # Each request goes to a child forked before it came (the spare): a fork of this process and Python's work
    # after it in the child take 2-2.5 ms here, which a start or an exec would otherwise wait for.
    spare = _try_fork_spare(sock)
    while True:
        if spare is None:
            # Not forked at once: the monitor just handed a request is busy with the start, and on a host of few
            # cores the fork would take a core from it. Forked once no request came for a moment, or for the
            # request that came (before it is read: the child must not inherit the request's fds).
            ready, _, _ = select.select([sock], [], [], SPARE_AFTER)
            spare = _try_fork_spare(sock)
            if not ready:
                continue
        data, fds, _flags, _addr = socket.recv_fds(sock, protocol.MAX_MESSAGE, MAX_FDS)
        if not data:
            return  # the agent is gone
        try:
            _hand(sock, spare, data, fds)
        finally:
            for fd in fds:
                os.close(fd)  # the agent's end of the request's socket sees its end if it was not handed
            if spare is not None:
                spare.close()
            spare = None


def _hand(agent: socket.socket, spare: socket.socket | None, data: bytes, fds: list[int]) -> None:
    """Hand a request to the spare; to a child forked for it when there is none or the spare died (killed from
    outside). A fork that fails leaves the request unserved: the agent sees its socket end."""
    if spare is not None:
        try:
            socket.send_fds(spare, [data], fds)
            return
        except (BrokenPipeError, ConnectionRefusedError, ConnectionResetError):
            pass  # it died: a new child serves the request
        except OSError as e:
            sys.stderr.write(f"quilt fork server: cannot hand a request to its child: {e}\n")
            return
    child = _try_fork_spare(agent, fds)
    if child is None:
        return
    try:
        socket.send_fds(child, [data], fds)
    except OSError as e:
        sys.stderr.write(f"quilt fork server: cannot hand a request to its child: {e}\n")
    finally:
        child.close()


def _try_fork_spare(agent: socket.socket, inherited: list[int] | tuple[int, ...] = ()) -> socket.socket | None:
    """_fork_spare, or None when the fork fails (out of memory or processes, for a moment): said on stderr, the
    agent's journal; the server goes on."""
    try:
        return _fork_spare(agent, inherited)
    except OSError as e:
        sys.stderr.write(f"quilt fork server: cannot fork: {e}\n")
        return None


def _fork_spare(agent: socket.socket, inherited: list[int] | tuple[int, ...] = ()) -> socket.socket:
    """A child that waits for one request (as the fork server gets it from the agent) and serves it; the fork
    server's end of the socket it waits on. inherited: fds of the fork server's that the child closes first (a
    request's, which it is sent again)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        raise
    if pid != 0:
        theirs.close()
        return ours
    status = 1
    try:
        for fd in inherited:
            os.close(fd)
        agent.close()
        ours.close()
        # An idle spare ends with the fork server; the child it becomes outlives it (a monitor outlives the agent).
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server:
            return  # the fork server died before the line above
        data, fds, _flags, _addr = socket.recv_fds(theirs, protocol.MAX_MESSAGE, MAX_FDS)
        theirs.close()
        if not data:
            status = 0
            return  # the fork server is gone
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, 0)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        status = _serve_one(data, fds)
    finally:
        os._exit(status)


def _serve_one(data: bytes, fds: list[int]) -> int:
    request = protocol.decode(data, LaunchSpec, ExtractLayer, ExecSpec, MakeUserNamespace)
    peer = socket.socket(fileno=fds[0])
    if isinstance(request, LaunchSpec):
        return monitor.run(request, peer, fds[1:4] or None)
    if isinstance(request, ExecSpec):
        return enter.run(request, peer, fds[1:4], fds[4])
    if isinstance(request, MakeUserNamespace):
        return _user_namespace(request, peer)
    return _extract(request, peer)


def _user_namespace(request: MakeUserNamespace, peer: socket.socket) -> int:
    try:
        fd = userns.make(request.id_map)
    except SetupError as e:
        protocol.send(peer, UserNamespaceMade(str(e)))
        return 1
    socket.send_fds(peer, [protocol.encode(UserNamespaceMade())], [fd])
    return 0


def _extract(request: ExtractLayer, peer: socket.socket) -> int:
    def progress(done: int) -> None:
        protocol.send(peer, ExtractProgress(done))

    try:
        got = tarball.extract(Path(request.path), Path(request.dest), offset=request.offset,
                              size=None if request.size < 0 else request.size, label=request.label,
                              progress=progress)
        done = ExtractDone(digest=got.digest, diff_id=got.diff_id, size=got.size, compression=got.compression,
                           skipped=got.skipped, skipped_count=got.skipped_count)
    except errors.QuiltError as e:
        done = ExtractDone(type(e).__name__, str(e))
    except OSError as e:
        done = ExtractDone("OSError", e.strerror or str(e), e.errno or 0)
    except Exception as e:  # noqa: BLE001 - reported to the agent, which logs it
        done = ExtractDone("RuntimeError", f"{type(e).__name__}: {e}")
    protocol.send(peer, done)
    return 0
