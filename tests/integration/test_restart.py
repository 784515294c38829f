"""Restart policies through the real agent, systemd and journal: which exits bring a container back, the wait
between restarts, a user's stop through Quilt or systemd, an OOM kill, an agent killed meanwhile, and what a
restarted container keeps (its id, address and published port)."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError, Event
from tests.integration.conftest import systemctl
from tests.integration.test_recovery import start_agent, stop_agent, wait_gone
from tests.integration.waiting import until

ERR = "org.quilt.Runtime.Error."
MiB = 1 << 20


async def kinds_until(queue: asyncio.Queue[Event], cid: str, kind: str, count: int,
                      timeout: float = 20) -> list[Event]:
    """The container's events until the count-th of kind."""
    got: list[Event] = []
    async with asyncio.timeout(timeout):
        while sum(e.kind == kind for e in got) < count:
            event = await queue.get()
            if event.container_id == cid:
                got.append(event)
    return got


async def test_on_failure_restarts_up_to_its_maximum_with_a_growing_wait(client: Client, busybox_tar: Path,
                                                                        name: str) -> None:
    queue = await client.watch_events()
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "exit 3"],
                                      {"restart_policy": "on-failure", "restart_max": 3})
    cid = (await client.properties(path))["Id"]
    events = await kinds_until(queue, cid, "exited", 4)
    assert [e.kind for e in events] == ["created", "started", "exited"] + ["restarting", "started", "exited"] * 3
    restarting = [e for e in events if e.kind == "restarting"]
    assert [e.details["attempt"] for e in restarting] == [1, 2, 3]
    assert all(e.details["exit_code"] == 3 for e in restarting)
    waits = [e.details["delay_usec"] for e in restarting]
    assert waits[0] == 100_000 and waits[0] < waits[1] < waits[2]  # 0.1 s first, as systemd's RestartSec=
    # Each start came no sooner than its wait after the exit before it (the events' own times).
    for exited, restart, started in zip(events[2::3], events[3::3], events[4::3]):
        assert started.time - exited.time >= restart.details["delay_usec"]
    props = await client.properties(path)
    assert (props["State"], props["ExitCode"], props["RestartCount"], props["Restarting"]) == ("exited", 3, 3,
                                                                                               False)
    assert props["RestartPolicy"] == "on-failure" and props["RestartMax"] == 3
    # Each attempt is in the journal with the exit code it answers.
    def journal() -> list[str] | None:
        lines = subprocess.run(["journalctl", "-u", "quilt-agent", "-o", "cat", f"CONTAINER_NAME={name}",
                                "QUILT_EVENT=restarting"], capture_output=True, text=True).stdout.splitlines()
        return lines if len(lines) == 3 else None
    lines = await until(journal, "three restarts in the journal")
    assert [line.split(";")[0] for line in lines] == [f"container {name} exited with code 3"] * 3


async def test_always_restarts_a_clean_exit_and_a_stop_ends_it(client: Client, busybox_tar: Path, name: str) -> None:
    queue = await client.watch_events()
    path = await client.run_container(name, str(busybox_tar), ["/bin/true"], {"restart_policy": "always"})
    cid = (await client.properties(path))["Id"]
    await kinds_until(queue, cid, "restarting", 2)
    await client.stop(path, 1)
    props = await client.properties(path)
    assert props["StoppedByUser"] is True and props["Restarting"] is False and props["RestartAt"] == 0
    assert props["State"] in ("exited", "failed")
    # Nothing brings it back: a start by the user does, counting from 0 again.
    await client.start(path)
    again = await client.properties(path)
    assert again["StoppedByUser"] is False and again["RestartCount"] == 0
    await client.stop(path, 1)


async def test_systemctl_stop_of_a_container_with_a_policy_leaves_it_stopped(client: Client, busybox_tar: Path,
                                                                            name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"],
                                      {"restart_policy": "always", "stop_timeout": 1})
    systemctl("stop", f"quilt-{name}.scope")
    assert await client.wait(path) == 128 + signal.SIGKILL
    props = await until(lambda: _stopped(client, path), "the container was marked stopped by a user")
    assert props["Restarting"] is False and props["RestartCount"] == 0 and props["State"] == "exited"


async def _stopped(client: Client, path: str) -> dict | None:
    props = await client.properties(path)
    return props if props["StoppedByUser"] else None


async def test_an_oom_killed_container_is_restarted_on_failure(client: Client, busybox_tar: Path, name: str) -> None:
    queue = await client.watch_events()
    hog = "echo run; [ -e /tmp/again ] && exec sleep 300; touch /tmp/again; exec tail /dev/zero"
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", hog],
                                      {"restart_policy": "on-failure", "memory_max": 32 * MiB})
    cid = (await client.properties(path))["Id"]
    events = await kinds_until(queue, cid, "started", 2)
    assert [e.kind for e in events] == ["created", "started", "oom", "exited", "restarting", "started"]
    assert events[3].details["exit_code"] == 137 and events[3].details["oom_killed"] is True
    props = await client.properties(path)
    assert props["State"] == "running" and props["RestartCount"] == 1
    await client.stop(path, 1)


async def test_a_restart_keeps_the_id_address_and_published_port(client: Client, busybox_tar: Path,
                                                                 name: str) -> None:
    queue = await client.watch_events()
    script = "echo up; [ -e /tmp/again ] && exec sleep 300; touch /tmp/again; exit 1"
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", script],
                                      {"restart_policy": "on-failure", "ports": ["18080:80"]})
    before = await client.properties(path)
    await kinds_until(queue, before["Id"], "started", 2)
    after = await client.properties(path)
    assert after["Id"] == before["Id"] and after["Name"] == name and after["State"] == "running"
    assert after["Addresses"] == before["Addresses"] and after["Ports"] == before["Ports"]
    assert after["MainPID"] != before["MainPID"]
    await client.stop(path, 1)


async def test_an_exit_while_the_agent_was_away_is_restarted_when_it_comes_back(
        client: Client, busybox_tar: Path, name: str) -> None:
    script = "while [ ! -e /tmp/go ]; do sleep 0.05; done; rm /tmp/go; exit 2"
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", script],
                                      {"restart_policy": "on-failure", "restart_max": 1})
    init = (await client.properties(path))["MainPID"]
    stop_agent()
    try:
        Path(f"/proc/{init}/root/tmp/go").touch()  # it ends now, with no agent to see it: its monitor records it
        await wait_gone(init)
    finally:
        start_agent()
    restarted = await until(lambda: _restarted(client, path), "the container ran again")
    assert restarted["RestartCount"] == 1 and restarted["MainPID"] != init


async def _restarted(client: Client, path: str) -> dict | None:
    props = await client.properties(path)
    return props if props["RestartCount"] == 1 and props["State"] == "running" else None


@pytest.mark.parametrize("options, error", [
    ({"restart_policy": "sometimes"}, "InvalidArgument"),
    ({"restart_policy": "always", "restart_max": 2}, "InvalidArgument"),
    ({"restart_policy": "always", "remove_on_exit": True}, "InvalidArgument"),
])
async def test_bad_restart_options_are_named_errors_and_leave_nothing(client: Client, busybox_tar: Path, name: str,
                                                                     options: dict, error: str) -> None:
    with pytest.raises(ClientError) as err:
        await client.create_container(name, str(busybox_tar), ["/bin/true"], options)
    assert err.value.name == ERR + error
    assert await client.list_containers() == []


async def test_quiltctl_restart_flag_reaches_the_container_and_bad_ones_are_one_line(
        busybox_tar: Path, name: str, client: Client) -> None:
    run = subprocess.run(["quiltctl", "create", "--name", name, "--restart", "on-failure:5", str(busybox_tar),
                          "/bin/true"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    shown = json.loads(subprocess.run(["quiltctl", "inspect", name], capture_output=True, text=True).stdout)
    shown = shown[0] if isinstance(shown, list) else shown
    assert (shown["RestartPolicy"], shown["RestartMax"]) == ("on-failure", 5)
    for bad in ("sometimes", "always:3", "on-failure:x"):
        out = subprocess.run(["quiltctl", "create", "--name", f"{name}-bad", "--restart", bad, str(busybox_tar),
                              "/bin/true"], capture_output=True, text=True)
        assert out.returncode in (2, 125) and len(out.stderr.strip().splitlines()) == 1, (bad, out.stderr)
        assert "restart" in out.stderr
