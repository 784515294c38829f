"""The live objects match dbus/org.quilt.Runtime.xml, the API's contract: methods with their arguments (names,
types, directions, in order), properties with type and access, signals with their arguments."""
from __future__ import annotations

import asyncio
import io
import re
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from quilt_agent.bus.errors import ERROR_NAMES
from quilt_agent.client import Client
from tests.integration.waiting import until

PROJECT = Path(__file__).resolve().parents[3]
CONTRACT = PROJECT / "dbus/org.quilt.Runtime.xml"
BUS_NAME = "org.quilt.Runtime"
MANAGER_PATH = "/org/quilt/Runtime"
MANAGER = "org.quilt.Runtime.Manager"
CONTAINER = "org.quilt.Runtime.Container"
IMAGE = "org.quilt.Runtime.Image"


def interfaces(xml: str) -> dict[str, dict[str, Any]]:
    """Each interface but the standard org.freedesktop.DBus.* ones, as plain comparable data."""
    out: dict[str, dict[str, Any]] = {}
    for iface in ET.fromstring(xml).findall("interface"):
        name = iface.get("name", "")
        if name.startswith("org.freedesktop.DBus."):
            continue
        out[name] = {
            "methods": {m.get("name"): [(a.get("direction", "in"), a.get("type"), a.get("name"))
                                        for a in m.findall("arg")] for m in iface.findall("method")},
            "properties": {p.get("name"): (p.get("type"), p.get("access")) for p in iface.findall("property")},
            # A signal's args have no direction (or "out", which is all they can be).
            "signals": {s.get("name"): [(a.get("type"), a.get("name")) for a in s.findall("arg")]
                        for s in iface.findall("signal")},
        }
    return out


def differences(live: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]) -> list[str]:
    """What differs, one line each, so that a failure says which member and how."""
    out = [f"interface {i}: {'missing' if i in want else 'not in the contract'}" for i in set(live) ^ set(want)]
    for iface in set(live) & set(want):
        for kind in ("methods", "properties", "signals"):
            have, should = live[iface][kind], want[iface][kind]
            for member in sorted(set(have) | set(should)):
                if have.get(member) != should.get(member):
                    out.append(f"{iface} {kind[:-1]} {member}: live {have.get(member)}, contract {should.get(member)}")
    return out


def contract() -> dict[str, dict[str, Any]]:
    return interfaces(CONTRACT.read_text())


def busctl_xml(path: str) -> str:
    return subprocess.run(["busctl", "introspect", "--xml-interface", BUS_NAME, path],
                          capture_output=True, text=True, check=True, timeout=30).stdout


async def introspect_call(path: str) -> str:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(Message(destination=BUS_NAME, path=path, interface="org.freedesktop.DBus.Introspectable",
                                       member="Introspect"))
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        return reply.body[0]
    finally:
        bus.disconnect()


def test_the_contract_describes_both_interfaces() -> None:
    api = contract()
    assert {MANAGER, CONTAINER, IMAGE} <= set(api)
    assert api[MANAGER]["methods"] and api[CONTAINER]["methods"] and api[CONTAINER]["properties"]
    assert api[IMAGE]["properties"]


@pytest.mark.parametrize("how", ["busctl", "Introspect"])
async def test_manager_object_matches_the_contract(client: Client, how: str) -> None:
    xml = busctl_xml(MANAGER_PATH) if how == "busctl" else await introspect_call(MANAGER_PATH)
    assert differences(interfaces(xml), {MANAGER: contract()[MANAGER]}) == []


@pytest.mark.parametrize("how", ["busctl", "Introspect"])
async def test_container_object_matches_the_contract(client: Client, busybox_tar: Path, name: str, how: str) -> None:
    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {})
    xml = busctl_xml(path) if how == "busctl" else await introspect_call(path)
    assert differences(interfaces(xml), {CONTAINER: contract()[CONTAINER]}) == []


@pytest.mark.parametrize("how", ["busctl", "Introspect"])
async def test_image_object_matches_the_contract(client: Client, busybox_tar: Path, how: str) -> None:
    path = await client.import_image(str(busybox_tar))
    xml = busctl_xml(path) if how == "busctl" else await introspect_call(path)
    assert differences(interfaces(xml), {IMAGE: contract()[IMAGE]}) == []


async def test_image_property_values_travel_with_the_types_of_the_contract(client: Client, tmp_path: Path) -> None:
    small = tmp_path / "small.tar"
    with tarfile.open(small, "w") as tar:
        info = tarfile.TarInfo("etc/hostname")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"small\n"))
    path = await client.import_image(str(small), "introspection-test:v1")
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(Message(destination=BUS_NAME, path=path, interface="org.freedesktop.DBus.Properties",
                                       member="GetAll", signature="s", body=[IMAGE]))
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        sent = {key: value.signature for key, value in reply.body[0].items()}
        assert sent == {key: typ for key, (typ, _) in contract()[IMAGE]["properties"].items()}
        assert reply.body[0]["Names"].value == ["introspection-test:v1"]
    finally:
        bus.disconnect()
        await client.remove_image("introspection-test:v1")


async def test_a_container_has_its_object_as_soon_as_it_is_listed(client: Client, busybox_tar: Path,
                                                                 name: str) -> None:
    # From a second connection, poll the list while containers are created and call each path at once.
    async with Client() as watcher:
        for i in range(30):
            create = asyncio.ensure_future(client.create_container(f"{name}-{i}", str(busybox_tar), ["/bin/true"], {}))
            while not (listed := [e for e in await watcher.list_containers() if e.name == f"{name}-{i}"]):
                assert not create.done() or create.exception() is None
            props = await watcher.properties(listed[0].path)
            assert props["Name"] == f"{name}-{i}"
            assert await create == listed[0].path


async def test_property_values_travel_with_the_types_of_the_contract(client: Client, busybox_tar: Path,
                                                                      name: str) -> None:
    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {})
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        for iface, at in ((CONTAINER, path), (MANAGER, MANAGER_PATH)):
            reply = await bus.call(Message(destination=BUS_NAME, path=at, interface="org.freedesktop.DBus.Properties",
                                           member="GetAll", signature="s", body=[iface]))
            assert reply.message_type is MessageType.METHOD_RETURN, reply.body
            sent = {key: value.signature for key, value in reply.body[0].items()}
            assert sent == {key: typ for key, (typ, _) in contract()[iface]["properties"].items()}
    finally:
        bus.disconnect()


async def test_signals_travel_with_the_signatures_of_the_contract(client: Client, busybox_tar: Path,
                                                                  name: str) -> None:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    seen: list[Message] = []
    bus.add_message_handler(lambda m: seen.append(m) if m.message_type is MessageType.SIGNAL else None)
    try:
        reply = await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                       interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                       body=[f"type='signal',sender='{BUS_NAME}',path='{MANAGER_PATH}'"]))
        assert reply.message_type is MessageType.METHOD_RETURN
        path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {})
        await client.remove(path)
        await until(lambda: {"ContainerNew", "ContainerRemoved"} <= {m.member for m in seen},
                    lambda: f"signals seen: {[m.member for m in seen]}")
    finally:
        bus.disconnect()
    signals = contract()[MANAGER]["signals"]
    got = {m.member: (m.interface, m.signature, m.body[1]) for m in seen if m.member in signals}
    expected_signature = {s: "".join(t for t, _ in args) for s, args in signals.items()}
    # Event carries the container's id where the others carry its path.
    assert got == {**{s: (MANAGER, expected_signature[s], path) for s in ("ContainerNew", "ContainerRemoved")},
                   "Event": (MANAGER, expected_signature["Event"], path.rsplit("/", 1)[1])}


def test_the_error_names_the_contract_lists_are_the_ones_the_agent_sends() -> None:
    # The contract's comment lists them as org.quilt.Runtime.Error.{A, B, ...}.
    listed = re.search(r"org\.quilt\.Runtime\.Error\.\{([^}]*)\}", CONTRACT.read_text())
    assert listed, "the contract's comment no longer lists the error names"
    names = {"org.quilt.Runtime.Error." + n.strip() for n in listed.group(1).split(",")}
    sent = set(ERROR_NAMES.values()) - {"org.freedesktop.DBus.Error.AccessDenied"}
    assert names == sent


# --- networks ------------------------------------------------------------------------------

NETWORK = "org.quilt.Runtime.Network"


@pytest.mark.parametrize("how", ["busctl", "Introspect"])
async def test_network_object_matches_the_contract(client: Client, how: str) -> None:
    path = await client.get_network("quilt")
    xml = busctl_xml(path) if how == "busctl" else await introspect_call(path)
    assert differences(interfaces(xml), {NETWORK: contract()[NETWORK]}) == []


async def test_network_property_values_travel_with_the_types_of_the_contract(client: Client) -> None:
    path = await client.get_network("quilt")
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(Message(destination=BUS_NAME, path=path, interface="org.freedesktop.DBus.Properties",
                                       member="GetAll", signature="s", body=[NETWORK]))
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        sent = {key: value.signature for key, value in reply.body[0].items()}
        assert sent == {key: typ for key, (typ, _) in contract()[NETWORK]["properties"].items()}
    finally:
        bus.disconnect()


# --- volumes -------------------------------------------------------------------------------

VOLUME = "org.quilt.Runtime.Volume"


@pytest.mark.parametrize("how", ["busctl", "Introspect"])
async def test_volume_object_matches_the_contract(client: Client, how: str) -> None:
    path = await client.create_volume(f"introspect-{how.lower()}")
    try:
        xml = busctl_xml(path) if how == "busctl" else await introspect_call(path)
        assert differences(interfaces(xml), {VOLUME: contract()[VOLUME]}) == []
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        try:
            reply = await bus.call(Message(destination=BUS_NAME, path=path, interface="org.freedesktop.DBus.Properties",
                                           member="GetAll", signature="s", body=[VOLUME]))
            assert reply.message_type is MessageType.METHOD_RETURN, reply.body
            sent = {key: value.signature for key, value in reply.body[0].items()}
            assert sent == {key: typ for key, (typ, _) in contract()[VOLUME]["properties"].items()}
        finally:
            bus.disconnect()
    finally:
        await client.remove_volume(f"introspect-{how.lower()}")
