"""CopyTo and CopyFrom (issue 9): files between the host and a container's root, running or not.

The container's side is always reached through file descriptors, never a path the container could redirect:
the root is an fd (the running init's /proc/PID/root, or, for a container that does not run, its overlay and
volumes mounted in a mount namespace of one thread's own, which ends with it), the path given is opened with
openat2(RESOLVE_IN_ROOT), and every entry below it is opened relative to its parent's fd with O_NOFOLLOW. A
process in the container that swaps a directory for a symlink meanwhile gets an error, never a host file (the
docker cp CVE-2018-15664 class). Symlinks are copied as symlinks; device nodes, FIFOs and sockets are skipped.
Owners, modes and modification times are kept, as machined's CopyTo/CopyFrom do.

As `docker cp`: a destination that is an existing directory receives the source inside it under its own name;
otherwise the destination is the new name, and its parent must exist.
"""
from __future__ import annotations

import errno
import os
import signal
import stat
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from quilt_agent.errors import InvalidArgument, NoSuchPath
from quilt_agent.helper import mounts as volume_mounts
from quilt_agent.helper import syscalls
from quilt_agent.helper.mounts import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2

T = TypeVar("T")
CHUNK = 1 << 20
_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS


def stopped_tree(lower: str, upper: str, work: str, merged: str, mounts: tuple[tuple[str, str, str], ...],
                 fn: Callable[[int], T]) -> T:
    """fn(root fd) on the tree of a container that does not run, its volumes mounted where they are when it
    runs (helper/mounts.py, the same code), as `podman cp` sees them.

    The mounts are made in a thread of its own that first unshares its mount namespace and makes every mount in
    it private: they exist only there, nothing propagates to the host, and they end with the thread. The caller
    holds the container's lock, so no start mounts the same upper directory meanwhile. Blocking."""
    outcome: list[Any] = []

    def body() -> None:
        try:
            syscalls.unshare(syscalls.CLONE_NEWNS)
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            syscalls.mount("overlay", merged, "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}")
            volume_mounts.apply(merged, mounts, (), False)
            root = os.open(merged, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                outcome.append(fn(root))
            finally:
                os.close(root)
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            outcome.append(e)

    thread = threading.Thread(target=body, name="quilt-copy")
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def running_root(pid: int, pidfd: int) -> int:
    """An fd of a running container's root, as its init sees it (its mount namespace: volumes included)."""
    fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        signal.pidfd_send_signal(pidfd, 0)  # still the same process: the pid was not reused meanwhile
    except ProcessLookupError:
        os.close(fd)
        raise
    return fd


def check_path(path: str, side: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise InvalidArgument(f"Invalid {side} path '{path}': must be an absolute path")
    return path


def _open_in(root_fd: int, path: str, flags: int) -> int:
    return openat2(root_fd, path.lstrip("/") or ".", flags, _RESOLVE)


def copy_from(root_fd: int, source: str, dest: str) -> None:
    """Container's source -> host's dest."""
    try:
        src = _open_in(root_fd, source, os.O_PATH | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise NoSuchPath(f"No '{source}' in the container") from None
        raise
    try:
        st = os.fstat(src)
        name = os.path.basename(os.path.normpath(source)) or "root"
        target = os.path.join(dest, name) if os.path.isdir(dest) else dest
        if not os.path.isdir(os.path.dirname(target) or "/"):
            raise NoSuchPath(f"No directory '{os.path.dirname(target)}' on the host")
        if stat.S_ISLNK(st.st_mode):
            # O_PATH|O_NOFOLLOW on a symlink: the link itself.
            _replace(target)
            os.symlink(os.readlink("", dir_fd=src), target)  # readlinkat(fd, ""): the link's own text
            return
        fd = os.open(f"/proc/self/fd/{src}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    finally:
        os.close(src)
    try:
        _out(fd, target)
    finally:
        os.close(fd)


def _out(fd: int, target: str) -> None:
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        if not os.path.isdir(target):
            os.mkdir(target, 0o700)
        for name in os.listdir(fd):
            cst = os.stat(name, dir_fd=fd, follow_symlinks=False)
            path = os.path.join(target, name)
            if stat.S_ISLNK(cst.st_mode):
                _replace(path)
                os.symlink(os.readlink(name, dir_fd=fd), path)
                os.lchown(path, cst.st_uid, cst.st_gid)
            elif stat.S_ISDIR(cst.st_mode) or stat.S_ISREG(cst.st_mode):
                child = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
                try:
                    _out(child, path)
                finally:
                    os.close(child)
    elif stat.S_ISREG(st.st_mode):
        _replace(target)
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            _pump(fd, out)
        finally:
            os.close(out)
    else:
        return  # a device node, FIFO or socket (swapped in meanwhile): not copied
    os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(target, stat.S_IMODE(st.st_mode))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def copy_tree_out(fd: int, target: str) -> None:
    """Copy the tree of the open directory fd into target (which may exist), as CopyFrom does."""
    _out(fd, target)


def _replace(path: str) -> None:
    """An existing non-directory at path goes (cp overwrites files; a symlink is never written through)."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _pump(src: int, dst: int) -> None:
    while True:
        data = os.read(src, CHUNK)
        if not data:
            return
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view):]


def copy_to(root_fd: int, source: str, dest: str) -> None:
    """Host's source -> container's dest."""
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        raise NoSuchPath(f"Host path '{source}' does not exist") from None
    name = os.path.basename(os.path.normpath(source)) or "root"
    try:
        parent = _open_in(root_fd, dest, os.O_PATH | os.O_DIRECTORY)  # an existing directory: copy into it
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise
        head, name = os.path.split(os.path.normpath(dest))
        if not name:
            raise InvalidArgument(f"Invalid container path '{dest}'") from None
        try:
            parent = _open_in(root_fd, head, os.O_PATH | os.O_DIRECTORY)
        except OSError as e2:
            if e2.errno in (errno.ENOENT, errno.ENOTDIR):
                raise NoSuchPath(f"No directory '{head}' in the container") from None
            raise
    try:
        _in(source, st, parent, name)
    finally:
        os.close(parent)


def _in(source: str, st: os.stat_result, parent: int, name: str) -> None:
    try:
        existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    if existing is not None and not (stat.S_ISDIR(existing.st_mode) and stat.S_ISDIR(st.st_mode)):
        os.unlink(name, dir_fd=parent)  # a file or symlink in the way: replaced, never written through
        existing = None
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), name, dir_fd=parent)
        os.chown(name, st.st_uid, st.st_gid, dir_fd=parent, follow_symlinks=False)
        return
    if stat.S_ISDIR(st.st_mode):
        if existing is None:
            os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            for entry in os.scandir(source):
                _in(entry.path, entry.stat(follow_symlinks=False), fd, entry.name)
            os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(fd)
    elif stat.S_ISREG(st.st_mode):
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _pump(src, out)
            finally:
                os.close(src)
            os.fchown(out, st.st_uid, st.st_gid)
            os.fchmod(out, stat.S_IMODE(st.st_mode))
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(out)
    # device nodes, FIFOs, sockets: not copied
