"""The container's root filesystem: overlayfs over the image, /proc, /dev, /sys, masks, pivot_root."""
from __future__ import annotations

import errno
import os
import stat

from quilt_agent.helper import mounts as volume_mounts
from quilt_agent.helper import userns
from quilt_agent.helper.protocol import INIT_TARGET, NOTIFY_TARGET
from quilt_agent.helper.syscalls import (
    MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT, mount,
    pivot_root, umount,
)

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"), ("core", "/proc/kcore"))
# The same paths runc and Podman hide or freeze by default.
MASKED = ("/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
          "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/proc/interrupts", "/sys/firmware",
          "/sys/devices/virtual/powercap")
READ_ONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def _mkdir(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def build(lower: str, upper: str, work: str, merged: str, namespaces: tuple[str, ...],
          bind_files: tuple[tuple[str, str], ...] = (), mounts: tuple[tuple[str, str, str], ...] = (),
          tmpfs: tuple[tuple[str, str], ...] = (), read_only: bool = False, userns_fd: int = -1,
          id_first: int = -1, init: str = "", notify_dir: str = "") -> None:
    """Mount the container's tree at merged, then make it the root. Runs in the container's mount namespace.
    With a user namespace (userns_fd), the layers are seen through its id map and the container's own mounts
    belong to its root (host id id_first). notify_dir: the agent's directory of the container's notify socket."""
    # Nothing mounted here may propagate back to the host.
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    owner = ""
    if userns_fd >= 0:
        userns.map_layers(lower, upper, work, userns_fd, id_first)
        owner = f"uid={id_first},gid={id_first}"
    # nodev: a device node in the container's layer (one made through /proc/PID/root by a host process, or by a
    # process that kept CAP_MKNOD) opens nothing; the device cgroup is the other half of that guard.
    mount("overlay", merged, "overlay", MS_NODEV, f"lowerdir={lower},upperdir={upper},workdir={work}")
    for d in ("proc", "sys", "dev"):
        _kernel_dir(f"{merged}/{d}")
    mount("proc", f"{merged}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("sysfs", f"{merged}/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _make_dev(f"{merged}/dev", "ipc" in namespaces, id_first)
    if init:
        _bind_init(init, merged + INIT_TARGET)
    for source, target in bind_files:
        _bind_file(source, merged, target)
    if mounts or tmpfs or read_only:
        # volumes, tmpfs, read-only root (helper/mounts.py)
        volume_mounts.apply(merged, mounts, tmpfs, read_only, owner, userns_fd, id_first)
    if notify_dir:
        _bind_notify(notify_dir, merged)
    _mask(merged)
    os.chdir(merged)
    pivot_root(".", ".")
    umount(".", MNT_DETACH)
    os.chdir("/")


def _kernel_dir(path: str) -> None:
    """Where /proc, /sys or /dev is mounted: a directory of the image's or a new one. An image's symlink there
    would be followed from the host's side before pivot_root (the mounts would land on the host's tree, in this
    private namespace), so it is refused, as runc refuses a symlinked /proc."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path, 0o755)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"the image's /{os.path.basename(path)} is not a directory (a symlink or a file)")


def _bind_file(source: str, root: str, target: str) -> None:
    """Bind source over root+target (/etc/resolv.conf and the like), read-write as in Podman.

    Nothing outside root may be touched while the image's symlinks still point at the host's tree: a directory
    on the way that is a symlink means the file is not bound; a target that is a symlink (Debian's resolv.conf
    -> systemd-resolved's) is replaced by a plain file in the container's own layer, never the image's.
    """
    parent = root
    for part in os.path.dirname(target).strip("/").split("/"):
        parent = f"{parent}/{part}" if part else parent
        if os.path.islink(parent):
            return
        _mkdir(parent)
    path = root + target
    if os.path.islink(path) or (os.path.exists(path) and not os.path.isfile(path)):
        if os.path.isdir(path) and not os.path.islink(path):
            return
        os.unlink(path)
    if not os.path.exists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    mount(source, path, None, MS_BIND)


def _make_dev(dev: str, own_ipc: bool, id_first: int = -1) -> None:
    """id_first: the host id of the container's root in its own user namespace, which owns its tmpfs mounts;
    its tty group (5) is the terminals'."""
    owner = f"uid={id_first},gid={id_first}" if id_first >= 0 else ""
    # nodev too: the nodes below are bind mounts of the host's, each a mount of its own that keeps its source's
    # flags, and devpts is mounted without nodev; a node made in the tmpfs itself opens nothing.
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NODEV, _with("mode=0755,size=65536k", owner))
    for node in DEVICES:
        path = f"{dev}/{node}"
        open(path, "w").close()
        mount(f"/dev/{node}", path, None, MS_BIND)
    _mkdir(f"{dev}/pts")
    mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, f"newinstance,ptmxmode=0666,mode=0620,gid={max(id_first, 0) + 5}")
    _mkdir(f"{dev}/shm")
    mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, _with("mode=1777,size=65536k", owner))
    if own_ipc:
        _mkdir(f"{dev}/mqueue")
        mount("mqueue", f"{dev}/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name, target in DEV_LINKS:
        os.symlink(target, f"{dev}/{name}")


def _bind_init(source: str, target: str) -> None:
    """The host's init program, read-only in the container's /dev (a tmpfs of its own, so nothing of the image
    is shadowed and no file is left in its layer). The mount belongs to the host's user namespace: the
    container cannot make it writable."""
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755))
    mount(source, target, None, MS_BIND)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _bind_notify(source: str, root: str) -> None:
    """The agent's directory of the container's notify socket (quilt_agent/notify.py) at NOTIFY_TARGET.

    The directory, not the socket: an agent that restarts binds a new socket at the same path in it, which the
    container then sees. Read-only, nosuid, nodev, noexec: sending on a socket needs write permission on its
    inode, which a read-only mount leaves alone (as a Docker socket bound read-only), while the container can
    neither make files in the agent's directory nor unlink or replace the socket. The mount belongs to the host's
    user namespace, so the container cannot make it writable.

    Bound as a volume is (helper/mounts.py), so /run is resolved inside the root: an image's /run -> /etc (or
    -> ../../..) makes it /etc/notify of the container, never a directory of the host. After the volumes and
    tmpfs mounts, so that a tmpfs at /run (a read-only root's, or --tmpfs /run) does not hide it."""
    volume_mounts.apply(root, ((source, NOTIFY_TARGET, "ro,noexec"),), (), False)


def _with(options: str, more: str) -> str:
    return f"{options},{more}" if more else options


def _mask(root: str) -> None:
    for path in MASKED:
        target = root + path
        if os.path.isdir(target) and not os.path.islink(target):
            mount("tmpfs", target, "tmpfs", MS_RDONLY, "size=0")
        elif os.path.exists(target):
            mount("/dev/null", target, None, MS_BIND)
    for path in READ_ONLY:
        target = root + path
        if os.path.exists(target):
            mount(target, target, None, MS_BIND | MS_REC)
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
