"""CopyTo and CopyFrom: files between the host and a container's root, running or not.

The container's side is reached through file descriptors, never a path the container could redirect: the root is
an fd (the running init's /proc/PID/root, or, for a container that does not run, its overlay and volumes mounted in
a mount namespace of one thread's own, which ends with it), the path given is opened with openat2(RESOLVE_IN_ROOT),
and the tree below it is read and written by filetree.py's rules (relative to parent fds, never through a
symlink). The host's side is either a path that the agent opens (CopyTo/CopyFrom: root, or a caller allowed the
host-files action) or a tar stream through a pipe whose other end is the caller's own process, which reads or
writes the host's files with its own rights (CopyToWithFd/CopyFromWithFd: what quiltctl cp uses).

As `docker cp`: a destination that is an existing directory receives the source inside it under its own name;
otherwise the destination is the new name, and its parent must exist. Owners, modes and times are kept; what
comes out of a container loses its setuid and setgid bits.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import signal
import tarfile
import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar

from quilt_agent import filetree
from quilt_agent.errors import CopyFailed, InvalidArgument, NoSpace, NoSuchPath
from quilt_agent.filetree import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2
from quilt_agent.helper import mounts as volume_mounts
from quilt_agent.helper import syscalls, userns

T = TypeVar("T")
_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
# What the machine or the agent ran out of is no fault of the copy: left for the bus layer to name
# (ResourceExhausted, with the limit), as anywhere else in the agent.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
# The kernel's views of processes, devices and the system: no files to copy, and partly out of reach.
_KERNEL_TREES = ("/proc", "/sys", "/dev")


@contextlib.contextmanager
def _failures(path: str, into: bool, host_path: str = "") -> Iterator[None]:
    """Any OSError of a copy into or out of the container's path (host_path: the host's side, when the agent
    opens it) as the error that says what could not be done: NoSpace for the side being written, InvalidArgument
    for a path that cannot be followed, CopyFailed for the rest, with what the kernel said."""
    if into:
        what = f"{f'{host_path!r} ' if host_path else ''}into the container's '{path}'"
    else:
        what = f"'{path}' out of the container{f' to {host_path!r}' if host_path else ''}"
    try:
        yield
    except OSError as e:
        if e.errno in _EXHAUSTED:
            raise
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = ("its writable layer, or the volume mounted there," if into else
                     "the host's filesystem there")
            raise NoSpace(f"No space left copying {what}: {where} is full. Free space and copy again (what was "
                          "copied so far is left in place)") from e
        special = next((t for t in _KERNEL_TREES if f"{path}/".startswith(t + "/")), "")
        hint = f" (the container's {special} is the kernel's view of it, not files to copy)" if special else ""
        if e.errno == errno.ELOOP and not isinstance(e, filetree.CopyError):
            raise InvalidArgument(f"Cannot copy {what}: the path goes through a link out of the container's tree "
                                  f"(such as /proc/PID/root) or through too many symbolic links{hint}") from e
        if e.errno == errno.EPIPE:
            raise CopyFailed(f"Cannot copy {what}: the other end of the archive was closed before the copy "
                             "was complete") from e
        raise CopyFailed(f"Cannot copy {what}: {e.strerror or e}{hint}") from e


@contextlib.contextmanager
def as_container_root(first: int) -> Iterator[None]:
    """For this thread, files are made as the root of the container whose user namespace starts at host id first
    (-1: none, nothing changes): an idmapped volume takes a new file only from an id its map has (the host's
    root is not in it: EOVERFLOW). The capabilities that a filesystem id other than 0 clears are raised again,
    so the copy still writes any file and sets any owner; both come back at the end."""
    if first < 0:
        yield
        return
    effective, permitted, inheritable = syscalls.capabilities()
    syscalls.set_fs_ids(first, first)
    try:
        syscalls.set_capabilities(permitted, permitted, inheritable)
        yield
    finally:
        syscalls.set_fs_ids(0, 0)
        syscalls.set_capabilities(effective, permitted, inheritable)


def stopped_tree(lower: str, upper: str, work: str, merged: str, mounts: tuple[tuple[str, str, str], ...],
                 fn: Callable[[int], T], userns_fd: int = -1) -> T:
    """fn(root fd) on the tree of a container that does not run, its volumes mounted where they are when it
    runs (helper/mounts.py, the same code), as `podman cp` sees them.

    The mounts are made in a thread of its own that first unshares its mount namespace and makes every mount in
    it private: they exist only there, nothing propagates to the host, and they end with the thread. The caller
    holds the container's lock, so no start mounts the same upper directory meanwhile. userns_fd: the container's
    user namespace (one with its id map), whose map the layers and volumes are seen through. Blocking."""
    outcome: list[Any] = []

    def body() -> None:
        try:
            syscalls.unshare(syscalls.CLONE_NEWNS)
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            if userns_fd >= 0:
                userns.idmap_layers(lower, userns_fd)
            # Nothing runs from this view of the tree: no device, setuid bit or program of it takes effect.
            syscalls.mount("overlay", merged, "overlay", syscalls.MS_NODEV | syscalls.MS_NOSUID | syscalls.MS_NOEXEC,
                           f"lowerdir={lower},upperdir={upper},workdir={work}")
            # No copy-up here: a new volume is filled from the image by the container's own start.
            volume_mounts.apply(merged, tuple((s, t, o.replace("copyup", "")) for s, t, o in mounts), (), False,
                                userns_fd=userns_fd)
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


def _source_in(root_fd: int, source: str) -> int:
    """An O_PATH fd of the container's source, its last component not followed (a symlink is copied as one)."""
    try:
        fd = openat2(root_fd, source.lstrip("/") or ".", os.O_PATH | os.O_NOFOLLOW, _RESOLVE)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise NoSuchPath(f"No '{source}' in the container") from None
        raise
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        os.close(fd)
        # Inside a tree such entries are skipped, as docker cp does; named alone, there is nothing to copy.
        raise CopyFailed(f"'{source}' in the container is a {_special_kind(mode)}: only files, directories and "
                         "symbolic links are copied")
    return fd


def _special_kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    return "FIFO" if stat.S_ISFIFO(mode) else "socket"


def _dest_in(root_fd: int, dest: str, top: str) -> tuple[int, str]:
    try:
        return filetree.destination(lambda p: filetree.open_in_root(root_fd, p), dest, top)
    except FileNotFoundError as e:
        raise NoSuchPath(f"No directory '{e.filename}' in the container") from None
    except filetree.CopyError as e:
        raise InvalidArgument(f"Invalid container path '{dest}': {e.strerror}") from None


def host_destination(dest: str, top: str) -> tuple[int, str]:
    """The host side of a copy out: dest as its caller named it (its own symlinks followed: the caller's
    choice), everything below it by filetree's rules."""
    try:
        return filetree.destination(lambda p: os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), dest, top)
    except FileNotFoundError as e:
        raise NoSuchPath(f"No directory '{e.filename}' on the host") from None
    except filetree.CopyError as e:
        raise InvalidArgument(f"Invalid host path '{dest}': {e.strerror}") from None


def _copy(entries: Iterator[filetree.Entry], sink: filetree.Sink) -> None:
    try:
        filetree.copy(entries, sink)
    except filetree.CopyError as e:
        raise CopyFailed(e.strerror or str(e)) from None


def copy_from(root_fd: int, source: str, dest: str, id_first: int = -1) -> None:
    """Container's source -> host's dest (a path the agent opens: only for root or the host-files action).
    id_first: the first host id of the container's user namespace (-1: none); owners come out as it sees them."""
    with _failures(source, False, dest):
        src = _source_in(root_fd, source)
        try:
            parent, name = host_destination(dest, filetree.tar_top(source))
            try:
                _copy(filetree.out_of_range(filetree.walk(src), id_first),
                      filetree.Sink(parent, name, strip_setid=True))
            finally:
                os.close(parent)
        finally:
            os.close(src)


def copy_to(root_fd: int, source: str, dest: str, id_first: int = -1) -> None:
    """Host's source -> container's dest (a path the agent opens: only for root or the host-files action). The
    owners' numbers are kept as the container sees them (a host file of root's is the container's root's)."""
    with _failures(dest, True, source):
        try:
            src = os.open(source, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NoSuchPath(f"Host path '{source}' does not exist") from None
        try:
            parent, name = _dest_in(root_fd, dest, filetree.tar_top(source))
            try:
                _copy(filetree.into_range(filetree.walk(src), id_first), filetree.Sink(parent, name))
            finally:
                os.close(parent)
        finally:
            os.close(src)


def archive_from(root_fd: int, source: str, out: BinaryIO, id_first: int = -1) -> None:
    """Container's source -> a tar stream to the caller, who unpacks it with its own rights."""
    with _failures(source, False):
        src = _source_in(root_fd, source)
        try:
            filetree.write_tar(filetree.out_of_range(filetree.walk(src), id_first), filetree.tar_top(source), out)
        except BrokenPipeError:
            raise CopyFailed("the receiving end of the archive was closed") from None
        finally:
            os.close(src)


def export_root(root_fd: int, out: BinaryIO, id_first: int = -1) -> None:
    """The container's root filesystem -> a tar stream, its entries at the archive's root (bin/sh, etc/...), as
    `podman export` writes it: only the root's own mount, so neither its volumes nor its tmpfs, /proc, /sys, /dev
    or the files the agent binds in (/etc/hosts, /etc/resolv.conf) of a running one. Owners as the container
    sees them; setuid bits kept (the caller unpacks it, or imports it, with its own rights). As the other copies,
    it leaves out device nodes, FIFOs and sockets, and writes each hard link as a file of its own."""
    with _failures("/", False):
        top = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
        try:
            filetree.write_tar(filetree.out_of_range(filetree.walk(top, same_mount=True), id_first), "", out)
        except BrokenPipeError:
            raise CopyFailed("the receiving end of the archive was closed") from None
        finally:
            os.close(top)


def archive_to(root_fd: int, inp: BinaryIO, dest: str, id_first: int = -1) -> None:
    """A tar stream from the caller (one tree, read with the caller's own rights) -> container's dest, with
    docker cp's naming: its top goes into dest when dest is a directory, else becomes dest."""
    try:
        top, entries = filetree.read_tar(inp)
    except (tarfile.TarError, filetree.CopyError) as e:
        raise InvalidArgument(f"Invalid archive: {e}") from None
    with _failures(dest, True):
        parent, name = _dest_in(root_fd, dest, top)
        try:
            _copy(filetree.into_range(entries, id_first), filetree.Sink(parent, name))
        except tarfile.TarError as e:
            raise InvalidArgument(f"Invalid archive: {e}") from None
        finally:
            os.close(parent)
