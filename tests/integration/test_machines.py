"""Containers as systemd-machined machines, in the test host with the real machined: machinectl list and status,
ps and name resolution naming them, terminate recorded as a user's stop, copy-to/copy-from, shell refused, derived
names, an agent killed and restarted, 50 at once, and machinectl refused to a user Quilt refuses."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import pytest

from quilt_agent.client import Client
from tests.integration.bus.test_polkit import USERS, run_as
from tests.integration.conftest import systemctl
from tests.integration.test_recovery import start_agent
from tests.integration.waiting import until

SLEEP = ["sleep", "600"]


def machinectl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["machinectl", "--no-pager", *args], capture_output=True, text=True, check=check,
                          timeout=30)


def machines() -> dict[str, dict]:
    out = machinectl("list", "--output=json").stdout
    return {m["machine"]: m for m in json.loads(out or "[]")}


async def test_a_running_container_is_a_machine_that_machinectl_describes(client: Client, busybox_tar: Path,
                                                                         name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), SLEEP, {"init": True})
    props = await client.properties(path)
    assert props["MachineName"] == name and props["Machine"].startswith("/org/freedesktop/machine1/machine/")
    listed = machines()[name]
    assert (listed["class"], listed["service"]) == ("container", "quilt")
    status = machinectl("status", name).stdout
    assert f"Unit: quilt-{name}.scope" in status and f"Leader: {props['MainPID']}" in status
    address = props["Addresses"][0][1]
    assert address in status  # the addresses of its network namespace, through its leader
    # ps and name resolution (nss-mymachines) know it by name.
    ps = subprocess.run(["ps", "-eo", "pid,machine"], capture_output=True, text=True).stdout
    assert any(line.split() == [str(props["MainPID"]), name] for line in ps.splitlines())
    hosts = subprocess.run(["getent", "ahostsv4", name], capture_output=True, text=True).stdout
    assert hosts.split()[:1] == [address]  # (its IPv6 link-local address comes first for `getent hosts`)
    await client.stop(path, 1)
    assert name not in machines()
    assert (await client.properties(path))["Machine"] == "/"


async def test_machinectl_terminate_is_a_users_stop_recorded_as_such(client: Client, busybox_tar: Path,
                                                                      name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), SLEEP,
                                      {"init": True, "restart_policy": "always", "stop_timeout": 2})
    machinectl("terminate", name)
    props = await until(_ended(client, path), "the container's end recorded")
    assert props["StoppedByUser"] is True and props["Restarting"] is False  # no policy brings it back
    assert props["ExitCode"] == 143


def _ended(client: Client, path: str):  # noqa: ANN202 - a condition for until()
    async def check() -> dict | None:
        props = await client.properties(path)
        return props if props["State"] in ("exited", "failed") else None
    return check


async def test_machinectl_copies_in_and_out_and_refuses_a_shell_without_systemd(client: Client, busybox_tar: Path,
                                                                               name: str, tmp_path: Path) -> None:
    path = await client.run_container(name, str(busybox_tar), SLEEP, {"init": True})
    source = tmp_path / "in.txt"
    source.write_text("from the host\n")
    machinectl("copy-to", name, str(source), "/tmp/in.txt")
    result = await client.exec(path, ["cat", "/tmp/in.txt"])
    assert result.stdout == b"from the host\n"
    await client.exec(path, ["sh", "-c", "echo from the container > /tmp/out.txt"])
    machinectl("copy-from", name, "/tmp/out.txt", str(tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_text() == "from the container\n"
    shell = machinectl("shell", name, "/bin/true", check=False)
    assert shell.returncode != 0 and shell.stderr.strip()  # busybox runs no systemd to open a session in
    await client.remove(path, True)


async def test_a_name_machined_refuses_is_registered_under_a_derived_one(client: Client, busybox_tar: Path,
                                                                        name: str) -> None:
    path = await client.run_container(f"{name}_db", str(busybox_tar), SLEEP, {"init": True})
    props = await client.properties(path)
    assert props["MachineName"] == f"{name}-db" and f"{name}-db" in machines()
    await client.remove(path, True)
    assert f"{name}-db" not in machines()


async def test_an_agent_killed_and_restarted_leaves_one_registration_each(client: Client, busybox_tar: Path,
                                                                        name: str) -> None:
    paths = [await client.run_container(f"{name}-{i}", str(busybox_tar), SLEEP, {"init": True}) for i in range(3)]
    systemctl("kill", "-s", "SIGKILL", "quilt-agent")
    await until(lambda: systemctl("is-active", "quilt-agent", check=False).stdout.strip() != "active",
                "the agent killed")
    start_agent()
    async with Client() as again:
        for i, path in enumerate(paths):
            assert (await again.properties(path))["MachineName"] == f"{name}-{i}"
        ours = [m for m in machines() if m.startswith(f"{name}-")]
        assert sorted(ours) == [f"{name}-{i}" for i in range(3)]
        for path in paths:
            await again.remove(path, True)


async def test_fifty_started_at_once_are_all_registered_and_all_gone_after_removal(client: Client,
                                                                                   busybox_tar: Path,
                                                                                   name: str) -> None:
    names = [f"{name}-{i}" for i in range(50)]
    paths = await asyncio.gather(*(client.run_container(n, str(busybox_tar), SLEEP,
                                                        {"init": True, "networks": ["none"]}) for n in names))
    assert set(names) <= set(machines())
    await asyncio.gather(*(client.remove(p, True) for p in paths))
    assert not set(names) & set(machines())


@pytest.mark.parametrize("who", list(USERS))
async def test_a_user_quilt_refuses_cannot_stop_it_through_machinectl(client: Client, busybox_tar: Path,
                                                                       name: str, who: str) -> None:
    path = await client.run_container(name, str(busybox_tar), SLEEP, {"init": True})
    for verb in (["terminate", name], ["kill", "--signal=KILL", name], ["poweroff", name]):
        result = await run_as(USERS[who], "machinectl", "--no-pager", "--no-ask-password", *verb)
        assert result.returncode != 0, (verb, result.stdout)
    assert (await client.properties(path))["State"] == "running"
    await client.remove(path, True)
