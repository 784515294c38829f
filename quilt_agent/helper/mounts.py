"""A container's volumes, tmpfs mounts and read-only root, made in its mount namespace before pivot_root.

Every target is resolved inside the container's root with openat2(RESOLVE_IN_ROOT): a symlink in the image
(`/mnt -> /tmp/hostdir`, `/data -> /etc`) is followed as if the root were "/", so it can never make a mount land
on the host's tree (the runc CVE-2021-30465 class). Missing components are made inside the root, one at a time
relative to an fd of their parent. The mount is then made onto /proc/self/fd/N of the resolved directory, as
runc does, so no path is looked up again after the check.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Callable

from quilt_agent import filetree
from quilt_agent.filetree import open_in_root
from quilt_agent.helper import process
from quilt_agent.helper.syscalls import (
    MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT, idmapped_bind, mount,
)

_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
# Kernel interfaces and the runtime's own /dev, not the container's files: nothing is mounted over or below them.
NOT_TARGETS = ("proc", "sys", "dev")


def make_in_root(root_fd: int, path: str, directory: bool = True) -> int:
    """An O_PATH fd of path inside the root, made (directories 0755, a final empty file) where missing.

    As runc's MkdirAllInRoot: a symlink on the way is followed as the root's own (its target read and walked
    from the root, or from its directory), so `/mnt -> /tmp/hostdir` makes /tmp/hostdir inside the root. Each
    name is made relative to an fd of its parent resolved in the root; the result is opened with
    RESOLVE_IN_ROOT, whatever the walk found. Nothing runs in the container yet: nobody swaps a path meanwhile.
    """
    todo = [p for p in path.split("/") if p and p != "."]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":  # only from a symlink's text: clamped at the root, as RESOLVE_IN_ROOT does
            if done:
                done.pop()
            continue
        parent = open_in_root(root_fd, "/".join(done))
        try:
            try:
                st = os.stat(part, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                links += 1
                if links > 40:
                    raise OSError(errno.ELOOP, f"too many symlinks resolving {path} in the container's root")
                target = os.readlink(part, dir_fd=parent)
                if target.startswith("/"):
                    done = []
                todo = [p for p in target.split("/") if p and p != "."] + todo
                continue
            if not done and part in NOT_TARGETS:
                raise OSError(errno.EPERM, f"'{path}' is inside /{part}: not a mount target")
            if st is None:
                if directory or todo:
                    os.mkdir(part, 0o755, dir_fd=parent)
                else:
                    os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=parent))
            done.append(part)
        finally:
            os.close(parent)
    if not done:
        raise OSError(errno.EPERM, f"'{path}' resolves to the container's root: not a mount target")
    return open_in_root(root_fd, "/".join(done), os.O_PATH | (os.O_DIRECTORY if directory else 0))


def _proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _remount(root_fd: int, target: str, flags: int) -> None:
    """Set per-mount flags on the mount now at target (opened again: the walk crosses onto the new mount)."""
    fd = open_in_root(root_fd, target, os.O_PATH)
    try:
        # A bind remount sets every per-mount flag: keep those the bind took from its source (a noexec /tmp stays so).
        flags |= os.statvfs(fd).f_flag & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        mount(None, _proc(fd), None, MS_REMOUNT | MS_BIND | flags)
    finally:
        os.close(fd)


def _empty(path: str) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is None


def apply(merged: str, mounts: tuple[tuple[str, str, str], ...], tmpfs: tuple[tuple[str, str], ...],
          read_only: bool, owner: str = "", userns_fd: int = -1, id_first: int = -1) -> None:
    """With a user namespace of the container's own: owner is "uid=N,gid=N" that the tmpfs mounts get (its
    root), and the volumes and host directories are bound idmapped through userns_fd (their files keep the ids
    they have on disk, seen inside as the same numbers), id_first the first host id of its range."""
    root_fd = os.open(merged, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        targets = {m[1] for m in mounts} | {t[0] for t in tmpfs}
        if read_only:
            # As Podman's --read-only: /tmp and /run stay writable, as fresh tmpfs (unless a mount is there).
            tmpfs = (*tmpfs, *((t, "mode=1777,size=65536k") for t in ("/tmp", "/run") if t not in targets))
        for source, target, options in mounts:
            _bind(root_fd, source, target, [o for o in options.split(",") if o], userns_fd, id_first)
        for target, options in tmpfs:
            fd = make_in_root(root_fd, target)
            try:
                mount("tmpfs", _proc(fd), "tmpfs", MS_NOSUID | MS_NODEV, ",".join(o for o in (options, owner) if o))
            finally:
                os.close(fd)
        if read_only:
            mount(None, merged, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NODEV)  # keeps the root's nodev
    finally:
        os.close(root_fd)


def _bind(root_fd: int, source: str, target: str, options: list[str], userns_fd: int = -1,
          id_first: int = -1) -> None:
    is_dir = os.path.isdir(source)
    fd = make_in_root(root_fd, target, directory=is_dir)
    try:
        if "copyup" in options and is_dir:
            _copy_up_if_new(root_fd, fd, source, id_first)
        if userns_fd >= 0:
            try:
                idmapped_bind(source, fd, userns_fd)
            except OSError as e:
                raise OSError(e.errno, f"the kernel refused an idmapped mount of {source} for the container's user "
                                       f"namespace ({e.strerror}: its filesystem may not support idmapped mounts); "
                                       "mount it into a container with --userns host, or use a named volume") from e
        else:
            mount(source, _proc(fd), None, MS_BIND | MS_REC)
    finally:
        os.close(fd)
    # Private: nothing mounted under it inside propagates back to the host, nor the other way.
    mnt = open_in_root(root_fd, target, os.O_PATH)
    try:
        mount(None, _proc(mnt), None, MS_PRIVATE | MS_REC)
    finally:
        os.close(mnt)
    flags = MS_NOSUID | MS_NODEV  # as Podman's volumes: nothing in a volume or a host directory is a device or setuid
    for opt in options:
        flags |= _FLAGS.get(opt, 0)
    if flags:
        _remount(root_fd, target, flags)


def _copy_up_if_new(root_fd: int, target: int, source: str, id_first: int = -1) -> None:
    """Copy-up under a lock on the volume's directory: containers starting together on a new volume would
    otherwise each find it empty and copy into it at once."""
    lock = os.open(os.path.dirname(source), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _empty(source) and not _empty(_proc(target)):
            _copy_up(root_fd, target, source, id_first)
    finally:
        os.close(lock)


def _copy_up(root_fd: int, target: int, source: str, id_first: int = -1) -> None:
    """A new volume over a non-empty image directory starts with its content, owners and modes, as in Docker.

    Only the image's own directory is copied: a target that resolved onto another mount (/dev, a tmpfs, another
    volume) has nothing of the image, and the walk leaves out every mount below it (/proc, /sys). It runs in a
    child that has dropped to the container's capabilities, into a directory beside the volume's, moved into it
    only once complete: a failed copy leaves the volume empty. In a user namespace (id_first), the image's files
    are seen with the range's host ids: the volume keeps the numbers the container sees, as its idmapped mount
    shows them."""
    if filetree.mount_id(target) != filetree.mount_id(root_fd):
        return
    staging = tempfile.mkdtemp(prefix=".copyup-", dir=os.path.dirname(source))
    try:
        _in_child(lambda: _fill(target, staging, id_first))
        _move_into(os.path.join(staging, "data"), source)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fill(target: int, staging: str, id_first: int = -1) -> None:
    process.drop_privileges(process.User(0, 0, (), "/"))  # root of the container, with its capabilities only
    parent = os.open(staging, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        filetree.copy(filetree.out_of_range(filetree.walk(target, same_mount=True), id_first),
                      filetree.Sink(parent, "data"))
    finally:
        os.close(parent)


def _in_child(body: Callable[[], None]) -> None:
    """body() in a forked child; its exception comes back as an OSError with its text."""
    read, write = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read)
            body()
        except BaseException as e:  # noqa: BLE001 - told to the parent, which raises it
            os.write(write, str(e).encode()[:4096])
            code = 1
        os._exit(code)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as f:
            message = f.read().decode(errors="replace")
    finally:
        _, status = os.waitpid(pid, 0)
    if status != 0:
        raise OSError(errno.EIO, f"copying the image's files into the volume failed: {message or status}")


def _move_into(done: str, source: str) -> None:
    """Move the copy's entries into the (empty) volume directory, one rename each; undone if one fails."""
    moved: list[str] = []
    src = os.open(done, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    dst = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            for name in os.listdir(src):
                os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
                moved.append(name)
        except OSError:
            for name in moved:
                os.rename(name, name, src_dir_fd=dst, dst_dir_fd=src)
            raise
        st = os.fstat(src)
        os.fchown(dst, st.st_uid, st.st_gid)
        os.fchmod(dst, stat.S_IMODE(st.st_mode))
    finally:
        os.close(src)
        os.close(dst)
