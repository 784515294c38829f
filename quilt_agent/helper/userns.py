"""A container's user namespace: made with its id map, the image's layers mounted idmapped into it, joined last.

The namespace is made by a short-lived child whose maps the caller (the container's monitor, the host's root)
writes, then held by an fd: its id map is what the idmapped mounts of the layers shift through, and the init
joins it once the root filesystem, hostname and loopback are in place (all owned by the host's namespace, so
that nothing the container's root does inside reaches them). systemd-nspawn and crun make idmapped mounts the
same way: open_tree, mount_setattr(MOUNT_ATTR_IDMAP) with the namespace's fd, move_mount.

Written by hand: the child is a raw clone(CLONE_VM | CLONE_NEWUSER) that runs libc's pause() on a small stack of
its own, so no page of the (Python) caller is copied: a fork of the monitor cost 2 to 5 ms of each start, this
a few hundred microseconds. Nothing of Python runs in the child; it is killed once the fd is open.
"""
from __future__ import annotations

import ctypes
import os
import signal

from quilt_agent.helper import syscalls
from quilt_agent.helper.process import SetupError

_libc = ctypes.CDLL(None, use_errno=True)
_libc.clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
_libc.clone.restype = ctypes.c_int
CLONE_VM = 0x00000100
_STACK_BYTES = 64 * 1024


def make(id_map: str) -> int:
    """A new user namespace whose uids and gids map as id_map ("INSIDE HOST COUNT"); an fd of it (O_CLOEXEC).
    The caller must be in the pid namespace of /proc (the host's): the child is found there by its pid."""
    stack = ctypes.create_string_buffer(_STACK_BYTES)
    top = (ctypes.addressof(stack) + _STACK_BYTES) & ~0xF  # the stack grows down, 16-byte aligned
    pause = ctypes.cast(_libc.pause, ctypes.c_void_p)
    pid = _libc.clone(pause, top, CLONE_VM | syscalls.CLONE_NEWUSER | signal.SIGCHLD, None)
    if pid < 0:
        err = ctypes.get_errno()
        raise SetupError(f"could not make the container's user namespace: {os.strerror(err)}")
    try:
        for name in ("uid_map", "gid_map"):
            fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, id_map.encode())  # one write: the kernel takes a map only whole
            finally:
                os.close(fd)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SetupError(f"could not make the container's user namespace: {e}") from e
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)  # before the stack it ran on is freed


def map_layers(lower: str, upper: str, work: str, userns_fd: int, first: int) -> None:
    """Mount the layers idmapped (idmap_layers), and give the container's root its own upper directory, empty at
    its create."""
    try:
        idmap_layers(lower, userns_fd)
    except OSError as e:
        raise SetupError(f"the kernel refused an idmapped mount of the image's layers (user namespaces need "
                         f"idmapped mounts on the image store's filesystem): {e}") from e
    for d in (upper, work):
        if os.stat(d).st_uid != first:
            os.chown(d, first, first)
    os.chmod(work, 0o700)


def idmap_layers(lower: str, userns_fd: int) -> None:
    """Mount each layer of overlayfs's lowerdir idmapped over itself, in this private mount namespace: the store's
    copy is untouched and shared by every container."""
    for layer in dict.fromkeys(lower.split(":")):
        syscalls.idmapped_over(layer, userns_fd)


def join(userns_fd: int) -> None:
    """Enter the namespace as its root (the range's first host id), with every capability in it."""
    try:
        syscalls.setns(userns_fd, syscalls.CLONE_NEWUSER)
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    except OSError as e:
        raise SetupError(f"could not enter the container's user namespace: {e}") from e
    finally:
        os.close(userns_fd)


def allow_low_ports() -> None:
    """Let the container's root bind ports below 1024 in its network namespace, which the host's namespace
    owns (so that its root cannot change the interfaces): the same as Podman's rootless containers."""
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start", "w") as f:
            f.write("0")
    except OSError as e:
        raise SetupError(f"could not open the low ports to the container's root: {e}") from e
