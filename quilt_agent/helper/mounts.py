"""A container's volumes, tmpfs mounts and read-only root, made in its mount namespace before pivot_root.

Every target is resolved inside the container's root with openat2(RESOLVE_IN_ROOT): a symlink in the image
(`/mnt -> /tmp/hostdir`, `/data -> /etc`) is followed as if the root were "/", so it can never make a mount land
on the host's tree (the runc CVE-2021-30465 class). Missing components are made inside the root, one at a time
relative to an fd of their parent. The mount is then made onto /proc/self/fd/N of the resolved directory, as
runc does, so no path is looked up again after the check.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import struct

from quilt_agent.helper.syscalls import (
    MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT, mount,
)

_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "riscv64": 437, "ppc64le": 437, "s390x": 437}
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_libc = ctypes.CDLL(None, use_errno=True)
_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    how = struct.pack("QQQ", flags | os.O_CLOEXEC, mode, resolve)
    buf = ctypes.create_string_buffer(how, len(how))
    fd = _libc.syscall(_SYS_OPENAT2[platform.machine()], dirfd, os.fsencode(path), buf, len(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"openat2 {path}: {os.strerror(err)}")
    return fd


def open_in_root(root_fd: int, path: str, flags: int = os.O_PATH | os.O_DIRECTORY) -> int:
    return openat2(root_fd, path.lstrip("/") or ".", flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)


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
            if st is None:
                if directory or todo:
                    os.mkdir(part, 0o755, dir_fd=parent)
                else:
                    os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=parent))
            done.append(part)
        finally:
            os.close(parent)
    return open_in_root(root_fd, "/".join(done), os.O_PATH | (os.O_DIRECTORY if directory else 0))


def _proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _remount(root_fd: int, target: str, flags: int) -> None:
    """Set per-mount flags on the mount now at target (opened again: the walk crosses onto the new mount)."""
    fd = open_in_root(root_fd, target, os.O_PATH)
    try:
        mount(None, _proc(fd), None, MS_REMOUNT | MS_BIND | flags)
    finally:
        os.close(fd)


def _empty(path: str) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is None


def apply(merged: str, mounts: tuple[tuple[str, str, str], ...], tmpfs: tuple[tuple[str, str], ...],
          read_only: bool) -> None:
    root_fd = os.open(merged, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        targets = {m[1] for m in mounts} | {t[0] for t in tmpfs}
        if read_only:
            # As Podman's --read-only: /tmp and /run stay writable, as fresh tmpfs (unless a mount is there).
            tmpfs = (*tmpfs, *((t, "mode=1777,size=65536k") for t in ("/tmp", "/run") if t not in targets))
        for source, target, options in mounts:
            _bind(root_fd, source, target, [o for o in options.split(",") if o])
        for target, options in tmpfs:
            fd = make_in_root(root_fd, target)
            try:
                mount("tmpfs", _proc(fd), "tmpfs", MS_NOSUID | MS_NODEV, options)
            finally:
                os.close(fd)
        if read_only:
            mount(None, merged, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    finally:
        os.close(root_fd)


def _bind(root_fd: int, source: str, target: str, options: list[str]) -> None:
    is_dir = os.path.isdir(source)
    fd = make_in_root(root_fd, target, directory=is_dir)
    try:
        if "copyup" in options and is_dir and _empty(source) and not _empty(_proc(fd)):
            # A new named volume over a non-empty image directory starts with its content, owners and modes, as
            # in Docker. CopyFrom's walk (copying.py): entry by entry relative to its parent's fd, O_NOFOLLOW,
            # symlinks kept as symlinks, device nodes and FIFOs (a container may mknod) skipped.
            from quilt_agent.copying import copy_tree_out  # here: copying imports this module
            fd_dir = open_in_root(root_fd, target, os.O_RDONLY | os.O_DIRECTORY)
            try:
                copy_tree_out(fd_dir, source)
            finally:
                os.close(fd_dir)
        mount(source, _proc(fd), None, MS_BIND | MS_REC)
    finally:
        os.close(fd)
    # Private: nothing mounted under it inside propagates back to the host, nor the other way.
    mnt = open_in_root(root_fd, target, os.O_PATH)
    try:
        mount(None, _proc(mnt), None, MS_PRIVATE | MS_REC)
    finally:
        os.close(mnt)
    flags = 0
    for opt in options:
        flags |= _FLAGS.get(opt, 0)
    if flags:
        _remount(root_fd, target, flags)
