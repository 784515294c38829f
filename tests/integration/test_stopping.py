"""A container stops the same way whoever stops it: `quiltctl stop`, `systemctl stop` of its scope, or a host
shutting down. Its stop signal and timeout are its scope's KillSignal= and TimeoutStopSec=, and its monitor,
in a scope of its own, records how it ended in every case."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from dbus_fast import Variant

from quilt_agent.client import Client, ClientError
from tests.integration.conftest import systemctl
from tests.integration.test_recovery import start_agent, stop_agent
from tests.integration.waiting import log_line

# A namespace's PID 1 without a handler ignores SIGTERM: only the SIGKILL after the timeout ends it.
IGNORES_TERM = ["/bin/sleep", "300"]
TRAPS_TERM = ["/bin/sh", "-c", "trap 'exit 5' TERM; echo ready; sleep 300 & wait"]


def unit_property(unit: str, key: str) -> str:
    return systemctl("show", "-P", key, unit).stdout.strip()


async def test_the_scope_carries_the_stop_signal_and_timeout(client: Client, busybox_tar: Path, name: str) -> None:
    await client.run_container(name, str(busybox_tar), IGNORES_TERM, {"stop_timeout": 3})
    unit = f"quilt-{name}.scope"
    assert unit_property(unit, "KillSignal") == str(int(signal.SIGTERM))
    assert unit_property(unit, "TimeoutStopUSec") == "3s"
    assert unit_property(unit, "SendSIGKILL") == "yes"
    assert unit_property(unit, "KillMode") == "control-group"
    assert "shutdown.target" in unit_property(unit, "Conflicts").split()
    # The monitor's own scope outlasts the container's at a shutdown: it has to record the end.
    assert unit_property(f"quilt-{name}:monitor.scope", "TimeoutStopUSec") == "13s"


async def test_systemctl_stop_of_a_container_ignoring_sigterm_kills_it_at_its_stop_timeout(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), IGNORES_TERM, {"stop_timeout": 2})
    started = time.monotonic()
    systemctl("stop", f"quilt-{name}.scope")  # returns once the scope is gone
    took = time.monotonic() - started
    assert 2.0 <= took < 3.0, took  # not systemd's default of 90 s
    assert await client.wait(path) == 128 + signal.SIGKILL
    props = await client.properties(path)
    assert (props["State"], props["ExitSignal"], props["FailureReason"]) == ("exited", signal.SIGKILL, "")


async def test_systemctl_stop_keeps_the_exit_code_of_a_container_that_handles_its_stop_signal(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), TRAPS_TERM, {"stop_timeout": 30})
    await log_line(client, path, "ready")
    started = time.monotonic()
    systemctl("stop", f"quilt-{name}.scope")
    assert time.monotonic() - started < 2.0
    assert await client.wait(path) == 5
    assert (await client.properties(path))["ExitSignal"] == 0


async def test_systemctl_stop_while_the_agent_is_stopped_is_recorded_when_it_comes_back(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), IGNORES_TERM, {"stop_timeout": 1})
    stop_agent()
    try:
        systemctl("stop", f"quilt-{name}.scope")
    finally:
        start_agent()
    props = await client.properties(path)
    assert (props["State"], props["ExitCode"], props["ExitSignal"]) == ("exited", 128 + signal.SIGKILL,
                                                                        signal.SIGKILL)
    assert props["FailureReason"] == ""


async def test_quiltctl_stop_and_systemctl_stop_end_a_container_alike(client: Client, busybox_tar: Path,
                                                                    name: str) -> None:
    """The stop signal reaches every process of the container either way (systemd's KillMode=control-group):
    here a background child that traps it and writes a line before the shell's own trap ends the container."""
    child = "trap 'echo child; exit 0' TERM; echo ready; sleep 300 & wait"
    command = ["/bin/sh", "-c", f"trap 'wait; exit 6' TERM; sh -c \"{child}\" & sleep 300 & wait"]
    ends = []
    for how in ("quiltctl", "systemctl"):
        path = await client.run_container(f"{name}-{how}", str(busybox_tar), command, {})
        await log_line(client, path, "ready")
        if how == "quiltctl":
            await client.stop(path, 10)
        else:
            systemctl("stop", f"quilt-{name}-{how}.scope")
        code = await client.wait(path)
        ends.append((code, [line.text for line in await client.get_logs(path, {})]))
    assert ends[0] == ends[1] == (6, ["ready", "child"]), ends


async def test_stop_of_five_containers_at_once_through_systemd_takes_one_timeout(
        client: Client, busybox_tar: Path, name: str) -> None:
    names = [f"{name}-{i}" for i in range(5)]
    paths = [await client.run_container(n, str(busybox_tar), IGNORES_TERM, {"stop_timeout": 1}) for n in names]
    started = time.monotonic()
    systemctl("stop", *[f"quilt-{n}.scope" for n in names])
    assert time.monotonic() - started < 2.5
    assert [await client.wait(p) for p in paths] == [128 + signal.SIGKILL] * 5


# --- an init as PID 1 ------------------------------------------------------------------------------


async def test_with_init_a_command_without_a_handler_ends_on_the_stop_signal_at_once(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), IGNORES_TERM, {"init": True, "stop_timeout": 10})
    props = await client.properties(path)
    assert props["Init"] is True
    started = time.monotonic()
    await client.stop(path, 0)
    assert time.monotonic() - started < 2.0
    # catatonit ends as its child did: killed by SIGTERM.
    assert await client.wait(path) == 128 + signal.SIGTERM


@pytest.mark.parametrize("userns", ["auto", "host"])
async def test_the_init_is_pid_1_read_only_and_the_command_its_child(client: Client, busybox_tar: Path,
                                                                    name: str, userns: str) -> None:
    script = ("echo pid=$$; tr '\\0' ' ' < /proc/1/cmdline; echo; "
              "grep ' /dev/init ' /proc/self/mountinfo | cut -d' ' -f6; { echo x >> /dev/init; } 2>/dev/null; echo rc=$?")
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", script],
                                      {"init": True, "userns": userns})
    assert await client.wait(path) == 0
    lines = [line.text for line in await client.get_logs(path, {})]
    assert lines[0] != "pid=1" and lines[1].split()[:3] == ["/dev/init", "--", "/bin/sh"], lines
    assert lines[2].split(",")[:3] == ["ro", "nosuid", "nodev"], lines
    assert lines[3] == "rc=1"


async def test_with_init_an_orphan_is_reaped(client: Client, busybox_tar: Path, name: str) -> None:
    # The shell's background child outlives it as an orphan of PID 1: the init must reap it, or it stays a zombie.
    script = "sh -c 'sleep 0.2 & exit 0'; sleep 1; grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l"
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", script], {"init": True})
    assert await client.wait(path) == 0
    assert [line.text.strip() for line in await client.get_logs(path, {})] == ["0"]


async def test_with_init_a_missing_command_fails_as_without_it(client: Client, busybox_tar: Path,
                                                               name: str) -> None:
    with pytest.raises(ClientError) as err:
        await client.run_container(name, str(busybox_tar), ["/no/such/program"], {"init": True})
    assert err.value.name == "org.quilt.Runtime.Error.CommandNotFound"
    assert "not found" in str(err.value)
    path = await client.get_container(name)
    assert (await client.properties(path))["ExitCode"] == 127


async def test_init_option_must_be_a_boolean(client: Client, busybox_tar: Path, name: str) -> None:
    with pytest.raises(ClientError) as err:
        await client.create_container(name, str(busybox_tar), ["/bin/true"], {"init": Variant("s", "yes")})
    assert err.value.name == "org.quilt.Runtime.Error.InvalidArgument"
    assert await client.list_containers() == []
