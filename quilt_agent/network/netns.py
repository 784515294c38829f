"""Network namespaces made and entered from one thread of the agent, never by forking it.

A thread may unshare or setns its own network namespace (unlike the mount namespace, CLONE_NEWNET is per task),
and a netlink socket belongs to the namespace of the thread that made it. So the agent's network worker makes
a container's namespace by unsharing in its thread, pins it with a bind mount under /run/netns (where
`ip netns` finds it), opens its sockets there and returns to the host's namespace.

The syscalls are helper/syscalls.py's (Python 3.11's os has no setns or unshare); pyroute2's netns helpers are
not used because they fork a child process for each of these, which a threaded agent must not do.
"""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from quilt_agent.helper import syscalls
from quilt_agent.helper.syscalls import CLONE_NEWNET, MNT_DETACH, MS_BIND, MS_REC, mount, umount, unshare

MS_SHARED = 1 << 20
NETNS_DIR = Path("/run/netns")
NAME_PREFIX = "quilt-"


def path_for(container_id: str) -> Path:
    return NETNS_DIR / f"{NAME_PREFIX}{container_id}"


def setns(fd: int) -> None:
    syscalls.setns(fd, CLONE_NEWNET)


_dir_shared = False


def pin(fd: int, path: Path) -> None:
    """Pin the namespace open at fd at path (a pool's namespace given to a container): a file and a bind
    mount, two quick syscalls, no netlink."""
    global _dir_shared
    if not _dir_shared:
        _share_dir()
        _dir_shared = True
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    try:
        mount(f"/proc/self/fd/{fd}", str(path), None, MS_BIND)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _share_dir() -> None:
    """Make /run/netns a shared mount point, as iproute2 does, so that removing a namespace's bind mount also
    removes its copies in mount namespaces made since (a service's PrivateTmp=, say): else they would keep the
    namespace alive."""
    NETNS_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        mount(None, str(NETNS_DIR), None, MS_SHARED | MS_REC)
    except OSError as e:
        if e.errno != errno.EINVAL:  # EINVAL: not a mount point yet
            raise
        mount(str(NETNS_DIR), str(NETNS_DIR), None, MS_BIND | MS_REC)
        mount(None, str(NETNS_DIR), None, MS_SHARED | MS_REC)


class Namespaces:
    """Owned by the network worker thread: it always returns to the host's namespace."""

    def __init__(self) -> None:
        self._host = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def create(self, path: Path) -> None:
        """A new network namespace pinned at path (which must not exist)."""
        global _dir_shared
        if not _dir_shared:
            _share_dir()
            _dir_shared = True
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        os.close(fd)
        try:
            unshare(CLONE_NEWNET)
            try:
                mount("/proc/thread-self/ns/net", str(path), None, MS_BIND)
            finally:
                setns(self._host)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def new(self) -> int:
        """A new network namespace, held only by the returned fd (it goes away with the agent if unused); the
        calling thread is in it until leave()."""
        unshare(CLONE_NEWNET)
        try:
            return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            setns(self._host)
            raise

    def leave(self) -> None:
        setns(self._host)

    def remove(self, path: Path) -> None:
        try:
            umount(str(path), MNT_DETACH)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):  # not mounted (a create that failed half-way)
                raise
        path.unlink(missing_ok=True)

    @staticmethod
    def exists(path: Path) -> bool:
        """Pinned: a namespace file, not an empty mount point left by a crash."""
        try:
            return os.stat(path).st_dev != os.stat(path.parent).st_dev
        except OSError:
            return False

    @contextmanager
    def entered(self, path: str | Path) -> Iterator[None]:
        """Run the body in the namespace at path (a /run/netns file or /proc/PID/ns/net)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd)
        finally:
            os.close(fd)
        try:
            yield
        finally:
            setns(self._host)

    @staticmethod
    def list() -> list[Path]:
        try:
            return sorted(p for p in NETNS_DIR.iterdir() if p.name.startswith(NAME_PREFIX))
        except FileNotFoundError:
            return []
