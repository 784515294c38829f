"""The systemd-machined client: each running container registered as a machine of class "container", as
systemd-nspawn and libvirt register theirs, so that machinectl, `ps -o machine`, systemd-cgls, `journalctl -M`
and nss-mymachines know it.

RegisterMachineWithNetwork names the machine, its id (the container id's first 128 bits), the service that runs
it ("quilt"), its leader (the container's init: machined finds the unit from its cgroup, the container's scope or
its generated unit's service) and the host's side of its interfaces; no root directory (the container's root is
a mount of its own namespace only: machined reaches it through the leader, as for copy-to and shell).
UnregisterMachine at its end. A host without machined is no error: registration is then off, and the journal says
so once. Set in /etc/quilt/quilt.conf to register none:

    [machines]
    register = false

Machine names are hostname-like (systemd's hostname_is_valid): a Quilt name with '_' is registered under a
derived name ('_' -> '-'), and one whose derived name is taken gets its id's first 8 digits appended.
"""
from __future__ import annotations

import logging
import re
import socket
from pathlib import Path
from typing import Protocol

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from quilt_agent.config import read_table

log = logging.getLogger("quilt.machines")

MACHINED = "org.freedesktop.machine1"
MACHINED_PATH = "/org/freedesktop/machine1"
MACHINED_MANAGER = "org.freedesktop.machine1.Manager"
SERVICE = "quilt"
MAX_NAME = 64
_INVALID = re.compile(r"[^A-Za-z0-9.-]")


class MachineError(Exception):
    """machined refused a call; name is its D-Bus error name."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name


class MachineRegistry(Protocol):
    """What the manager needs of machined. Machined is the real one; tests/fakes/machines.py keeps machines in
    memory."""

    async def available(self) -> bool:
        """Whether the host has machined (it is bus-activated: present means registrable)."""
        ...

    async def register(self, name: str, machine_id: bytes, leader: int, ifnames: list[str]) -> str:
        """Register a machine; its object path. MachineError("...MachineExists") when the name is taken."""
        ...

    async def unregister(self, name: str) -> None:
        """Forget the machine; an unknown one is no error."""
        ...

    async def find(self, name: str) -> tuple[str, int]:
        """The object path and leader pid of a registered machine, ("", 0) when there is none of that name."""
        ...


def registering(path: Path) -> bool:
    """Whether the settings file leaves registration on ([machines] register, true by default); a value that is
    not a boolean is logged and the default kept."""
    value = read_table(path, "machines").get("register", True)
    if not isinstance(value, bool):
        log.error("ignoring [machines] register = %r: not true or false; registering", value)
        return True
    return value


def machine_name(name: str, container_id: str, taken: bool = False) -> str:
    """The machine name of a container: its own when machined takes it, else derived (see the module docstring)."""
    derived = _INVALID.sub("-", name).strip(".-") or "quilt"
    if taken:
        derived = f"{derived[:MAX_NAME - 9]}-{container_id[:8]}"
    return derived[:MAX_NAME].rstrip(".-")


class Machined:
    """machined over the agent's system bus connection."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus

    async def _call(self, member: str, signature: str = "", body: list | None = None) -> list:
        reply = await self._bus.call(Message(destination=MACHINED, path=MACHINED_PATH, interface=MACHINED_MANAGER,
                                             member=member, signature=signature, body=body or []))
        if reply.message_type is MessageType.ERROR:
            raise MachineError(reply.error_name or "error", str(reply.body[0]) if reply.body else "")
        return reply.body

    async def available(self) -> bool:
        reply = await self._bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                             interface="org.freedesktop.DBus", member="ListActivatableNames"))
        names = reply.body[0] if reply.message_type is MessageType.METHOD_RETURN else []
        return MACHINED in names

    async def register(self, name: str, machine_id: bytes, leader: int, ifnames: list[str]) -> str:
        indices = []
        for ifname in ifnames:
            try:
                indices.append(socket.if_nametoindex(ifname))
            except OSError:
                pass  # gone meanwhile: the machine is registered without it
        (path,) = await self._call("RegisterMachineWithNetwork", "sayssusai",
                                   [name, machine_id, SERVICE, "container", leader, "", indices])
        return str(path)

    async def unregister(self, name: str) -> None:
        try:
            await self._call("UnregisterMachine", "s", [name])
        except MachineError as err:
            if not err.name.endswith("NoSuchMachine"):
                raise

    async def find(self, name: str) -> tuple[str, int]:
        try:
            (path,) = await self._call("GetMachine", "s", [name])
        except MachineError as err:
            if err.name.endswith("NoSuchMachine"):
                return "", 0
            raise
        reply = await self._bus.call(Message(destination=MACHINED, path=path,
                                             interface="org.freedesktop.DBus.Properties", member="Get", signature="ss",
                                             body=["org.freedesktop.machine1.Machine", "Leader"]))
        leader = int(reply.body[0].value) if reply.message_type is MessageType.METHOD_RETURN else 0
        return str(path), leader
