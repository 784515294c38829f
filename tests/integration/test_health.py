"""Health checks through the real agent, systemd and journal: the status a container goes through and the
signals and events that tell it, where the check runs, an image's HEALTHCHECK, a check run by hand,
health_on_failure restart, and bad options."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError, Event
from tests import imagetools
from tests.integration.bus.test_signals import Recorder
from tests.integration.test_restart import kinds_until

ERR = "org.quilt.Runtime.Error."
CHECK_FLAG = ["/bin/sh", "-c", "test -e /tmp/ok"]
FAST = {"health_interval": 0.2, "health_timeout": 5}


def healths(rec: Recorder, path: str) -> list[str]:
    return [body[1]["Health"].value for member, p, body in rec.signals
            if member == "PropertiesChanged" and p == path and "Health" in body[1]]


async def next_health(queue: asyncio.Queue[Event], cid: str, timeout: float = 20) -> str:
    async with asyncio.timeout(timeout):
        while True:
            event = await queue.get()
            if event.container_id == cid and event.kind == "health_status":
                return str(event.details["status"])


async def test_a_check_moves_it_from_starting_to_healthy_to_unhealthy_with_signals_and_events(
        client: Client, busybox_tar: Path, name: str) -> None:
    queue = await client.watch_events()
    async with Recorder() as rec:
        path = await client.run_container(name, str(busybox_tar), ["sleep", "600"],
                                          {"health_cmd": CHECK_FLAG, "health_retries": 2, **FAST})
        cid = (await client.properties(path))["Id"]
        await client.exec(path, ["touch", "/tmp/ok"])
        assert await next_health(queue, cid) == "healthy"
        await client.exec(path, ["rm", "/tmp/ok"])
        assert await next_health(queue, cid) == "unhealthy"
        await rec.until(lambda: healths(rec, path)[-1:] == ["unhealthy"])
    assert healths(rec, path) == ["starting", "healthy", "unhealthy"]
    props = await client.properties(path)
    assert (props["State"], props["Health"]) == ("running", "unhealthy")  # health_on_failure none: left running
    assert props["HealthCommand"] == CHECK_FLAG and props["HealthInterval"] == 200_000
    assert (props["HealthRetries"], props["HealthOnFailure"], props["HealthStartPeriod"]) == (2, "none", 0)
    status, streak, checks = await client.health_log(path)
    assert status == "unhealthy" and streak >= 2 and 2 <= len(checks) <= 5
    assert [code for _, _, code, _ in checks[-2:]] == [1, 1]
    await client.stop(path, 1)


async def test_the_check_runs_inside_the_container_in_its_scope_with_its_seccomp_filter(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["sleep", "600"], {
        "health_cmd": ["/bin/sh", "-c", "hostname; cat /proc/self/cgroup; grep ^Seccomp: /proc/self/status; "
                                        "test -e /etc/passwd"], "health_interval": 600})
    status, code, output = await client.run_health_check(path)
    assert (status, code) == ("healthy", 0)
    lines = output.splitlines()
    assert lines[0] == name
    # In the container's cgroup namespace, whose root is its scope: every hierarchy's path is "/" there.
    cgroups = [line for line in lines if line[:1].isdigit()]
    assert cgroups and all(line.endswith(":/") for line in cgroups), output
    assert "Seccomp:\t2" in lines
    await client.stop(path, 1)


async def test_a_missing_check_command_makes_it_unhealthy_and_keeps_the_error(client: Client, busybox_tar: Path,
                                                                             name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["sleep", "600"],
                                      {"health_cmd": ["/no/such/check"], "health_retries": 1,
                                       "health_interval": 600})
    status, code, output = await client.run_health_check(path)
    assert (status, code) == ("unhealthy", 127) and "/no/such/check" in output
    assert (await client.properties(path))["State"] == "running"
    await client.stop(path, 1)


async def test_health_on_failure_restart_stops_and_starts_the_same_container(client: Client, busybox_tar: Path,
                                                                            name: str) -> None:
    queue = await client.watch_events()
    path = await client.run_container(name, str(busybox_tar), ["sleep", "600"],
                                      {"health_cmd": CHECK_FLAG, "health_retries": 1,
                                       "health_on_failure": "restart", "stop_timeout": 1, **FAST})
    before = await client.properties(path)
    events = (await kinds_until(queue, before["Id"], "started", 2))[2:]  # after its created and first started
    kinds = [e.kind for e in events]
    assert kinds == ["health_status", "exited", "restarting", "started"], kinds
    assert events[0].details["status"] == "unhealthy" and events[2].details["reason"] == "unhealthy"
    after = await client.properties(path)
    assert after["Id"] == before["Id"] and after["MainPID"] != before["MainPID"]
    assert after["RestartCount"] == 1 and after["State"] == "running"
    await client.stop(path, 1)


@pytest.fixture(scope="module")
def checked_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """busybox with a HEALTHCHECK, as Docker writes one in an image config."""
    layout = tmp_path_factory.mktemp("health") / "layout"
    imagetools.oci_layout(layout, "v1", [imagetools.busybox], ["--config.cmd=sleep", "--config.cmd=600"])
    imagetools.set_config(layout, "v1", Healthcheck={"Test": ["CMD-SHELL", "test -e /etc/passwd"],
                                                     "Interval": 250_000_000, "Retries": 1})
    return layout


@pytest.mark.parametrize("options, command, interval", [
    ({}, ["/bin/sh", "-c", "test -e /etc/passwd"], 250_000),
    ({"health_interval": 5}, ["/bin/sh", "-c", "test -e /etc/passwd"], 5_000_000),
    ({"health_cmd": ["true"]}, ["true"], 250_000),
    ({"health_cmd": []}, [], 30_000_000),
], ids=["image", "interval-given", "command-given", "disabled"])
async def test_an_image_healthcheck_is_the_check_unless_overridden(client: Client, checked_image: Path, name: str,
                                                                   options: dict, command: list[str],
                                                                   interval: int) -> None:
    path = await client.create_container(name, str(checked_image), [], options)
    props = await client.properties(path)
    assert (props["HealthCommand"], props["HealthInterval"], props["Health"]) == (command, interval, "")
    await client.remove(path)


async def test_the_image_check_runs_and_makes_it_healthy(client: Client, checked_image: Path, name: str) -> None:
    queue = await client.watch_events()
    path = await client.run_container(name, str(checked_image), [], {})
    assert await next_health(queue, (await client.properties(path))["Id"]) == "healthy"
    await client.stop(path, 1)


@pytest.mark.parametrize("options, message", [
    ({"health_cmd": ["true"], "health_interval": 0}, "Invalid health_interval 0"),
    ({"health_cmd": ["true"], "health_interval": -1.5}, "Invalid health_interval"),
    ({"health_cmd": ["true"], "health_retries": 0}, "Invalid health_retries"),
    ({"health_cmd": ["true"], "health_on_failure": "explode"}, "Invalid health_on_failure"),
    ({"health_cmd": ["true"], "health_on_failure": "restart", "restart_policy": "always"}, "contradict"),
    ({"health_timeout": 3}, "needs a health check"),
])
async def test_bad_health_options_are_invalid_argument_and_create_nothing(client: Client, busybox_tar: Path,
                                                                         name: str, options: dict,
                                                                         message: str) -> None:
    with pytest.raises(ClientError) as err:
        await client.create_container(name, str(busybox_tar), ["sleep", "1"], options)
    assert err.value.name == ERR + "InvalidArgument" and message in str(err.value)
    assert name not in [e.name for e in await client.list_containers()]


async def test_a_check_by_hand_of_a_container_without_one_or_not_running_is_refused(client: Client,
                                                                                   busybox_tar: Path,
                                                                                   name: str) -> None:
    path = await client.create_container(name, str(busybox_tar), ["sleep", "600"], {"health_cmd": ["true"]})
    with pytest.raises(ClientError) as err:
        await client.run_health_check(path)
    assert err.value.name == ERR + "NotRunning"
    await client.remove(path)
    path = await client.run_container(name, str(busybox_tar), ["sleep", "600"], {})
    with pytest.raises(ClientError) as err:
        await client.run_health_check(path)
    assert err.value.name == ERR + "InvalidArgument" and "has no health check" in str(err.value)
    await client.stop(path, 1)
