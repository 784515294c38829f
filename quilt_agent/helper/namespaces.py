"""Which namespaces a container gets, and entering them."""
from __future__ import annotations

import fcntl
import os
import socket
import struct

from quilt_agent.helper import syscalls
from quilt_agent.helper.process import SetupError

# Order matters: the pid namespace is unshared by the monitor (it applies to the
# children it forks), the cgroup namespace only once the init is in its scope,
# the rest by the init itself before it builds the root filesystem.
CLONE_FLAGS = {
    "mount": syscalls.CLONE_NEWNS,
    "uts": syscalls.CLONE_NEWUTS,
    "ipc": syscalls.CLONE_NEWIPC,
    "net": syscalls.CLONE_NEWNET,
}


def unshare_pid(namespaces: tuple[str, ...]) -> None:
    if "pid" in namespaces:
        syscalls.unshare(syscalls.CLONE_NEWPID)


def unshare_early(namespaces: tuple[str, ...]) -> None:
    flags = 0
    for name in namespaces:
        flags |= CLONE_FLAGS.get(name, 0)
    syscalls.unshare(flags)


def unshare_cgroup(namespaces: tuple[str, ...]) -> None:
    """After the move into the scope, so the container sees its scope as the root."""
    if "cgroup" in namespaces:
        syscalls.unshare(syscalls.CLONE_NEWCGROUP)


def loopback_up() -> None:
    """Bring up lo in a new network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS: cheaper than netlink for one flag)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, siocgifflags, req))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def join_net(path: str) -> None:
    """Enter the network namespace pinned at path (a /run/netns file, or another container's /proc/PID/ns/net)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SetupError(f"cannot open the network namespace {path}: {e.strerror}") from e
    try:
        syscalls.setns(fd, syscalls.CLONE_NEWNET)
    except OSError as e:
        raise SetupError(f"cannot join the network namespace {path}: {e.strerror}") from e
    finally:
        os.close(fd)


def allow_ping() -> None:
    """Let every group open ICMP echo sockets in this (new) network namespace, as Podman does: busybox ping
    then works without CAP_NET_RAW. /proc/sys/net is the calling task's namespace's."""
    try:
        with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
            f.write("0 2147483647")
    except OSError:
        pass  # a host that keeps /proc/sys read-only: ping then needs NET_RAW, as before
