"""A container's cgroups as the kernel shows them: where they are (to join them on exec) and what they count
(stats), on cgroup v1, v2 (unified) and the hybrid of both alike.

systemd makes and limits the container's scope; this module only finds its directories and reads them. They
are found from a process in the scope (/proc/PID/cgroup) and the mounted hierarchies (/proc/self/mountinfo),
not from a path assumed from the unit's name, so a host that mounts its hierarchies elsewhere works as well.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy: v1 with its controllers (and name=), or the unified (v2) one."""

    version: int  # 1 or 2
    controllers: frozenset[str]  # v1: e.g. {"cpu", "cpuacct"} or {"name=systemd"}; v2: empty
    mountpoint: str
    root: str  # the cgroup the mount shows at its top, "/" unless a sub-tree is mounted


@dataclass(frozen=True)
class CgroupDir:
    """A process's cgroup in one hierarchy, as a directory."""

    hierarchy: Hierarchy
    path: str  # the directory

    def read(self, name: str) -> str:
        return Path(self.path, name).read_text()


def hierarchies(mountinfo: str = "/proc/self/mountinfo") -> list[Hierarchy]:
    found: list[Hierarchy] = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            fstype, _source, options = (right.split() + ["", "", ""])[:3]
            if fstype == "cgroup2":
                found.append(Hierarchy(2, frozenset(), fields[4], fields[3]))
            elif fstype == "cgroup":
                kept = {o for o in options.split(",") if o not in ("rw", "ro") and "=" not in o or o.startswith("name=")}
                found.append(Hierarchy(1, frozenset(kept & _known_v1(kept)), fields[4], fields[3]))
    return found


def _known_v1(options: set[str]) -> set[str]:
    # A v1 mount's options mix its controllers with mount flags; the flags are the few below.
    flags = {"nosuid", "nodev", "noexec", "relatime", "noatime", "strictatime", "nodiratime", "xattr", "clone_children",
             "noprefix", "cpuset_v2_mode", "favordynmods", "nsdelegate", "memory_recursiveprot", "memory_localevents"}
    return {o for o in options if o not in flags}


def process_cgroups(pid: int, mounted: list[Hierarchy] | None = None, proc: str = "/proc") -> list[CgroupDir]:
    """The directories of `pid`'s cgroups, one per mounted hierarchy it belongs to (the caller's view of the paths:
    call it from the host's cgroup namespace)."""
    mounted = hierarchies() if mounted is None else mounted
    dirs: list[CgroupDir] = []
    with open(f"{proc}/{pid}/cgroup") as f:
        lines = f.read().splitlines()
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if hid == "0":
            matches = [h for h in mounted if h.version == 2]
        else:
            wanted = frozenset(c for c in controllers.split(",") if c)
            matches = [h for h in mounted if h.version == 1 and h.controllers == wanted]
        for h in matches[:1]:  # a hierarchy mounted twice is still one cgroup
            if h.root != "/" and not (path == h.root or path.startswith(h.root + "/")):
                continue  # outside what this mount shows
            relative = path[len(h.root):] if h.root != "/" else path
            dirs.append(CgroupDir(h, os.path.normpath(h.mountpoint + "/" + relative.lstrip("/"))))
    return dirs


def procs_files(pid: int, already: int = 0) -> tuple[str, ...]:
    """The cgroup.procs files that put a process into every cgroup `pid` is in, but those the process `already`
    (the process it is forked from) is in: each write takes a lock of the whole cgroup tree (on v1 it can wait
    for an RCU grace period), even when it moves nothing."""
    mounted = hierarchies()
    skip = {d.path for d in process_cgroups(already, mounted)} if already else set()
    return tuple(f"{d.path}/cgroup.procs" for d in process_cgroups(pid, mounted) if d.path not in skip)


@dataclass(frozen=True)
class Stats:
    """What the kernel counts for one container's cgroup. 0 for a limit means none."""

    memory_current: int = 0  # bytes
    memory_peak: int = 0  # bytes, the highest memory_current since the scope was made
    memory_max: int = 0
    cpu_usec: int = 0  # CPU time used, user + system
    pids_current: int = 0
    pids_max: int = 0
    missing: tuple[str, ...] = field(default=())  # counters this host's kernel does not provide

    def with_(self, **changes: int) -> Stats:
        return replace(self, **changes)


V1_UNLIMITED = 1 << 62  # v1 shows "no limit" as a huge page-rounded number (9223372036854771712)


def _int(text: str) -> int:
    value = text.strip()
    if value == "max":
        return 0
    number = int(value)
    return 0 if number >= V1_UNLIMITED else number


def _first(dirs: list[CgroupDir], version: int, controller: str | None, name: str) -> str | None:
    for d in dirs:
        if d.hierarchy.version != version or (controller and controller not in d.hierarchy.controllers):
            continue
        try:
            return d.read(name)
        except OSError:
            continue
    return None


def read_stats(pid: int) -> Stats:
    """The counters of the cgroups `pid` is in."""
    return stats_of(process_cgroups(pid))


def stats_of(dirs: list[CgroupDir]) -> Stats:
    """The counters of these cgroup directories: each from v2 where the controller is there, else from v1
    (a hybrid host has memory and pids in v1, and CPU time in v2's cpu.stat, which every v2 cgroup has)."""
    values: dict[str, int] = {}
    missing: list[str] = []

    def take(key: str, *candidates: tuple[int, str | None, str]) -> None:
        for version, controller, name in candidates:
            text = _first(dirs, version, controller, name)
            if text is not None:
                values[key] = _parse(name, text)
                return
        missing.append(key)

    v2_controllers = _v2_controllers(dirs)
    memory_v2 = "memory" in v2_controllers
    pids_v2 = "pids" in v2_controllers
    take("memory_current", *([(2, None, "memory.current")] if memory_v2 else []), (1, "memory", "memory.usage_in_bytes"))
    take("memory_peak", *([(2, None, "memory.peak")] if memory_v2 else []), (1, "memory", "memory.max_usage_in_bytes"))
    take("memory_max", *([(2, None, "memory.max")] if memory_v2 else []), (1, "memory", "memory.limit_in_bytes"))
    take("cpu_usec", (2, None, "cpu.stat"), (1, "cpuacct", "cpuacct.usage"))
    take("pids_current", *([(2, None, "pids.current")] if pids_v2 else []), (1, "pids", "pids.current"))
    take("pids_max", *([(2, None, "pids.max")] if pids_v2 else []), (1, "pids", "pids.max"))
    return Stats(**values, missing=tuple(missing))


def _v2_controllers(dirs: list[CgroupDir]) -> set[str]:
    for d in dirs:
        if d.hierarchy.version == 2:
            try:
                return set(d.read("cgroup.controllers").split())
            except OSError:
                return set()
    return set()


def _parse(name: str, text: str) -> int:
    if name == "cpu.stat":
        fields = dict(line.split() for line in text.splitlines() if line.strip())
        return int(fields["usage_usec"])
    if name == "cpuacct.usage":
        return int(text) // 1000  # nanoseconds
    return _int(text)
