"""A container's devices, tried as an attacker would: a device node it gets hold of opens nothing.

Two guards, each tested alone. The scope's device cgroup (systemd's DevicePolicy=closed with the OCI default
allow-list: devices.list on cgroup v1, a BPF program on v2) refuses with EPERM every node but null, zero, full,
random, urandom, tty, ptmx and the pseudo-terminals, to whatever runs in the scope, whatever its capabilities. And
every mount of the container but its device nodes' own and devpts is nodev, so a node there gives EACCES before
the cgroup is even asked. The nodes are made by root on the test host (the container itself has no CAP_MKNOD):
through /proc/PID/root, in a volume's directory on the host, or in a tmpfs mounted without nodev in the
container's mount namespace, the hole that the cgroup alone must cover.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from quilt_agent import cgroups
from quilt_agent.client import Client
from tests.integration.conftest import PROJECT, systemctl
from tests.integration.network.conftest import END, logs_until_end, run

# Nodes outside the allow-list that root could open were it not for the cgroup: an unbound loop device (opened
# without any capability) and /dev/kmsg opened for writing (the kernel log: needs no capability either).
FORBIDDEN = {"blk": ("b", 7, 0, "<"), "kmsg": ("c", 1, 11, ">")}
ALLOWED = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/ptmx")
# What `systemctl show` lists for the scope, in any order.
DEVICE_ALLOW = {"/dev/char/1:3 rwm", "/dev/char/1:5 rwm", "/dev/char/1:7 rwm", "/dev/char/1:8 rwm",
                "/dev/char/1:9 rwm", "/dev/char/5:0 rwm", "/dev/char/5:2 rwm", "char-pts rwm"}
V1_DEVICES_LIST = {"c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm",
                   "c 136:* rwm"}
SLEEPER = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"]
ERRNO_OF = {os.strerror(code): name for code, name in errno.errorcode.items()}

# Root on the test host with every capability, in the container's mount namespace and root, and (scope) in the
# container's cgroups too. Each argument is an action; prints {action: "ok" or the errno's name}.
PROBE = r"""
import errno, fcntl, json, os, stat, struct, sys
from quilt_agent import cgroups
from quilt_agent.helper import syscalls

pid, where, actions = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
if where == "scope":
    for procs in cgroups.procs_files(pid):
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY)
syscalls.setns(os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY), syscalls.CLONE_NEWNS)
os.fchdir(root)
os.chroot(".")
MODES = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}
TIOCGPTN, TIOCSPTLCK = 0x80045430, 0x40045431

def act(action):
    kind, _, arg = action.partition(":")
    if kind == "hole":  # a tmpfs that allows devices
        os.makedirs(arg, exist_ok=True)
        syscalls.mount("tmpfs", arg, "tmpfs", syscalls.MS_NOSUID, "mode=0755,size=64k")
    elif kind == "mknod":
        path, kind, major, minor = arg.split(":")
        os.mknod(path, (stat.S_IFBLK if kind == "b" else stat.S_IFCHR) | 0o666, os.makedev(int(major), int(minor)))
    elif kind == "open":
        path, mode = arg.rsplit(":", 1)
        os.close(os.open(path, MODES[mode] | os.O_NOCTTY | os.O_NONBLOCK))
    elif kind == "pty":  # a new terminal of the container's devpts, unlocked and used
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        (n,) = struct.unpack("i", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))
        slave = os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY)
        os.write(slave, b"x")
        return "ok" if os.read(master, 1) == b"x" else "garbled"
    return "ok"

results = {}
for action in actions:
    try:
        results[action] = act(action)
    except OSError as e:
        results[action] = errno.errorcode[e.errno]
print(json.dumps(results))
"""


def probe(pid: int, where: str, *actions: str) -> dict[str, str]:
    """Run PROBE as root in the container's mount namespace; where: "scope" (in its cgroups) or "host"."""
    out = subprocess.run([sys.executable, "-c", PROBE, str(pid), where, *actions], cwd=PROJECT, capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return json.loads(out)


def opens_script(paths: dict[str, str]) -> str:
    """Shell lines that open each path with its redirection (`<`, `>`, `<>`) and print path=ok or path=ERROR."""
    return "\n".join(f"if (exec 3{op}{path}) 2>/tmp/.err; then echo {path}=ok; else echo {path}=\"$(cat /tmp/.err)\";"
                     " fi" for path, op in paths.items())


def outcomes(lines: list[str]) -> dict[str, str]:
    """path=ok or path=<busybox's message ending in strerror> -> path: ok or the errno's name."""
    found = {}
    for line in lines:
        path, _, said = line.partition("=")
        found[path] = "ok" if said == "ok" else ERRNO_OF.get(said.rsplit(": ", 1)[-1], said)
    return found


async def exec_opens(client: Client, path: str, paths: dict[str, str]) -> dict[str, str]:
    result = await client.exec(path, ["/bin/sh", "-c", opens_script(paths)])
    return outcomes(result.stdout.decode().splitlines())


@pytest.fixture
def devsource(name: str) -> Iterator[Path]:
    """A host directory on a file system that allows devices (the test host's /tmp is nodev), for bind mounts."""
    path = Path(f"/var/lib/quilt/test-devices-{name}")
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def volume(client: Client, name: str) -> AsyncIterator[str]:
    """A named volume's name; the volume is removed after the test's containers."""
    yield f"devvol-{name}"
    for entry in await client.list_containers():
        await client.remove(entry.path, force=True)
    if f"devvol-{name}" in [n for n, _, _ in await client.list_volumes()]:
        await client.remove_volume(f"devvol-{name}", True)


# --- the device cgroup ----------------------------------------------------------------------------------------


async def test_the_scope_has_the_oci_default_device_allow_list(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), SLEEPER)
    shown = systemctl("show", f"quilt-{name}.scope", "-p", "DevicePolicy", "-p", "DeviceAllow").stdout.splitlines()
    assert "DevicePolicy=closed" in shown, shown
    assert {line.split("=", 1)[1] for line in shown if line.startswith("DeviceAllow=")} == DEVICE_ALLOW, shown
    # On cgroup v1 the kernel's own list shows it (systemd adds its inaccessible nodes, 0:0); v2 has a BPF program.
    pid = await client.get_property(path, "MainPID")
    v1 = [d for d in cgroups.process_cgroups(pid) if "devices" in d.hierarchy.controllers]
    if v1:
        assert v1[0].path.endswith(f"/quilt-{name}.scope"), v1
        assert set(v1[0].read("devices.list").split("\n")) - {"", "c 0:0 rwm", "b 0:0 rwm"} == V1_DEVICES_LIST


async def test_a_device_node_outside_the_list_cannot_be_opened_in_the_container(client: Client, busybox_tar: Path,
                                                                                 name: str) -> None:
    # The init waits for the host's go, then opens the nodes itself: it is in the scope from its first instruction.
    script = (f"while [ ! -e /tmp/go ]; do sleep 0.05; done\n"
              f"{opens_script({f'/hole/{n}': FORBIDDEN[n][3] for n in FORBIDDEN})}\n"
              f"echo {END}; echo {END} >&2; sleep 300")
    # The host's ids: in a user namespace of its own, the container's root may not open the root-owned nodes at
    # all (EACCES), and the device cgroup, which this tests, would not be reached.
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", script], {"userns": "host"})
    pid = await client.get_property(path, "MainPID")
    nodes = [f"mknod:/hole/{n}:{kind}:{major}:{minor}" for n, (kind, major, minor, _) in FORBIDDEN.items()]
    made = probe(pid, "host", "hole:/hole", *nodes)
    assert set(made.values()) == {"ok"}, made
    # Root outside the scope opens them: the nodes work, the hole allows devices.
    host_open = probe(pid, "host", "open:/hole/blk:r", "open:/hole/kmsg:w")
    assert host_open == {"open:/hole/blk:r": "ok", "open:/hole/kmsg:w": "ok"}, host_open
    Path(f"/proc/{pid}/root/tmp/go").touch()

    # The container's root (its init, then an exec'd shell) gets EPERM, the device cgroup's answer.
    out, err = await logs_until_end(client, path)
    assert outcomes(out) == {"/hole/blk": "EPERM", "/hole/kmsg": "EPERM"}, (out, err)
    assert await exec_opens(client, path, {f"/hole/{n}": FORBIDDEN[n][3] for n in FORBIDDEN}) == {
        "/hole/blk": "EPERM", "/hole/kmsg": "EPERM"}
    # So does root with every capability once it is in the scope.
    in_scope = probe(pid, "scope", "open:/hole/blk:r", "open:/hole/kmsg:w")
    assert in_scope == {"open:/hole/blk:r": "EPERM", "open:/hole/kmsg:w": "EPERM"}, in_scope


async def test_the_allowed_devices_still_work_in_the_container(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), SLEEPER)
    pid = await client.get_property(path, "MainPID")
    seen = await exec_opens(client, path, {p: "<>" for p in ALLOWED})
    # /dev/tty opens once there is a controlling terminal (exec -it); without one the tty driver says ENXIO.
    assert seen == {**{p: "ok" for p in ALLOWED}, "/dev/tty": "ENXIO"}, seen
    script = ("for d in zero urandom random; do head -c 4 /dev/$d | wc -c; done;"
              " echo x > /dev/null && echo null; echo x > /dev/full || echo full")
    result = await client.exec(path, ["/bin/sh", "-c", script])
    assert result.stdout.decode().split() == ["4", "4", "4", "null", "full"], result
    # A new terminal of the container's devpts: ptmx opens, and its pts reaches the tty driver (still locked: EIO).
    pts = await client.exec(path, ["/bin/sh", "-c", "exec 3<>/dev/ptmx || exit 1; n=$(ls /dev/pts | grep -v ptmx);"
                                   " if (exec 4<>/dev/pts/$n) 2>/tmp/.err; then echo ok; else cat /tmp/.err; fi"])
    assert pts.exit_code == 0 and outcomes(["pts=" + pts.stdout.decode().strip()]) == {"pts": "EIO"}, pts
    # Unlocked and used by root in the scope: every step of a terminal the container makes for itself.
    allowed = probe(pid, "scope", "pty", *(f"open:{p}:rw" for p in ALLOWED if p != "/dev/tty"))
    assert set(allowed.values()) == {"ok"}, allowed


@pytest.mark.parametrize("userns", ["host", "auto"])
async def test_a_terminal_passed_in_by_exec_it_is_usable(client: Client, busybox_tar: Path, name: str,
                                                         userns: str) -> None:
    # exec -it gives the command a terminal of the caller's devpts (char-pts): re-opened through /proc/self/fd and
    # as its controlling terminal /dev/tty, both checked by the device cgroup at open. In a user namespace of
    # its own, the caller's terminal is not its root's: used as given and as /dev/tty, but not opened again by
    # its name (a terminal's owner is the caller, an id the namespace does not map).
    path = await client.run_container(name, str(busybox_tar), SLEEPER, {"userns": userns})
    master, slave = os.openpty()
    try:
        script = ("test -t 0 && echo isatty=ok; (exec 3<>/dev/tty) && echo tty=ok;"
                  " (exec 3<>/proc/self/fd/0) && echo fd=ok")
        code = await client.exec_with_fds(path, ["/bin/sh", "-c", script], {"tty": True}, slave, slave, slave)
        os.close(slave)
        slave = -1
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's last user is gone
                break
            if not chunk:
                break
            out += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    lines = out.decode().replace("\r", "").splitlines()
    if userns == "host":
        assert code == 0 and lines == ["isatty=ok", "tty=ok", "fd=ok"], out
    else:
        assert lines[:2] == ["isatty=ok", "tty=ok"] and "Permission denied" in lines[2], out


# --- nodev ----------------------------------------------------------------------------------------------------


async def test_a_device_node_on_a_nodev_mount_gives_eacces_even_without_the_cgroup(
        client: Client, busybox_tar: Path, name: str, devsource: Path, volume: str) -> None:
    # The host's ids: the host's root makes the nodes below, which a volume's idmapped mount takes only from an id
    # of the container's range.
    path = await client.run_container(name, str(busybox_tar), SLEEPER,
                                      {"volumes": [f"{volume}:/v", f"{devsource}:/h"], "tmpfs": ["/t"],
                                       "userns": "host"})
    pid = await client.get_property(path, "MainPID")
    places = ("/tmp", "/dev", "/v", "/h", "/t")  # the root (overlay), /dev's tmpfs, volume, bind mount, tmpfs
    made = probe(pid, "host", *(f"mknod:{d}/blk:b:7:0" for d in places))
    assert set(made.values()) == {"ok"}, made
    # The container's root: EACCES from the mount, before the device cgroup is asked.
    seen = await exec_opens(client, path, {f"{d}/blk": "<" for d in places})
    assert seen == {f"{d}/blk": "EACCES" for d in places}, seen
    # Root on the host, outside the scope (no device cgroup), reaching the nodes through the container's mounts.
    host = probe(pid, "host", *(f"open:{d}/blk:r" for d in places))
    assert set(host.values()) == {"EACCES"}, host
    # The same nodes through the host's own mounts of the volume and the bound directory open: the mounts decide.
    for node in (Path(f"/var/lib/quilt/volumes/{volume}/_data/blk"), devsource / "blk"):
        assert stat.S_ISBLK(node.stat().st_mode)
        os.close(os.open(node, os.O_RDONLY | os.O_NONBLOCK))


def mount_options(mountinfo: list[str]) -> dict[str, set[str]]:
    """Mount point -> its per-mount options (the last mount at each point: the one a path reaches)."""
    found = {}
    for line in mountinfo:
        fields = line.split(" - ")[0].split()
        found[fields[4]] = set(fields[5].split(","))
    return found


@pytest.mark.parametrize("read_only", [False, True])
async def test_mountinfo_shows_nodev_everywhere_but_on_devices_and_devpts(
        client: Client, busybox_tar: Path, name: str, devsource: Path, volume: str, read_only: bool) -> None:
    options = {"volumes": [f"{volume}:/v", f"{devsource}:/h", f"{devsource}:/hro:ro"], "tmpfs": ["/t"],
               "read_only": read_only}
    out = await run(client, name, busybox_tar, "cat /proc/self/mountinfo", options)
    assert out.exit_code == 0, out
    mounts = mount_options(out.stdout)
    nodev = ["/", "/dev", "/dev/shm", "/proc", "/sys", "/v", "/h", "/hro", "/t"]
    nodev += ["/tmp", "/run"] if read_only else []  # Podman's tmpfs for a read-only root
    for point in nodev:
        assert "nodev" in mounts[point], (point, mounts[point])
    for point in ("/v", "/h", "/hro", "/t"):  # as Podman's volumes
        assert "nosuid" in mounts[point], (point, mounts[point])
    assert "ro" in mounts["/hro"] and "rw" in mounts["/h"]
    assert ("ro" in mounts["/"]) is read_only
    for point in ("/dev/pts", "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"):
        assert "nodev" not in mounts[point], (point, mounts[point])


async def test_a_bind_mount_keeps_its_sources_flags_when_options_remount_it(
        client: Client, busybox_tar: Path, name: str, devsource: Path) -> None:
    # A remount sets every per-mount flag: an option (ro) must not clear the noexec the source's mount has.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=64k", "devsrc", str(devsource)], check=True)
    try:
        out = await run(client, name, busybox_tar, "cat /proc/self/mountinfo",
                        {"volumes": [f"{devsource}:/h:ro", f"{devsource}:/hrw"]})
    finally:
        subprocess.run(["umount", str(devsource)], check=True)
    mounts = mount_options(out.stdout)
    assert {"ro", "noexec", "nodev", "nosuid"} <= mounts["/h"], mounts["/h"]
    assert {"rw", "noexec", "nodev", "nosuid"} <= mounts["/hrw"], mounts["/hrw"]
