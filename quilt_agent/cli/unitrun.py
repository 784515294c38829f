"""`quiltctl unit-run FILE`: the main process of a service generated from a container file (generator.py).

For a NAME.container it makes the container anew from the file (a former one of the unit's is replaced), with
its processes in the service's own cgroup (the create option `unit`), tells systemd READY=1 once the container is
ready (as its sdnotify says), and lives until the container ends, exiting with its exit code: the container's
life is the service's, so Restart=, OnFailure= and the unit's dependencies act on the container. It outlives an
agent restart (the container does too): it connects again and goes on waiting. A stop of the service stops the
container by the unit's KillSignal= and TimeoutStopSec=; this process ignores SIGTERM and ends with the container.

For a NAME.network or NAME.volume it makes the network or volume unless it exists (a oneshot service).
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Any, Awaitable, Callable

import click

from quilt_agent import unitfiles
from quilt_agent.cli.context import fail, with_async_client
from quilt_agent.api import ClientError
from quilt_agent.client import Client  # the service waits on the loop: the asyncio transport

NO_SUCH_IMAGE = "org.quilt.Runtime.Error.NoSuchImage"
NO_SUCH = ("org.quilt.Runtime.Error.NoSuchContainer", "org.quilt.Runtime.Error.NoSuchNetwork",
           "org.quilt.Runtime.Error.NoSuchVolume")
AGENT_STOPPING = "org.quilt.Runtime.Error.Failed"  # bus/guard.py's STOPPING_ERROR
RECONNECTS = 30  # agent restarts ridden out while waiting (each waits for the bus to start it again)


def _notify(text: str) -> None:
    """sd_notify, when systemd gave a NOTIFY_SOCKET (Type=notify); a no-op elsewhere. By hand rather than with
    systemd-python: quiltctl imports no heavy package (tests/unit/test_imports.py), and this is one datagram."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(text.encode(), address)


async def _replace(client: Client, name: str, service: str) -> None:
    """Remove a former container of this name, if it is this unit's or does not run (a leftover)."""
    try:
        path = await client.get_container(name)
    except ClientError as e:
        if e.name in NO_SUCH:
            return
        raise
    props = await client.properties(path)
    if props.get("State") == "running" and props.get("Unit") != service:
        raise ClientError("org.quilt.Runtime.Error.NameInUse",
                          f"container '{name}' runs and is not {service}'s: stop or remove it first")
    await client.remove(path, True)


async def _create(client: Client, unit: unitfiles.ContainerFile, options: dict[str, Any]) -> str:
    """Create, pulling the image first when the store has none of that name (as Quadlet's podman run does)."""
    try:
        return await client.create_container(unit.name, unit.image, list(unit.command), options)
    except ClientError as e:
        if e.name != NO_SUCH_IMAGE:
            raise
    _notify(f"STATUS=pulling {unit.image}")
    await client.pull_image(unit.image)
    return await client.create_container(unit.name, unit.image, list(unit.command), options)


async def run_container(unit: unitfiles.ContainerFile) -> int:
    options = dict(unit.options)
    options["unit"] = unit.service
    file_env = unitfiles.read_environment_files(unit.environment_files)
    if file_env:
        options["env"] = file_env + list(options.get("env", []))  # the file's beneath Environment='s
    async with Client() as client:
        await _replace(client, unit.name, unit.service)
        path = await _create(client, unit, options)
        await client.start(path)
        met, code = await client.wait_condition(path, ["ready"])
        if met == "exited":
            return code
        pid = await client.get_property(path, "MainPID")
        _notify(f"READY=1\nSTATUS=container {unit.name} is ready (pid {pid})")
    return await _wait_riding_restarts(unit.name)


async def _wait_riding_restarts(name: str) -> int:
    for _ in range(RECONNECTS):
        try:
            async with Client() as client:
                return await client.wait(await client.get_container(name))
        except ClientError as e:
            # A stopping agent answers calls in progress with Failed ("call again"); a gone one, the bus does.
            if e.name.startswith("org.quilt.Runtime.Error.") and e.name != AGENT_STOPPING:
                raise
            await asyncio.sleep(1)  # the agent is restarting: the next call starts it again
    raise ClientError("org.freedesktop.DBus.Error.NoReply", f"lost quilt-agent {RECONNECTS} times while container "
                      f"'{name}' ran")


async def _ensure(get: Callable[[str], Awaitable[str]], create: Callable[[str, dict[str, Any]], Awaitable[str]],
                  unit: unitfiles.NetworkFile | unitfiles.VolumeFile) -> None:
    """The network or volume of a .network or .volume file, made unless it exists (as it was: never changed)."""
    try:
        await get(unit.name)
    except ClientError as e:
        if e.name not in NO_SUCH:
            raise
        await create(unit.name, unit.options)


@click.command(name="unit-run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
def unit_run(ctx: click.Context, file: str) -> None:
    """The main process of a service generated from FILE (a .container, .network or .volume file): make what
    it describes; for a container, exit with its exit code when it ends."""
    try:
        unit = unitfiles.load(Path(file))
    except unitfiles.UnitFileError as e:
        fail(str(e), 1)
    if isinstance(unit, unitfiles.ContainerFile):
        # systemd's stop signals every process of the service: the container ends by it, and this one with it.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

        # run_container keeps connections of its own: one may be lost to an agent restart.
        ctx.exit(with_async_client(ctx, lambda _client: run_container(unit)))
    if isinstance(unit, unitfiles.NetworkFile):
        with_async_client(ctx, lambda client: _ensure(client.get_network, client.create_network, unit))
    else:
        with_async_client(ctx, lambda client: _ensure(client.get_volume, client.create_volume, unit))


COMMANDS: list[click.Command] = [unit_run]
