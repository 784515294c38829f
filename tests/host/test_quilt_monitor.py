"""quilt-monitor (monitor/quilt-monitor.c), the program a container's monitor execs once the container runs, on this
machine: it must reap the process it was the parent of, record its end as the agent reads it, and note OOM kills
as helper/oom.py does. The container side (the agent's records after real exits and OOM kills, across agent
restarts) is the integration suite's; here the program alone, with a child of its own and stand-in cgroup files.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]

# What the Python monitor does before its exec: it forked the init, holds the OOM watch's fds, and execs the
# program with them. Here the "init" is `sh -c CODE`.
PARENT = """
import os, sys
monitor, exit_file, counter_file, kind, code = sys.argv[1:6]
counter = event = -1
if counter_file:
    counter = os.open(counter_file, os.O_RDONLY)
    event = counter
if kind == "in":
    event = os.eventfd(1)  # v1: one notification already sent
for fd in {counter, event} - {-1}:
    os.set_inheritable(fd, True)  # as OomWatch.handed_over leaves them
pid = os.fork()
if pid == 0:
    os.execvp("sh", ["sh", "-c", code])
os.execv(monitor, ["quilt-mon", "web", str(pid), exit_file, str(counter), str(event), kind])
"""


@pytest.fixture(scope="module")
def monitor() -> Path:
    subprocess.run(["make", "-s", "-C", str(PROJECT), "build/quilt-monitor"], check=True)
    return PROJECT / "build/quilt-monitor"


def run_monitor(monitor: Path, tmp_path: Path, code: str, counter: str = "", kind: str = "-",
                exit_file: Path | None = None) -> tuple[subprocess.CompletedProcess[str], dict]:
    exit_file = exit_file or tmp_path / "exit.json"
    result = subprocess.run([sys.executable, "-c", PARENT, str(monitor), str(exit_file), counter, kind, code],
                            capture_output=True, text=True, timeout=30)
    recorded = json.loads(exit_file.read_text()) if exit_file.exists() else {}
    return result, recorded


def test_an_exit_code_is_recorded_as_the_agent_reads_it(monitor: Path, tmp_path: Path) -> None:
    before = time.time_ns() // 1000
    result, recorded = run_monitor(monitor, tmp_path, "sleep 0.1; exit 3")
    assert (result.returncode, result.stderr) == (0, "")
    assert recorded.pop("finished_at") >= before + 100_000
    assert recorded == {"exit_code": 3, "exit_signal": 0, "oom_killed": False, "reason": "", "failed": False}
    assert not (tmp_path / "exit.json.tmp").exists()


def test_a_kill_is_recorded_as_128_plus_its_signal(monitor: Path, tmp_path: Path) -> None:
    _, recorded = run_monitor(monitor, tmp_path, "kill -9 $$")
    assert (recorded["exit_code"], recorded["exit_signal"]) == (137, 9)


def test_an_oom_kill_counted_in_memory_events_is_recorded(monitor: Path, tmp_path: Path) -> None:
    """cgroup v2: the last count, read after the reaping, says an OOM kill happened."""
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n")
    _, recorded = run_monitor(monitor, tmp_path, "exit 137", counter=str(events), kind="pri")
    assert recorded["oom_killed"] is True


def test_no_oom_kill_counted_is_none_recorded(monitor: Path, tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    _, recorded = run_monitor(monitor, tmp_path, "exit 0", counter=str(events), kind="pri")
    assert recorded["oom_killed"] is False


def test_a_v1_oom_notification_is_an_oom_kill_before_it_is_counted(monitor: Path, tmp_path: Path) -> None:
    """cgroup v1: the eventfd fires before oom_control counts the kill; with the cgroup still there it was one."""
    control = tmp_path / "memory.oom_control"
    control.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    _, recorded = run_monitor(monitor, tmp_path, "sleep 0.2", counter=str(control), kind="in")
    assert recorded["oom_killed"] is True


def test_it_shows_as_the_containers_monitor(monitor: Path, tmp_path: Path) -> None:
    """ps shows `quilt-mon web`, as it did before the exec; the exit file's path is not on show."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(monitor), str(tmp_path / "exit.json"), "", "-",
                               "sleep 5"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{parent.pid}/comm").read_text() != "quilt-mon web\n":
            assert time.monotonic() < deadline, "the monitor never named itself"
            time.sleep(0.01)
        assert Path(f"/proc/{parent.pid}/cmdline").read_bytes().rstrip(b"\0") == b"quilt-mon\0web"
        fds = {os.readlink(f"/proc/{parent.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{parent.pid}/fd")}
        assert any(fd.startswith("anon_inode:[pidfd]") for fd in fds)
    finally:
        for child in Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split():
            os.kill(int(child), 9)
        parent.wait(timeout=10)
    assert json.loads((tmp_path / "exit.json").read_text())["exit_signal"] == 9


def test_an_exit_file_it_cannot_write_is_a_failure_it_names(monitor: Path, tmp_path: Path) -> None:
    exit_file = tmp_path / "gone" / "exit.json"
    result, recorded = run_monitor(monitor, tmp_path, "exit 0", exit_file=exit_file)
    assert result.returncode == 1 and recorded == {}
    assert result.stderr == f"quilt-monitor: {exit_file}.tmp: No such file or directory\n"


def test_a_symlink_in_place_of_the_temporary_file_is_not_followed(monitor: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "exit.json.tmp").symlink_to(target)
    result, _ = run_monitor(monitor, tmp_path, "exit 0")
    assert result.returncode == 1 and not target.exists()


@pytest.mark.parametrize("args", [
    [], ["web", "1", "/x", "-1", "-1"], ["web", "0", "/x", "-1", "-1", "-"], ["web", "abc", "/x", "-1", "-1", "-"],
    ["web", "1", "/x", "-2", "-1", "-"], ["web", "1", "/x", "3x", "-1", "-"],
])
def test_bad_arguments_are_refused_with_the_usage(monitor: Path, args: list[str]) -> None:
    result = subprocess.run([str(monitor), *args], capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: quilt-monitor NAME INIT_PID EXIT_FILE")
