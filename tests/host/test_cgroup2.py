"""Exec and stats on a host with only cgroup2 (tests/testhost.py --cgroup unified), from the bare machine.

The integration suite runs in the default test host, whose cgroups are this machine's hybrid (v1 controllers,
a unified hierarchy beside them). Here the exec tests run again where only the unified hierarchy is mounted,
and GetStats is read there: this machine's kernel has every controller bound to its v1 hierarchies, so a v2
scope has none, and only the CPU time (cpu.stat, kept by every v2 cgroup) can be reported.
tests/unit/test_cgroups.py reads the v2 controllers' files.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
TESTHOST = PROJECT / "tests/testhost.py"

STATS_SCRIPT = r"""
set -e
systemctl start quilt-agent
scripts/busybox-rootfs.sh /tmp/bb.tar
quiltctl run -d --name v2 /tmp/bb.tar -- sh -c 'i=0; while [ $i -lt 50000 ]; do i=$((i+1)); done; exec sleep 300' >/dev/null
sleep 1
echo "stats=$(quiltctl stats --no-stream --json v2)"
echo "cgroup=$(quiltctl exec v2 grep ^0:: /proc/self/cgroup)"
"""


def run_in_unified_host(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/bin/python3", str(TESTHOST), "run", "--name", "cg2", "--cgroup", "unified", "--",
                           *command], cwd=PROJECT, capture_output=True, text=True, timeout=300)


def test_exec_tests_pass_on_a_cgroup2_only_host() -> None:
    result = run_in_unified_host(".venv/bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 "tests/integration/helper/test_exec.py")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_stats_on_a_cgroup2_only_host_report_the_cpu_time_and_leave_out_what_the_kernel_lacks() -> None:
    result = run_in_unified_host("sh", "-c", STATS_SCRIPT)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    (row,) = json.loads(seen["stats"])
    assert row["name"] == "v2" and row["cpu_time_usec"] > 10_000
    assert row["memory_usage"] == 0 and row["pids"] == 0  # no memory or pids controller to count them
    assert seen["cgroup"] == "0::/"  # the exec'd command sees the container's scope as its root
