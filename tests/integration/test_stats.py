"""GetStats and `quiltctl stats`: the counters of a container's scope as the kernel keeps them, on cgroup v1
(this machine: memory and pids in v1, CPU time in the unified hierarchy's cpu.stat) and v2 alike
(tests/host/test_cgroup2.py runs this module in a test host with only cgroup2)."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from quilt_agent import cgroups
from quilt_agent.client import Client, ClientError
from tests.integration.waiting import until

ERR = "org.quilt.Runtime.Error."
MiB = 1 << 20
QUILTCTL = shutil.which("quiltctl") or "/usr/bin/quiltctl"
KEYS = {"memory_current", "memory_peak", "memory_max", "cpu_usec", "pids_current", "pids_max"}


@pytest.fixture
async def limited(client: Client, busybox_tar: Path, name: str) -> str:
    return await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"],
                                      {"memory_max": 128 * MiB, "pids_max": 40})


async def sh(client: Client, path: str, script: str) -> None:
    result = await client.exec(path, ["/bin/sh", "-c", script], {})
    assert result.exit_code == 0, result


async def test_stats_report_the_limits_and_what_the_container_uses(client: Client, limited: str) -> None:
    stats = await client.get_stats(limited)
    assert set(stats) == KEYS
    assert stats["memory_max"] == 128 * MiB and stats["pids_max"] == 40
    assert stats["pids_current"] == 1  # the init alone: Quilt's monitor is in a scope of its own
    assert 0 < stats["memory_current"] <= stats["memory_peak"] < 128 * MiB
    assert stats["cpu_usec"] > 0


async def test_stats_agree_with_the_scopes_cgroup_files(client: Client, limited: str) -> None:
    init = (await client.properties(limited))["MainPID"]
    stats = await client.get_stats(limited)
    from_files = cgroups.read_stats(init)
    assert stats["pids_current"] == from_files.pids_current and stats["pids_max"] == from_files.pids_max
    assert stats["memory_max"] == from_files.memory_max
    assert abs(stats["memory_current"] - from_files.memory_current) < 4 * MiB


async def test_memory_stats_grow_when_the_container_allocates(client: Client, limited: str) -> None:
    before = await client.get_stats(limited)
    await sh(client, limited, "dd if=/dev/zero of=/dev/shm/fill bs=1M count=48 2>/dev/null")  # tmpfs: charged
    during = await client.get_stats(limited)
    assert during["memory_current"] >= before["memory_current"] + 40 * MiB
    assert during["memory_peak"] >= during["memory_current"]
    await sh(client, limited, "rm /dev/shm/fill")
    after = await client.get_stats(limited)
    assert after["memory_current"] < during["memory_current"] - 40 * MiB
    assert after["memory_peak"] >= during["memory_current"]  # the peak stays


async def test_cpu_and_pids_stats_follow_what_runs(client: Client, limited: str) -> None:
    before = await client.get_stats(limited)
    busy = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"
    await sh(client, limited, busy)
    assert (await client.get_stats(limited))["cpu_usec"] >= before["cpu_usec"] + 50_000
    task = asyncio.ensure_future(client.exec(limited, ["/bin/sh", "-c", "sleep 30 & sleep 31"], {"timeout": 5}))
    try:
        stats: dict = {}

        async def three() -> bool:  # the init and the two sleeps (sh execs one)
            stats.update(await client.get_stats(limited))
            return stats["pids_current"] >= 3

        await until(three, lambda: str(stats), interval=0.05)
    finally:
        task.cancel()
    await client.kill(limited, 9)


async def test_without_limits_memory_max_is_zero_and_pids_max_systemds_default(client: Client, busybox_tar: Path,
                                                                               name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"], {})
    stats = await client.get_stats(path)
    assert stats["memory_max"] == 0
    # A scope gets systemd's DefaultTasksMax unless told otherwise: a real limit, reported as it is.
    tasks_max = subprocess.run(["systemctl", "show", "-P", "TasksMax", f"quilt-{name}.scope"], capture_output=True,
                               text=True, check=True).stdout.strip()
    assert stats["pids_max"] == (0 if tasks_max == "infinity" else int(tasks_max))


async def test_stats_of_a_container_that_does_not_run_is_not_running(client: Client, busybox_tar: Path,
                                                                     name: str) -> None:
    created = await client.create_container(f"{name}-new", str(busybox_tar), ["/bin/true"], {})
    exited = await client.run_container(f"{name}-done", str(busybox_tar), ["/bin/true"], {})
    await client.wait(exited)
    for path in (created, exited):
        with pytest.raises(ClientError) as err:
            await client.get_stats(path)
        assert err.value.name == ERR + "NotRunning"


async def test_quiltctl_stats(client: Client, limited: str, name: str) -> None:
    table = subprocess.run([QUILTCTL, "stats", "--no-stream"], capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "CPU", "%", "MEM", "USAGE", "/", "LIMIT", "MEM", "%", "MEM", "PEAK", "PIDS"]
    assert row.split()[1] == name and row.split()[4:6] == ["/", "128.0MiB"] and row.endswith("1 / 40")
    # Streaming: one JSON sample a period, until stopped.
    proc = subprocess.Popen([QUILTCTL, "stats", "--json", "-i", "0.3", name], stdout=subprocess.PIPE, text=True)
    try:
        samples = [json.loads(proc.stdout.readline()) for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(10)
    assert [s[0]["name"] for s in samples] == [name] * 3
    assert all(s[0]["memory_limit"] == 128 * MiB and s[0]["pids"] == 1 for s in samples)
    await client.stop(limited, 1)
    stopped = subprocess.run([QUILTCTL, "stats", "--no-stream", name], capture_output=True, text=True, timeout=30)
    assert stopped.returncode == 125 and "is not running" in stopped.stderr
