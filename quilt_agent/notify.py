"""The agent's end of a container's NOTIFY_SOCKET (`--sdnotify container`, as Podman's): the container's service
tells it READY=1, STATUS=..., MAINPID=..., STOPPING=1 as it would tell systemd, on a datagram socket of its own.

Each container has a directory, Paths.notify/ID, holding one socket, notify.sock; the monitor binds the DIRECTORY
read-only at /run/notify in the container (helper/rootfs.py), which finds it as /run/notify/notify.sock. The
directory and not the socket, so that an agent that restarts can listen again: a socket belongs to the process that
bound it, so the new agent unlinks the old one and binds a new one at the same path, in the same directory, which
the running container's mount shows. A bind of the socket file itself would keep showing the dead agent's.

The layout's permissions: Paths.notify is 0700, the agent's alone, so no user of the host reaches a container's
socket (the container reaches it through its mount, without crossing Paths.notify); a container's directory is
0755 and its socket 0666, owned by the container's root, so that any user in the container can notify (a
service often drops root before it does).

Every path here is the agent's (under /run/quilt), never one the container or its image names; still, nothing
is followed through a symlink: a directory found where one is made is used only if it is a real directory of
the agent's, and the socket is bound through an fd of that directory.
"""
from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import re
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quilt_agent.helper.protocol import NOTIFY_TARGET

log = logging.getLogger("quilt.notify")

SOCKET_NAME = "notify.sock"
CONTAINER_SOCKET = f"{NOTIFY_TARGET}/{SOCKET_NAME}"  # the container's NOTIFY_SOCKET
MAX_DATAGRAM = 4096  # systemd's own bound on a notification; a longer one is dropped, as systemd drops it
MAX_STATUS = 1024  # characters of STATUS= kept: it ends up in a bus property and `quiltctl ps`
PER_WAKEUP = 64  # datagrams read per wakeup of the loop: a chatty container cannot starve the others
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size)  # room for the credentials only: fds sent along are not received
_NUMBER = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True)
class Notification:
    """One datagram's assignments, of the keys Quilt uses; None = not sent. sender_pid and sender_uid are the
    sender's, as the kernel saw them (SO_PASSCRED), in the agent's pid and user namespaces (0 and -1: unknown)."""

    ready: bool = False
    status: str | None = None
    mainpid: int | None = None
    stopping: bool = False
    errno: int | None = None
    sender_pid: int = 0
    sender_uid: int = -1


def parse(datagram: bytes) -> Notification:
    """sd_notify's format: newline-separated KEY=VALUE assignments. A line that is not UTF-8, holds a NUL or has
    no '=' is skipped, as is an unknown key; READY and STOPPING count only as "1"; of the other keys the first
    assignment counts, as systemd's does, and a MAINPID or ERRNO that is no number is ignored."""
    ready = stopping = False
    values: dict[str, str] = {}
    for raw in datagram.split(b"\n"):
        if b"\0" in raw:
            continue
        try:
            line = raw.decode()
        except UnicodeDecodeError:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "READY":
            ready = ready or value == "1"
        elif key == "STOPPING":
            stopping = stopping or value == "1"
        elif key in ("STATUS", "MAINPID", "ERRNO"):
            values.setdefault(key, value)
    status = values.get("STATUS")
    mainpid = _number(values.get("MAINPID"))
    return Notification(ready=ready, status=None if status is None else status[:MAX_STATUS],
                        mainpid=mainpid if mainpid else None, stopping=stopping, errno=_number(values.get("ERRNO")))


def _number(value: str | None) -> int | None:
    if value is None or not _NUMBER.fullmatch(value) or int(value) >= 1 << 31:
        return None
    return int(value)


OnMessage = Callable[[str, Notification], None]


@dataclass
class _Listening:
    sock: socket.socket
    loop: asyncio.AbstractEventLoop


class NotifySockets:
    """The notify sockets of the containers this agent runs, in directory (Paths.notify), read in its event loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._open: dict[str, _Listening] = {}

    def path(self, container_id: str) -> Path:
        """The container's directory: what the monitor binds at /run/notify (LaunchSpec.notify_dir)."""
        return self.directory / _checked(container_id)

    def open(self, container_id: str, uid: int, on_message: OnMessage) -> Path:
        """Listen on the container's socket (a new one at the same path, if it had one: after a restart of the
        agent, or a second call) and call on_message(container_id, notification) in the running loop for each
        datagram. uid: the host uid of the container's root (the first id of its range, with a user namespace of
        its own; else 0), which owns the socket. Returns the container's directory (LaunchSpec.notify_dir).
        Raises OSError if Paths.notify or the container's directory is a symlink, a file or not the agent's, and
        ValueError for an id that is not one name."""
        loop = asyncio.get_running_loop()
        directory = self.path(container_id)
        self._stop(container_id)
        top = _own_directory(self.directory, 0o700, make_parents=True)
        try:
            try:
                os.mkdir(container_id, 0o755, dir_fd=top)
            except FileExistsError:
                pass
            fd = _own_directory(directory, 0o755, dir_fd=top)
        finally:
            os.close(top)
        try:
            try:
                os.unlink(SOCKET_NAME, dir_fd=fd)
            except FileNotFoundError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            try:
                # Before bind: every datagram that can reach the socket carries its sender's credentials.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                # Through the fd of the directory checked above, never its path again (nor sun_path's 108 bytes).
                sock.bind(f"/proc/self/fd/{fd}/{SOCKET_NAME}")
                if uid != os.geteuid():
                    os.chown(SOCKET_NAME, uid, uid, dir_fd=fd, follow_symlinks=False)
                os.chmod(SOCKET_NAME, 0o666, dir_fd=fd)  # just bound in the agent's own directory: no symlink
                loop.add_reader(sock.fileno(), self._read, container_id, sock, on_message)
            except BaseException:
                sock.close()
                raise
        finally:
            os.close(fd)
        self._open[container_id] = _Listening(sock, loop)
        return directory

    def close(self, container_id: str) -> None:
        """Stop listening and remove the container's directory: the container has ended. Also for a container
        whose socket this agent never opened (one that ended while no agent ran). Failures are logged, not
        raised: the container has ended either way."""
        name = _checked(container_id)
        self._stop(container_id)
        try:
            top = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("cannot remove the notify socket of %s: %s", container_id, e)
            return
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=top)
            try:
                os.unlink(SOCKET_NAME, dir_fd=fd)
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=top)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove the notify socket of %s: %s", container_id, e)
        finally:
            os.close(top)

    def close_all(self) -> None:
        """Stop listening on every socket (the agent stops). The directories and sockets stay: the containers
        keep running, and the next agent's open() binds again where they look."""
        for container_id in list(self._open):
            self._stop(container_id)

    def _stop(self, container_id: str) -> None:
        listening = self._open.pop(container_id, None)
        if listening is None:
            return
        if not listening.loop.is_closed():
            listening.loop.remove_reader(listening.sock.fileno())
        listening.sock.close()

    def _read(self, container_id: str, sock: socket.socket, on_message: OnMessage) -> None:
        """The loop's reader: the datagrams waiting, at most PER_WAKEUP (the loop calls again while more wait).
        Never raises: a container's garbage, or on_message's failure, costs its datagram only."""
        for _ in range(PER_WAKEUP):
            listening = self._open.get(container_id)
            if listening is None or listening.sock is not sock:  # closed, or opened again, by on_message
                return
            try:
                data, ancillary, flags, _ = sock.recvmsg(MAX_DATAGRAM, _ANCILLARY, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("reading the notify socket of %s failed: %s", container_id, e)
                return
            pid, uid = _credentials(ancillary)
            if flags & socket.MSG_TRUNC:
                # Debug only: the container decides how often this happens.
                log.debug("ignored a notification of %s longer than %d bytes", container_id, MAX_DATAGRAM)
                continue
            try:
                on_message(container_id, dataclasses.replace(parse(data), sender_pid=pid, sender_uid=uid))
            except Exception:  # noqa: BLE001 - the loop's reader must go on reading
                log.exception("handling a notification of %s failed", container_id)


def _credentials(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, int]:
    """(pid, uid) of SCM_CREDENTIALS; any fd received all the same is closed."""
    pid, uid = 0, -1
    for level, kind, data in ancillary:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
            pid, uid, _gid = _UCRED.unpack_from(data)
        elif kind == socket.SCM_RIGHTS:
            for (fd,) in struct.iter_unpack("i", data[:len(data) - len(data) % 4]):
                os.close(fd)
    return pid, uid


def _checked(container_id: str) -> str:
    """A container id is one name of a directory: nothing that walks elsewhere."""
    if not container_id or container_id in (".", "..") or "/" in container_id or "\0" in container_id:
        raise ValueError(f"not a container id: {container_id!r}")
    return container_id


def _own_directory(path: Path, mode: int, dir_fd: int | None = None, make_parents: bool = False) -> int:
    """An fd of the agent's directory at path (relative to dir_fd, if given: its last name), set to mode.
    Refused if it is a symlink, not a directory or not the agent's own."""
    if make_parents:
        os.makedirs(path, mode, exist_ok=True)
    name = path.name if dir_fd is not None else str(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(e.errno, f"{path} is not a directory of the agent's (a symlink or a file): refused") from e
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise OSError(errno.EPERM, f"{path} belongs to uid {st.st_uid}, not the agent's: refused")
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd
