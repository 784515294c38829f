"""Which namespaces a container gets, and entering them."""
from __future__ import annotations

import fcntl
import socket
import struct

from quilt_agent.helper import syscalls

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
