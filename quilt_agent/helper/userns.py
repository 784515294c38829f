"""A container's user namespace: made with its id map, the image's layers mounted idmapped into it, joined last.

The namespace is made by a short-lived child (unshare), whose maps the container's init writes as the host's
root, then held by an fd: its id map is what the idmapped mounts of the layers shift through, and the init
joins it once the root filesystem, hostname and loopback are in place (all owned by the host's namespace, so
that nothing the container's root does inside reaches them). systemd-nspawn and crun make idmapped mounts the
same way: open_tree, mount_setattr(MOUNT_ATTR_IDMAP) with the namespace's fd, move_mount.
"""
from __future__ import annotations

import os

from quilt_agent.helper import syscalls
from quilt_agent.helper.process import SetupError


def make(id_map: str) -> int:
    """A new user namespace whose uids and gids map as id_map ("INSIDE HOST COUNT"); an fd of it (O_CLOEXEC)."""
    ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
    done_read, done_write = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_read)
            os.close(done_write)
            syscalls.unshare(syscalls.CLONE_NEWUSER)
            # Its pid as /proc (the host's, still) names it: fork's answer is the pid in the container's own pid
            # namespace.
            os.write(ready_write, os.readlink("/proc/self").encode())
            os.read(done_read, 1)  # until the maps are written and the fd opened: then nothing needs it
            code = 0
        finally:
            os._exit(code)
    os.close(ready_write)
    os.close(done_read)
    try:
        proc_pid = os.read(ready_read, 32).decode()
        if not proc_pid.isdigit():
            raise SetupError("could not make the container's user namespace (unshare failed)")
        for name in ("uid_map", "gid_map"):
            fd = os.open(f"/proc/{proc_pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, id_map.encode())  # one write: the kernel takes a map only whole
            finally:
                os.close(fd)
        return os.open(f"/proc/{proc_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SetupError(f"could not make the container's user namespace: {e}") from e
    finally:
        os.close(done_write)
        os.close(ready_read)
        os.waitpid(pid, 0)


def map_layers(lower: str, upper: str, work: str, userns_fd: int, first: int) -> None:
    """Mount each layer idmapped over itself (in this private mount namespace: the store's copy is untouched and
    shared by every container), and give the container's root its own upper directory, empty at its create."""
    for layer in dict.fromkeys(lower.split(":")):
        try:
            syscalls.idmapped_over(layer, userns_fd)
        except OSError as e:
            raise SetupError(f"the kernel refused an idmapped mount of the image's layer {layer} "
                             f"(user namespaces need idmapped mounts on the image store's filesystem): {e}") from e
    for d in (upper, work):
        if os.stat(d).st_uid != first:
            os.chown(d, first, first)
    os.chmod(work, 0o700)


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
