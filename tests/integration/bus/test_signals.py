"""Signals: ContainerNew/ContainerRemoved on the manager, PropertiesChanged on each container."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from quilt_agent.api import unwrap
from quilt_agent.client import Client
from tests.integration.waiting import until


class Recorder:
    """A separate bus connection that records the agent's signals, as another program would see them."""

    def __init__(self) -> None:
        self.signals: list[tuple[str, str, list[Any]]] = []
        self.bus: MessageBus | None = None

    async def __aenter__(self) -> Recorder:
        self.bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        for rule in ("type='signal',sender='org.quilt.Runtime',interface='org.quilt.Runtime.Manager'",
                     "type='signal',sender='org.quilt.Runtime',interface='org.freedesktop.DBus.Properties'",
                     "type='signal',sender='org.quilt.Runtime',interface='org.freedesktop.DBus.ObjectManager'"):
            await self.bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                        interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                        body=[rule]))
        self.bus.add_message_handler(self._record)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.bus is not None
        self.bus.disconnect()

    def _record(self, msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.path.startswith("/org/quilt/Runtime"):
            self.signals.append((msg.member, msg.path, msg.body))

    def states(self, path: str) -> list[str]:
        return [body[1]["State"].value for member, p, body in self.signals
                if member == "PropertiesChanged" and p == path and "State" in body[1]]

    async def until(self, predicate: Any, timeout: float = 10.0) -> None:
        await until(predicate, lambda: f"the signals never matched: {self.signals}", timeout, interval=0.01)


async def test_container_new_and_removed_signals_carry_id_and_path(client: Client, busybox_tar: Path,
                                                                   name: str) -> None:
    async with Recorder() as rec:
        path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {})
        cid = (await client.properties(path))["Id"]
        await client.remove(path)
        await rec.until(lambda: any(s[0] == "ContainerRemoved" for s in rec.signals))
    manager_signals = [(m, body) for m, p, body in rec.signals if p == "/org/quilt/Runtime" and m != "Event"]
    assert manager_signals == [("ContainerNew", [cid, path]), ("ContainerRemoved", [cid, path])]


async def test_interfaces_added_of_a_new_container_carries_what_get_all_answers(client: Client, busybox_tar: Path,
                                                                               name: str) -> None:
    async with Recorder() as rec:
        path = await client.create_container(name, str(busybox_tar), ["/bin/true"],
                                             {"labels": {"tier": "web"}, "env": ["A=1"]})
        await rec.until(lambda: any(s[0] == "InterfacesAdded" and s[1] == path for s in rec.signals))
        answered = await client.properties(path)
        await client.remove(path)
    (added,) = [body for member, p, body in rec.signals if member == "InterfacesAdded" and p == path]
    assert added[0] == path and list(added[1]) == ["org.quilt.Runtime.Container"]
    sent = unwrap(added[1]["org.quilt.Runtime.Container"])
    assert sent == answered and sent["Name"] == name and sent["Labels"] == {"tier": "web"}


async def test_properties_changed_follows_the_state_through_the_life(client: Client, busybox_tar: Path,
                                                                     name: str) -> None:
    async with Recorder() as rec:
        path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "exit 5"], {})
        await client.wait(path)
        await rec.until(lambda: "exited" in rec.states(path))
        await client.remove(path)
        await rec.until(lambda: "removing" in rec.states(path))
    assert rec.states(path) == ["running", "exited", "removing"]
    changes = [body[1] for m, p, body in rec.signals if m == "PropertiesChanged" and p == path]
    exited = next(c for c in changes if c.get("State") and c["State"].value == "exited")
    assert exited["ExitCode"].value == 5
    assert exited["FinishedAt"].value > 0
    assert all(body[0] == "org.quilt.Runtime.Container" for m, p, body in rec.signals
               if m == "PropertiesChanged" and p == path)  # (the network's Containers change too)
