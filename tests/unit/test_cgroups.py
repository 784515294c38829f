"""cgroups.py on made-up trees: the layouts of a v1, a hybrid and a pure v2 host, read the same way.

The integration tests read the real thing on this machine (hybrid) and in a test host with only cgroup2, where
this machine's kernel has no controller to give (they are bound to its v1 hierarchies); the v2 files with
controllers (memory.current, memory.peak, pids.max "max") are checked here.
"""
from __future__ import annotations

from pathlib import Path

from quilt_agent import cgroups

SCOPE = "/quilt.slice/quilt-web.scope"

HYBRID_MOUNTINFO = """\
25 30 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
29 25 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
30 25 0:27 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,pids
31 25 0:28 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,devices,release_agent=/x
"""
HYBRID_PROC_CGROUP = f"""\
6:devices:/quilt.slice
5:pids:{SCOPE}
4:memory:{SCOPE}
3:cpu,cpuacct:{SCOPE}
2:blkio:/
1:name=systemd:{SCOPE}
0::{SCOPE}
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_proc(tmp_path: Path, cgroup_text: str) -> str:
    write(tmp_path / "proc/42/cgroup", cgroup_text)
    return str(tmp_path / "proc")


def test_hierarchies_of_a_hybrid_host(tmp_path: Path) -> None:
    write(tmp_path / "mountinfo", HYBRID_MOUNTINFO)
    found = {(h.version, h.controllers, h.mountpoint) for h in cgroups.hierarchies(str(tmp_path / "mountinfo"))}
    assert found == {
        (2, frozenset(), "/sys/fs/cgroup/unified"),
        (1, frozenset({"name=systemd"}), "/sys/fs/cgroup/systemd"),
        (1, frozenset({"cpu", "cpuacct"}), "/sys/fs/cgroup/cpu,cpuacct"),
        (1, frozenset({"memory"}), "/sys/fs/cgroup/memory"),
        (1, frozenset({"pids"}), "/sys/fs/cgroup/pids"),
        (1, frozenset({"devices"}), "/sys/fs/cgroup/devices"),
    }


def test_process_cgroups_follow_each_hierarchy_and_leave_out_unmounted_ones(tmp_path: Path) -> None:
    write(tmp_path / "mountinfo", HYBRID_MOUNTINFO)
    mounted = cgroups.hierarchies(str(tmp_path / "mountinfo"))
    dirs = cgroups.process_cgroups(42, mounted, fake_proc(tmp_path, HYBRID_PROC_CGROUP))
    assert sorted(d.path for d in dirs) == sorted([
        "/sys/fs/cgroup/devices/quilt.slice", f"/sys/fs/cgroup/pids{SCOPE}", f"/sys/fs/cgroup/memory{SCOPE}",
        f"/sys/fs/cgroup/cpu,cpuacct{SCOPE}", f"/sys/fs/cgroup/systemd{SCOPE}", f"/sys/fs/cgroup/unified{SCOPE}",
    ])  # blkio is not mounted here: no directory for it


def test_a_mount_of_a_sub_tree_is_followed_from_its_root(tmp_path: Path) -> None:
    # A cgroup2 mount that shows /quilt.slice at its top (as inside a container or a test host).
    write(tmp_path / "mountinfo", "26 25 0:23 /quilt.slice /mnt/cg rw - cgroup2 cgroup2 rw\n")
    mounted = cgroups.hierarchies(str(tmp_path / "mountinfo"))
    dirs = cgroups.process_cgroups(42, mounted, fake_proc(tmp_path, f"0::{SCOPE}\n"))
    assert [d.path for d in dirs] == ["/mnt/cg/quilt-web.scope"]
    dirs = cgroups.process_cgroups(42, mounted, fake_proc(tmp_path, "0::/system.slice/x.service\n"))
    assert dirs == []  # outside what the mount shows


def v2_dir(tmp_path: Path, files: dict[str, str]) -> cgroups.CgroupDir:
    for name, text in files.items():
        write(tmp_path / "v2" / name, text)
    return cgroups.CgroupDir(cgroups.Hierarchy(2, frozenset(), str(tmp_path), "/"), str(tmp_path / "v2"))


def v1_dir(tmp_path: Path, controllers: set[str], files: dict[str, str]) -> cgroups.CgroupDir:
    name = ",".join(sorted(controllers))
    for file, text in files.items():
        write(tmp_path / name / file, text)
    return cgroups.CgroupDir(cgroups.Hierarchy(1, frozenset(controllers), str(tmp_path), "/"), str(tmp_path / name))


def test_stats_of_a_v2_scope_with_its_controllers(tmp_path: Path) -> None:
    scope = v2_dir(tmp_path, {
        "cgroup.controllers": "cpu memory pids\n", "memory.current": "1048576\n", "memory.peak": "2097152\n",
        "memory.max": "67108864\n", "pids.current": "3\n", "pids.max": "max\n",
        "cpu.stat": "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n",
    })
    assert cgroups.stats_of([scope]) == cgroups.Stats(memory_current=1 << 20, memory_peak=2 << 20,
                                                      memory_max=64 << 20, cpu_usec=123456, pids_current=3,
                                                      pids_max=0)


def test_stats_of_a_v2_scope_without_controllers_or_memory_peak_leave_them_out(tmp_path: Path) -> None:
    scope = v2_dir(tmp_path, {"cgroup.controllers": "\n", "cpu.stat": "usage_usec 7\n"})
    assert cgroups.stats_of([scope]) == cgroups.Stats(
        cpu_usec=7, missing=("memory_current", "memory_peak", "memory_max", "pids_current", "pids_max"))
    scope = v2_dir(tmp_path, {"cgroup.controllers": "memory\n", "memory.current": "5\n", "memory.max": "max\n"})
    stats = cgroups.stats_of([scope])
    assert (stats.memory_current, stats.memory_max) == (5, 0) and "memory_peak" in stats.missing  # Linux < 5.19


def test_stats_of_v1_and_of_a_hybrid_host(tmp_path: Path) -> None:
    memory = v1_dir(tmp_path, {"memory"}, {"memory.usage_in_bytes": "4096\n", "memory.max_usage_in_bytes": "8192\n",
                                           "memory.limit_in_bytes": "9223372036854771712\n"})
    pids = v1_dir(tmp_path, {"pids"}, {"pids.current": "2\n", "pids.max": "41\n"})
    cpuacct = v1_dir(tmp_path, {"cpu", "cpuacct"}, {"cpuacct.usage": "5000000\n"})
    v1 = cgroups.stats_of([memory, pids, cpuacct])
    assert v1 == cgroups.Stats(memory_current=4096, memory_peak=8192, memory_max=0, cpu_usec=5000,
                               pids_current=2, pids_max=41)
    # Hybrid: the unified hierarchy has no controller, but its cpu.stat is there, and wins over cpuacct.
    unified = v2_dir(tmp_path, {"cgroup.controllers": "", "cpu.stat": "usage_usec 9000\n"})
    hybrid = cgroups.stats_of([memory, pids, cpuacct, unified])
    assert hybrid == v1.with_(cpu_usec=9000)
