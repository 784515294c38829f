"""Resource limits of a container, enforced by the kernel through its scope's cgroup, tested through the real bus.

The machine here has cgroup v1 controllers (memory, pids, cpu); the files are looked up in v1 first and in the
unified hierarchy otherwise, so the tests also read right on a cgroup v2 machine. CPU time is read from /proc:
the scope is not in the v1 cpuacct hierarchy here (mounted apart from cpu, and the scope has no CPUAccounting).
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

from quilt_agent.client import Client
from tests.integration.waiting import until

CGROUP = Path("/sys/fs/cgroup")
MiB = 1024 * 1024


def scope_file(unit: str, controller: str, v1: str, v2: str) -> Path:
    """A cgroup file of the container's scope: the v1 hierarchy of the controller, or the unified one."""
    for path in (CGROUP / controller / "quilt.slice" / unit / v1, CGROUP / "quilt.slice" / unit / v2,
                 CGROUP / "unified" / "quilt.slice" / unit / v2):
        if path.exists():
            return path
    raise AssertionError(f"no {controller} cgroup file {v1} or {v2} for {unit}")


def unit_property(unit: str, prop: str) -> str:
    return subprocess.run(["systemctl", "show", "-P", prop, unit], capture_output=True, text=True,
                          check=True).stdout.strip()


async def wait_for_line(client: Client, path: str, prefix: str, timeout: float = 10.0) -> str:
    """The first stdout line starting with prefix, once journald has it."""
    seen: list[str] = []

    async def line() -> str | None:
        seen[:] = [line.text for line in await client.get_logs(path, {}) if line.stream == "stdout"]
        return next((text for text in seen if text.startswith(prefix)), None)

    return await until(line, lambda: f"no line {prefix}... in {seen}", timeout)


async def test_memory_hog_is_oom_killed_at_memory_max(client: Client, busybox_tar: Path, name: str) -> None:
    unit = f"quilt-{name}.scope"
    # The shell waits for SIGUSR1, then becomes the hog: busybox tail keeps the last "line" of /dev/zero,
    # which never ends, in a buffer that grows without bound. As PID 1 it is what the OOM killer ends.
    script = ("trap 'go=1' USR1; echo ready $(cat /proc/1/oom_score_adj);"
              " while [ -z \"$go\" ]; do sleep 0.02; done; exec tail /dev/zero")
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", script], {"memory_max": 32 * MiB})
    ready = await wait_for_line(client, path, "ready")
    # The monitor shields itself with -1000 where the host allows it; the container must keep the agent's value,
    # or the OOM killer would find nothing it may kill in the scope.
    agent = unit_property("quilt-agent.service", "MainPID")
    assert ready.split()[1] == Path(f"/proc/{agent}/oom_score_adj").read_text().strip() != "-1000"
    props = await client.properties(path)
    assert props["State"] == "running" and props["MemoryMax"] == 32 * MiB
    assert int(scope_file(unit, "memory", "memory.limit_in_bytes", "memory.max").read_text()) == 32 * MiB
    assert unit_property(unit, "MemoryMax") == str(32 * MiB)
    await client.kill(path, signal.SIGUSR1)
    assert await client.wait(path) == 128 + signal.SIGKILL
    props = await client.properties(path)
    assert props["OOMKilled"] is True
    assert props["State"] == "exited"
    assert props["ExitSignal"] == signal.SIGKILL


async def test_a_container_that_stays_under_memory_max_is_not_oom_killed(client: Client, busybox_tar: Path,
                                                                         name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "head -c 8M /dev/zero | tail -c 1"],
                                      {"memory_max": 32 * MiB})
    assert await client.wait(path) == 0
    props = await client.properties(path)
    assert props["OOMKilled"] is False and props["ExitSignal"] == 0


async def test_fork_bomb_stops_at_pids_max(client: Client, busybox_tar: Path, name: str) -> None:
    unit = f"quilt-{name}.scope"
    # A child shell starts background sleeps until fork fails (60 tries at most), then exits; PID 1 counts what
    # runs with shell builtins only, then becomes a sleep (exec: no fork) to keep them all running.
    bomb = "i=0; while [ $i -lt 60 ]; do sleep 300 & i=$((i+1)); done"
    script = f"sh -c '{bomb}'; set -- /proc/[0-9]*; echo \"running=$#\"; exec sleep 300"
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", script], {"pids_max": 20})
    running = int((await wait_for_line(client, path, "running=")).split("=")[1])
    # At the peak the child shell ran too: PID 1, the child shell and the sleeps reached exactly pids_max.
    assert running + 1 == 20
    props = await client.properties(path)
    assert props["PidsMax"] == 20
    # The scope holds the container's processes alone: its monitor is in a scope of its own.
    assert int(scope_file(unit, "pids", "pids.max", "pids.max").read_text()) == 20
    assert int(scope_file(unit, "pids", "pids.current", "pids.current").read_text()) == running
    assert unit_property(unit, "TasksMax") == "20"
    errors = [line.text for line in await client.get_logs(path, {}) if line.stream == "stderr"]
    assert errors and all("can't fork" in line for line in errors), errors
    await client.kill(path, signal.SIGKILL)
    await client.wait(path)


async def test_busy_loop_is_held_to_cpu_quota(client: Client, busybox_tar: Path, name: str) -> None:
    unit = f"quilt-{name}.scope"
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "while :; do :; done"],
                                      {"cpu_quota": 20})
    props = await client.properties(path)
    assert props["CPUQuota"] == 20.0
    assert unit_property(unit, "CPUQuotaPerSecUSec") == "200ms"
    quota = CGROUP / "cpu/quilt.slice" / unit / "cpu.cfs_quota_us"
    if quota.exists():
        period = int((quota.parent / "cpu.cfs_period_us").read_text())
        assert int(quota.read_text()) / period == 0.2
    else:
        max_quota, period = scope_file(unit, "cpu", "cpu.max", "cpu.max").read_text().split()
        assert int(max_quota) / int(period) == 0.2
    pid = props["MainPID"]  # the loop runs in the shell itself (':' is a builtin): its CPU time is the container's

    def used_seconds() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    # Only the kernel's enforcement is measured: CPU used by the loop over wall time, once it runs.
    used0, wall0 = used_seconds(), time.monotonic()
    await asyncio.sleep(2.0)  # held on purpose: the window the share is measured over
    used1, wall1 = used_seconds(), time.monotonic()
    share = (used1 - used0) / (wall1 - wall0)
    assert 0.10 <= share <= 0.30, f"the busy loop used {share:.0%} of a CPU, quota 20%"
    throttled = scope_file(unit, "cpu", "cpu.stat", "cpu.stat").read_text().split()
    assert int(throttled[throttled.index("nr_throttled") + 1]) > 0
    await client.kill(path, signal.SIGKILL)
    await client.wait(path)


async def test_limits_are_absent_unless_asked(client: Client, busybox_tar: Path, name: str) -> None:
    unit = f"quilt-{name}.scope"
    path = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"], {})
    props = await client.properties(path)
    assert (props["MemoryMax"], props["PidsMax"], props["CPUQuota"]) == (0, 0, 0.0)
    assert unit_property(unit, "MemoryMax") == "infinity"
    assert unit_property(unit, "CPUQuotaPerSecUSec") == "infinity"
    await client.kill(path, signal.SIGKILL)
    await client.wait(path)
