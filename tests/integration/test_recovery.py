"""The agent goes away and comes back: containers keep running, exits meanwhile are recorded, state is reconciled.

Every test here stops, restarts or kills quilt-agent.service through systemctl, as an administrator or a crash
would, and checks through the real bus what the agent that comes back reports. While the agent is stopped no
call goes to org.quilt.Runtime: the bus would activate the agent (SystemdService=quilt-agent.service).
"""
from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

from quilt_agent.client import Client, ClientError
from tests.integration.conftest import systemctl
from tests.integration.waiting import reached_agent, until

AGENT = "quilt-agent.service"
STATE = Path("/var/lib/quilt")
# Ends at once on SIGTERM (a namespace's PID 1 without a handler would ignore it), so stop and the
# fixture's cleanup do not wait for the SIGKILL fallback.
LONG_RUNNING = ["/bin/sh", "-c", "trap 'exit 0' TERM; trap 'exit 7' USR1; sleep 300 & wait"]


# --- the agent, through systemctl ------------------------------------------------------------------


def agent_pid() -> int:
    return int(systemctl("show", "-P", "MainPID", AGENT).stdout.strip() or 0)


def agent_state() -> str:
    return systemctl("show", "-P", "ActiveState", AGENT).stdout.strip()


def stop_agent() -> None:
    systemctl("stop", AGENT)
    assert agent_state() in ("inactive", "failed")


def start_agent() -> None:
    # Many starts in a few seconds would hit the unit's start rate limit; a test is not a crash loop.
    systemctl("reset-failed", AGENT, check=False)
    systemctl("start", AGENT)  # Type=notify: returns once recovery is done and the name is owned


def restart_agent() -> None:
    systemctl("reset-failed", AGENT, check=False)
    systemctl("restart", AGENT)


async def kill_agent_and_wait_for_restart(client: Client, who: str = "main", timeout: float = 20.0) -> None:
    """SIGKILL the agent's main process (who="main": its fork server dies of PR_SET_PDEATHSIG) or every process
    of quilt-agent.service (who="all"); Restart=on-failure brings it back. Return when the bus name answers."""
    old = agent_pid()
    assert old > 0
    systemctl("reset-failed", AGENT, check=False)
    systemctl("kill", f"--kill-who={who}", "--signal=KILL", AGENT)
    deadline = time.monotonic() + timeout
    await until(lambda: not Path(f"/proc/{old}").exists(), "the agent did not die", timeout)

    async def answers() -> bool:
        if agent_pid() in (0, old) or agent_state() != "active":
            return False
        try:
            await client.list_containers()
            return True
        except ClientError:
            return False

    await until(answers, lambda: f"the agent did not come back (state {agent_state()})",
                max(0.0, deadline - time.monotonic()), interval=0.05)


def journal_of_agent() -> str:
    return subprocess.run(["journalctl", "-u", AGENT, "-o", "cat", "--no-pager"],
                          capture_output=True, text=True, check=True).stdout


# --- processes, scopes and files -------------------------------------------------------------------


def scope_state(unit: str) -> str:
    return systemctl("show", "-P", "ActiveState", unit).stdout.strip()


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


def smaps_rollup_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        values[key] = int(value.split()[0])
    return values


async def wait_gone(pid: int, timeout: float = 10.0) -> None:
    await until(lambda: not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"process {pid} still runs", timeout)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def now_usec() -> int:
    return time.time_ns() // 1000


async def running(client: Client, path: str) -> dict:
    props = await client.properties(path)
    assert props["State"] == "running" and props["MainPID"] > 0
    return props


@pytest.fixture(autouse=True)
async def agent_back(client: Client) -> AsyncIterator[None]:
    """Whatever a test did to the agent, it runs again before the client fixture cleans up."""
    yield
    if agent_state() != "active":
        start_agent()


# --- containers keep running -----------------------------------------------------------------------


async def test_containers_keep_running_across_systemctl_restart_and_are_reattached(
        client: Client, busybox_tar: Path, name: str) -> None:
    paths = [await client.run_container(f"{name}-{i}", str(busybox_tar), LONG_RUNNING, {}) for i in range(3)]
    before = [await running(client, p) for p in paths]
    old_agent = agent_pid()

    restart_agent()

    assert agent_pid() != old_agent
    for path, props in zip(paths, before):
        after = await running(client, path)
        assert after["MainPID"] == props["MainPID"]
        assert after == props
        assert scope_state(props["Unit"]) == "active"
        assert f"/quilt.slice/{props['Unit']}" in Path(f"/proc/{props['MainPID']}/cgroup").read_text()
    # The restarted agent watches them: Stop, Kill and Wait act and see the exits.
    await client.stop(paths[0], 10)
    props = await client.properties(paths[0])
    assert (props["State"], props["ExitCode"], props["ExitSignal"], props["MainPID"]) == ("exited", 0, 0, 0)
    waiting = asyncio.ensure_future(client.wait(paths[1]))
    await client.kill(paths[1], signal.SIGUSR1)
    assert await asyncio.wait_for(waiting, 10) == 7
    assert (await client.properties(paths[1]))["State"] == "exited"
    await client.kill(paths[2], signal.SIGKILL)
    assert await asyncio.wait_for(client.wait(paths[2]), 10) == 128 + signal.SIGKILL
    props = await client.properties(paths[2])
    assert props["ExitSignal"] == signal.SIGKILL
    await wait_gone(before[2]["MainPID"])
    # And a reattached container can be started again.
    await client.start(paths[0])
    await running(client, paths[0])
    await client.stop(paths[0], 10)


async def test_containers_keep_running_when_the_agent_is_killed_and_restarted_by_systemd(
        client: Client, busybox_tar: Path, name: str) -> None:
    paths = [await client.run_container(f"{name}-{i}", str(busybox_tar), LONG_RUNNING, {}) for i in range(2)]
    before = [await running(client, p) for p in paths]

    await kill_agent_and_wait_for_restart(client)

    for path, props in zip(paths, before):
        after = await running(client, path)
        assert after == props
        assert scope_state(props["Unit"]) == "active"
    await client.stop(paths[0], 10)
    assert (await client.properties(paths[0]))["ExitCode"] == 0
    waiting = asyncio.ensure_future(client.wait(paths[1]))  # a Wait after the exit returns the code too
    await client.kill(paths[1], signal.SIGUSR1)
    assert await asyncio.wait_for(waiting, 10) == 7



async def test_a_containers_user_namespace_is_kept_across_an_agent_kill(client: Client, busybox_tar: Path,
                                                                      name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), LONG_RUNNING, {"userns": "auto"})
    before = (await client.properties(path))["UserNamespace"]
    await kill_agent_and_wait_for_restart(client)
    assert (await client.properties(path))["UserNamespace"] == before
    out = await client.exec(path, ["/bin/sh", "-c", "cat /proc/self/uid_map"])
    assert out.stdout.decode().split() == before.split(":"), out
    # The restarted agent holds the range: a new container gets another.
    other = await client.create_container(f"{name}-2", str(busybox_tar), ["/bin/true"], {"userns": "auto"})
    assert (await client.properties(other))["UserNamespace"] != before

# --- exits while the agent is away -----------------------------------------------------------------


async def test_exit_code_of_a_container_that_ends_while_the_agent_is_stopped_is_recorded(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "sleep 1; exit 42"], {})
    props = await running(client, path)
    pid = props["MainPID"]

    stop_agent()
    assert Path(f"/proc/{pid}").exists(), "the container ended before the agent had stopped: too slow a stop"
    await wait_gone(pid)
    after_exit = now_usec()
    start_agent()

    props = await client.properties(path)
    assert props["State"] == "exited"
    assert (props["ExitCode"], props["ExitSignal"], props["MainPID"]) == (42, 0, 0)
    assert props["FailureReason"] == ""
    # The monitor's time of the exit, not the time the restarted agent found out (that is after start_agent()).
    # The monitor reads the clock just after reaping the init, which the test may see gone a moment before.
    assert props["StartedAt"] + 1_000_000 <= props["FinishedAt"] <= after_exit + 50_000
    assert await client.wait(path) == 42


async def test_a_container_killed_by_a_signal_while_the_agent_is_stopped_reports_the_signal(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), LONG_RUNNING, {})
    pid = (await running(client, path))["MainPID"]

    stop_agent()
    os.kill(pid, signal.SIGKILL)
    await wait_gone(pid)
    after_exit = now_usec()
    start_agent()

    props = await client.properties(path)
    assert props["State"] == "exited"
    assert (props["ExitSignal"], props["ExitCode"]) == (signal.SIGKILL, 128 + signal.SIGKILL)
    assert props["StartedAt"] <= props["FinishedAt"] <= after_exit
    assert await client.wait(path) == 128 + signal.SIGKILL


async def test_a_container_removed_on_exit_that_ends_while_the_agent_is_stopped_is_removed_at_start(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), LONG_RUNNING, {"remove_on_exit": True})
    props = await running(client, path)
    directory = STATE / "containers" / props["Id"]

    stop_agent()
    os.kill(props["MainPID"], signal.SIGKILL)
    await wait_gone(props["MainPID"])
    start_agent()

    assert await client.list_containers() == []
    assert not directory.exists()
    with pytest.raises(ClientError):
        await client.properties(path)


async def test_a_wait_in_progress_fails_when_the_agent_goes_and_a_new_wait_returns_the_code(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "sleep 2; exit 5"], {})
    waiting = asyncio.ensure_future(client.wait(path))
    await reached_agent(client, path)
    assert not waiting.done()

    restart_agent()

    with pytest.raises(ClientError) as err:
        await asyncio.wait_for(waiting, 10)
    assert err.value.name == "org.quilt.Runtime.Error.Failed"
    assert "The agent stopped before the call finished" in str(err.value)
    assert (await client.properties(path))["State"] == "running"  # the restart took less than the sleep
    assert await asyncio.wait_for(client.wait(path), 10) == 5


async def test_a_running_container_whose_monitor_vanished_is_exited_with_an_unknown_status(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), LONG_RUNNING, {})
    props = await running(client, path)
    init = props["MainPID"]
    monitor = parent_of(init)

    stop_agent()
    os.kill(monitor, signal.SIGKILL)
    os.kill(init, signal.SIGKILL)
    await wait_gone(monitor)
    await wait_gone(init)
    start_agent()

    props = await client.properties(path)
    assert props["State"] == "exited"
    assert (props["ExitCode"], props["ExitSignal"], props["MainPID"]) == (-1, 0, 0)
    assert "exit status" in props["FailureReason"] and "unknown" in props["FailureReason"]
    assert props["FinishedAt"] >= props["StartedAt"]
    assert await client.wait(path) == -1
    # Nothing of it runs any more, and it can be started again.
    await client.start(path)
    await running(client, path)
    await client.stop(path, 10)


# --- reconciliation of half-done work and of what the agent does not own ----------------------------


async def test_a_scope_no_container_owns_is_reported_and_left_alone(client: Client) -> None:
    unit = f"quilt-stray{os.getpid()}.scope"
    stray = subprocess.Popen(["systemd-run", "--quiet", "--scope", "--unit", unit, "--slice", "quilt.slice",
                              "sleep", "100"])
    try:
        await until(lambda: scope_state(unit) == "active", "the stray scope did not start")
        assert unit not in journal_of_agent()

        restart_agent()

        # journald writes what it was sent a moment later
        await until(lambda: unit in journal_of_agent(), "the agent did not report the stray scope", 5, interval=0.05)
        line = next(line for line in journal_of_agent().splitlines() if unit in line)
        assert "no container" in line
        assert scope_state(unit) == "active"
        assert stray.poll() is None
        assert await client.list_containers() == []  # reported, not adopted as a container
    finally:
        stray.kill()
        stray.wait()
        systemctl("stop", unit, check=False)


async def test_a_directory_left_by_an_unfinished_create_is_removed_at_start(client: Client) -> None:
    stray = STATE / "containers" / ("ab" * 32)

    stop_agent()
    for sub in ("upper", "work", "merged"):
        (stray / sub).mkdir(parents=True)
    (stray / "upper" / "file").write_text("left over")
    start_agent()

    assert not stray.exists()
    assert await client.list_containers() == []


async def test_a_container_left_in_state_removing_is_removed_at_start(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "exit 3"], {})
    assert await client.wait(path) == 3
    cid = (await client.properties(path))["Id"]
    directory = STATE / "containers" / cid
    assert directory.is_dir()

    stop_agent()
    # As if the agent had died in the middle of a remove: the row says removing, the files are still there.
    with sqlite3.connect(STATE / "quilt.db") as db:
        assert db.execute("UPDATE containers SET state = 'removing' WHERE id = ?", (cid,)).rowcount == 1
    db.close()
    start_agent()

    assert await client.list_containers() == []
    assert not directory.exists()
    with sqlite3.connect(STATE / "quilt.db") as db:
        assert db.execute("SELECT COUNT(*) FROM containers WHERE id = ?", (cid,)).fetchone() == (0,)
    db.close()
    with pytest.raises(ClientError):
        await client.properties(path)
    # Its name is free again.
    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {})
    assert (await client.properties(path))["Name"] == name


# --- the database ------------------------------------------------------------------------------------


async def test_containers_and_their_settings_survive_restarts(client: Client, busybox_tar: Path, name: str) -> None:
    options = {"labels": {"app": "web", "tier": "front"}, "memory_max": 64 * 1024 * 1024, "pids_max": 50,
               "cpu_quota": 50.0, "env": ["A=1"], "workdir": "/tmp", "hostname": "h1", "stop_timeout": 3}
    created = await client.create_container(f"{name}-created", str(busybox_tar), ["/bin/echo", "x y"], options)
    exited = await client.run_container(f"{name}-exited", str(busybox_tar), ["/bin/sh", "-c", "exit 9"],
                                        {"labels": {"k": "v"}})
    assert await client.wait(exited) == 9
    running_ = await client.run_container(f"{name}-running", str(busybox_tar), LONG_RUNNING, options)
    entries = await client.list_containers()
    props = {e.path: await client.properties(e.path) for e in entries}
    env = await client.get_environment(created)
    assert props[created]["Labels"] == {"app": "web", "tier": "front"}

    restart_agent()
    await kill_agent_and_wait_for_restart(client, who="all")

    assert await client.list_containers() == entries
    for path, before in props.items():
        assert await client.properties(path) == before
    assert await client.get_environment(created) == env
    assert await client.get_container(f"{name}-exited") == exited
    assert scope_state(props[running_]["Unit"]) == "active"
    await client.stop(running_, 10)
    await client.start(created)
    assert await client.wait(created) == 0


# --- what a container's monitor costs ---------------------------------------------------------------

# A running container's monitor is a forked Python process sharing most of its pages with the fork server: 2 to 3 MiB
# of proportional set size each (bench/peers.py measures it), the agent some tens of KiB more per container; a
# monitor that copied the interpreter's heap, or an agent that kept something big per container, would be over.
MONITOR_PSS_KIB_MAX = 6 * 1024
AGENT_GROWTH_KIB_PER_CONTAINER_MAX = 512


async def test_each_running_container_costs_one_small_monitor_and_the_agent_does_not_grow_with_them(
        client: Client, busybox_tar: Path, name: str) -> None:
    count = 20
    # One container first, so that the agent's one-time costs (imports, caches) are not counted as growth.
    warm = await client.run_container(f"{name}-warm", str(busybox_tar), ["/bin/true"], {})
    await client.wait(warm)
    await client.remove(warm)
    agent = agent_pid()
    rss_before = status_kib(agent, "VmRSS")

    paths = [await client.run_container(f"{name}-{i}", str(busybox_tar), ["/bin/sleep", "300"], {})
             for i in range(count)]
    inits = [(await running(client, p))["MainPID"] for p in paths]
    monitors = [parent_of(pid) for pid in inits]
    # One monitor of its own per container, none of them the agent.
    assert len(set(monitors)) == count and agent not in monitors
    pss = [smaps_rollup_kib(pid)["Pss"] for pid in monitors]
    growth = status_kib(agent, "VmRSS") - rss_before
    assert max(pss) < MONITOR_PSS_KIB_MAX, f"monitors' PSS (KiB): {pss}"
    assert growth < AGENT_GROWTH_KIB_PER_CONTAINER_MAX * count, f"the agent grew by {growth} KiB for {count}"

    for path in paths:
        await client.kill(path, signal.SIGKILL)
    for path in paths:
        assert await asyncio.wait_for(client.wait(path), 10) == 128 + signal.SIGKILL
