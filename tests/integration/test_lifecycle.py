"""A container's life through the real bus: create, start, exit codes, stop, kill, wait, remove, logs."""
from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError
from tests.integration.conftest import journal_lines
from tests.integration.waiting import reached_agent, until

ERR = "org.quilt.Runtime.Error."


async def wait_state(client: Client, path: str, state: str, timeout: float = 10.0) -> dict:
    async def reached() -> dict | None:
        props = await client.properties(path)
        return props if props["State"] == state else None

    return await until(reached, f"state {state} never reached", timeout)


async def logged(client: Client, path: str, count: int, timeout: float = 10.0) -> list[str]:
    """The container's log lines once there are count of them: journald writes them asynchronously."""
    async def lines() -> list[str] | None:
        got = [line.text for line in await client.get_logs(path, {})]
        return got if len(got) >= count else None

    return await until(lines, f"fewer than {count} lines in the log", timeout)


async def test_run_records_exit_code_and_sends_output_to_the_journal(client: Client, busybox_tar: Path,
                                                                      name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], {})
    assert await client.wait(path) == 3
    props = await client.properties(path)
    assert props["State"] == "exited"
    assert props["ExitCode"] == 3 and props["ExitSignal"] == 0 and not props["OOMKilled"]
    assert props["MainPID"] == 0
    assert props["Unit"] == f"quilt-{name}.scope"
    assert props["CreatedAt"] <= props["StartedAt"] <= props["FinishedAt"]
    await logged(client, path, 2)
    lines = await client.get_logs(path, {})
    # Two streams: journald keeps each one's order, not the order between them.
    assert sorted((line.stream, line.text) for line in lines) == [("stderr", "err"), ("stdout", "out")]
    assert sorted(journal_lines(f"quilt-{name}.scope")) == ["err", "out"]


async def test_a_run_leaves_the_agent_in_its_own_cgroup_having_begun_the_grace_period_by_it(
        client: Client, busybox_tar: Path, name: str) -> None:
    # The agent writes its own pid into its cgroup's cgroup.procs ahead of each start (graceperiod.py): a move that
    # must change nothing, and that the test host's agent can make (it says once when it cannot).
    agent = subprocess.run(["systemctl", "show", "-P", "MainPID", "quilt-agent"], capture_output=True, text=True,
                           check=True).stdout.strip()
    before = Path(f"/proc/{agent}/cgroup").read_text()
    path = await client.run_container(name, str(busybox_tar), ["/bin/true"], {"networks": ["none"]})
    assert await client.wait(path) == 0
    assert Path(f"/proc/{agent}/cgroup").read_text() == before
    said = subprocess.run(["journalctl", "-o", "cat", "--no-pager", f"_PID={agent}", "-g", "grace period"],
                          capture_output=True, text=True).stdout
    assert said == "", said
    await client.remove(path)


async def test_create_does_not_start_and_start_runs_it(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {})
    props = await client.properties(path)
    assert props["State"] == "created" and props["StartedAt"] == 0 and props["ExitCode"] == -1
    await client.start(path)
    assert await client.wait(path) == 0
    assert (await client.properties(path))["State"] == "exited"


async def test_a_container_can_be_started_again_after_it_exited(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "echo run >> /count; wc -l < /count"], {})
    assert await client.wait(path) == 0
    await client.start(path)
    assert await client.wait(path) == 0
    # The container's writable layer is kept between runs, as with podman start.
    assert await logged(client, path, 2) == ["1", "2"]


async def test_running_container_reports_main_pid_in_its_scope(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"], {})
    props = await client.properties(path)
    assert props["State"] == "running"
    pid = props["MainPID"]
    assert pid > 0
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    assert f"/quilt.slice/quilt-{name}.scope" in cgroup
    assert "quilt-agent.service" not in cgroup
    out = subprocess.run(["systemctl", "show", "-P", "ActiveState", f"quilt-{name}.scope"],
                         capture_output=True, text=True).stdout.strip()
    assert out == "active"


async def test_stop_sends_sigterm_then_sigkill_after_the_timeout(client: Client, busybox_tar: Path, name: str) -> None:
    # PID 1 of a pid namespace ignores SIGTERM without a handler: stop must fall back to SIGKILL.
    path = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"], {})
    started = time.monotonic()
    await client.stop(path, 1)
    assert time.monotonic() - started >= 1.0
    props = await client.properties(path)
    assert props["State"] == "exited"
    assert props["ExitSignal"] == signal.SIGKILL and props["ExitCode"] == 128 + signal.SIGKILL


async def test_stop_lets_a_container_with_a_term_handler_exit_cleanly(client: Client, busybox_tar: Path,
                                                                     name: str) -> None:
    # The stop signal reaches every process, as systemd's stop of the scope: the sleep too, silently.
    script = "trap 'echo bye; exit 0' TERM; echo ready; sleep 1000 & wait"
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", script], {})
    await logged(client, path, 1)  # "ready": the trap is set
    await client.stop(path, 10)
    props = await client.properties(path)
    assert props["State"] == "exited" and props["ExitCode"] == 0 and props["ExitSignal"] == 0
    assert await logged(client, path, 2) == ["ready", "bye"]


async def test_kill_delivers_the_signal(client: Client, busybox_tar: Path, name: str) -> None:
    script = "trap 'echo got USR1; exit 7' USR1; echo ready; while true; do sleep 0.05; done"
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", script], {})
    await logged(client, path, 1)  # "ready": the trap is set
    await client.kill(path, signal.SIGUSR1)
    assert await client.wait(path) == 7


async def test_kill_of_a_stopped_container_is_not_running(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/true"], {})
    await client.wait(path)
    with pytest.raises(ClientError) as err:
        await client.kill(path, signal.SIGTERM)
    assert err.value.name == ERR + "NotRunning"


async def test_start_of_a_running_container_is_already_running(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"], {})
    with pytest.raises(ClientError) as err:
        await client.start(path)
    assert err.value.name == ERR + "AlreadyRunning"


async def test_remove_refuses_a_running_container_unless_forced(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"], {})
    with pytest.raises(ClientError) as err:
        await client.remove(path, force=False)
    assert err.value.name == ERR + "AlreadyRunning"
    await client.remove(path, force=True)
    assert await client.list_containers() == []
    # Emptied with the init (the kernel ends a pid namespace's processes with it): systemd collects the scope.
    await until(lambda: load_state(f"quilt-{name}.scope") == "not-found", "the scope is still loaded", 5)
    assert not any(Path("/var/lib/quilt/containers").iterdir())


async def test_remove_ends_what_an_init_of_the_hosts_pid_namespace_left_running(client: Client, busybox_tar: Path,
                                                                                 name: str) -> None:
    # Without a pid namespace of its own, the init's end ends nothing else: its orphan still runs in the scope.
    options = {"namespaces": ["mount", "uts", "ipc", "net", "cgroup"]}
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "sleep 300 & echo $!"], options)
    assert await client.wait(path) == 0
    (orphan,) = [int(line) for line in await logged(client, path, 1)]
    pidfd = os.pidfd_open(orphan)
    try:
        assert f"quilt-{name}.scope" in Path(f"/proc/{orphan}/cgroup").read_text()
        await client.remove(path, force=False)
        # The removal stopped the scope, and waited for it: the orphan is gone by its reply.
        assert await asyncio.to_thread(select.select, [pidfd], [], [], 0) != ([], [], [])
    finally:
        os.close(pidfd)
    assert load_state(f"quilt-{name}.scope") == "not-found"


def load_state(unit: str) -> str:
    return subprocess.run(["systemctl", "show", "-P", "LoadState", unit], capture_output=True, text=True).stdout.strip()


async def test_operations_on_a_removed_container_are_no_such_container(client: Client, busybox_tar: Path,
                                                                      name: str) -> None:
    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {})
    await client.remove(path)
    for call in (client.start(path), client.wait(path), client.remove(path), client.get_container(name)):
        with pytest.raises(ClientError) as err:
            await call
        assert err.value.name in (ERR + "NoSuchContainer", "org.freedesktop.DBus.Error.UnknownObject",
                                  "org.freedesktop.DBus.Error.UnknownMethod")


async def test_remove_on_exit_removes_the_container(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/true"], {"remove_on_exit": True})
    async def removed() -> bool:
        return not any(e.name == name for e in await client.list_containers())

    await until(removed, "the container was not removed after it exited")
    with pytest.raises(ClientError):
        await client.properties(path)


async def test_list_and_get_find_containers_by_name_and_id(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {})
    entries = await client.list_containers()
    assert [(e.name, e.state, e.path) for e in entries] == [(name, "created", path)]
    cid = entries[0].id
    assert await client.get_container(name) == path
    assert await client.get_container(cid) == path
    assert await client.get_container(cid[:12]) == path


async def test_list_container_properties_answers_getall_or_only_the_names_asked(client: Client, busybox_tar: Path,
                                                                              name: str) -> None:
    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {"labels": {"a": "b"}})
    ((listed_path, every),) = await client.list_container_properties()
    assert listed_path == path and every == await client.properties(path)  # Addresses and Ports included
    ((_, some),) = await client.list_container_properties(["Name", "Labels", "Ports", "Name"])
    assert some == {"Name": name, "Labels": {"a": "b"}, "Ports": []}
    with pytest.raises(ClientError) as caught:
        await client.list_container_properties(["Name", "NoSuchProperty"])
    assert (caught.value.name, caught.value.message) == ("org.quilt.Runtime.Error.InvalidArgument",
                                                         "Unknown container property 'NoSuchProperty'")


async def test_generated_name_when_none_is_given(client: Client, busybox_tar: Path) -> None:
    path = await client.create_container("", str(busybox_tar), ["/bin/true"], {})
    props = await client.properties(path)
    assert props["Name"].startswith("quilt_")


async def test_logs_options_select_the_last_lines_and_since(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "echo 1; echo 2; sleep 0.1; echo 3; echo 4; echo 5"], {})
    await client.wait(path)
    await logged(client, path, 5)
    assert [line.text for line in await client.get_logs(path, {"lines": 2})] == ["4", "5"]
    # journald may stamp lines read in one batch alike: 3 is the first after a pause.
    lines = await client.get_logs(path, {})
    assert [line.text for line in await client.get_logs(path, {"since": lines[2].usec})] == ["3", "4", "5"]


async def test_lines_written_long_after_start_reach_the_journal(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "sleep 2; echo late"], {})
    assert await client.wait(path) == 0
    await logged(client, path, 1)
    assert journal_lines(f"quilt-{name}.scope") == ["late"]


async def test_a_new_container_with_a_former_name_does_not_show_its_logs(client: Client, busybox_tar: Path,
                                                                        name: str) -> None:
    first = await client.run_container(name, str(busybox_tar), ["/bin/echo", "first"], {})
    await client.wait(first)
    await client.remove(first)
    second = await client.run_container(name, str(busybox_tar), ["/bin/echo", "second"], {})
    await client.wait(second)
    assert await logged(client, second, 1) == ["second"]


async def test_wait_on_a_created_container_returns_once_it_has_run(client: Client, busybox_tar: Path,
                                                                   name: str) -> None:
    path = await client.create_container(name, str(busybox_tar), ["/bin/sh", "-c", "exit 4"], {})
    waiter = asyncio.ensure_future(client.wait(path))
    await reached_agent(client, path)  # the Wait is at the agent, not on its way: it waits for the start
    assert not waiter.done()
    await client.start(path)
    assert await asyncio.wait_for(waiter, 10) == 4


async def test_a_command_that_ends_at_once_is_never_left_running(client: Client, busybox_tar: Path,
                                                                name: str) -> None:
    # The exit may be recorded before the start is: the state must still end as exited.
    for i in range(20):
        path = await client.run_container(f"{name}-{i}", str(busybox_tar), ["/bin/true"], {})
        assert await client.wait(path) == 0
        props = await client.properties(path)
        assert (props["State"], props["MainPID"]) == ("exited", 0)
        assert 0 < props["StartedAt"] <= props["FinishedAt"]


async def test_the_monitor_has_a_scope_of_its_own_named_for_its_container(client: Client, busybox_tar: Path,
                                                                          name: str) -> None:
    """The container's scope holds its processes alone; `systemctl status quilt-NAME:monitor.scope` shows the
    monitor by the container's name, not as the agent's command line."""
    path = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"], {})
    init = (await client.properties(path))["MainPID"]
    monitor = next(int(line.split()[1]) for line in open(f"/proc/{init}/status") if line.startswith("PPid:"))
    assert Path(f"/proc/{monitor}/cmdline").read_bytes().rstrip(b"\0") == f"quilt-mon\0{name}".encode()
    status = subprocess.run(["systemctl", "status", "--no-pager", "-l", f"quilt-{name}:monitor.scope"],
                            capture_output=True, text=True).stdout
    assert f"{monitor} quilt-mon {name}" in status and "quilt-agent" not in status, status
    container = subprocess.run(["systemctl", "status", "--no-pager", "-l", f"quilt-{name}.scope"],
                               capture_output=True, text=True).stdout
    assert f"{init} /bin/sleep 300" in container and "quilt-mon" not in container, container


async def test_a_running_containers_monitor_is_the_small_program_holding_only_what_it_watches(
        client: Client, busybox_tar: Path, name: str) -> None:
    """Once the command runs, the monitor is quilt-monitor (a tenth of a forked Python process's memory), holding
    its journal stream, the init's pidfd and the container's memory cgroup files: not the agent's socket."""
    path = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"], {})
    init = (await client.properties(path))["MainPID"]
    monitor = next(int(line.split()[1]) for line in open(f"/proc/{init}/status") if line.startswith("PPid:"))

    def held() -> list[str]:
        return sorted(os.readlink(f"/proc/{monitor}/fd/{fd}") for fd in os.listdir(f"/proc/{monitor}/fd")
                      if int(fd) > 2)

    # The exec comes just after the start is told, and the pidfd just after the exec.
    await until(lambda: os.readlink(f"/proc/{monitor}/exe") == "/usr/libexec/quilt/quilt-monitor"
                and "anon_inode:[pidfd]" in held(), lambda: f"the monitor is {os.readlink(f'/proc/{monitor}/exe')}, "
                f"holding {held()}")
    fds = held()
    memory = [f for f in fds if f.startswith("/sys/fs/cgroup/")]
    assert fds == sorted(["anon_inode:[pidfd]", *memory, *(["anon_inode:[eventfd]"] if "memory/" in str(memory)
                                                            else [])]), fds
    assert memory and memory[0].endswith((f"quilt-{name}.scope/memory.oom_control",
                                          f"quilt-{name}.scope/memory.events")), memory
    await client.stop(path, 0)
    assert (await client.properties(path))["State"] == "exited"
