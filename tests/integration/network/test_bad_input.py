"""Every refused network call gets its named error, through the real bus, and leaves nothing behind."""
from __future__ import annotations

from pathlib import Path

import pytest
from dbus_fast import Variant

from quilt_agent.client import Client, ClientError
from tests.integration.network.conftest import ERR, same, snapshot, start


@pytest.mark.parametrize("options, error, words", [
    ({"subnet": "10.89.0.0/16"}, "InvalidArgument", "overlaps network 'quilt'"),
    ({"subnet": "10.89.0.128/25"}, "InvalidArgument", "overlaps"),
    ({"subnet": "10.200.0.1/24"}, "InvalidArgument", "host bits"),
    ({"subnet": "nonsense"}, "InvalidArgument", "Invalid subnet"),
    ({"subnet": "fd00::/64"}, "InvalidArgument", "IPv4"),
    ({"subnet": "10.200.0.0/24", "gateway": "10.201.0.1"}, "InvalidArgument", "not a host address"),
    ({"internal": Variant("s", "yes")}, "InvalidArgument", "boolean"),
    ({"colour": Variant("s", "blue")}, "InvalidArgument", "Unknown network option"),
])
async def test_bad_create_network(client: Client, name: str, options: dict, error: str, words: str) -> None:
    before = [n.name for n in await client.list_networks()]
    with pytest.raises(ClientError) as caught:
        await client.create_network(f"{name}-bad", options)
    assert caught.value.name == ERR + error and words in caught.value.message, caught.value.message
    assert [n.name for n in await client.list_networks()] == before


@pytest.mark.parametrize("bad, words", [("", "empty"), ("none", "network mode"), ("container:x", "Invalid network name"),
                                        ("a b", "Invalid network name"), ("x" * 64, "longer than")])
async def test_bad_network_names(client: Client, bad: str, words: str) -> None:
    with pytest.raises(ClientError) as caught:
        await client.create_network(bad)
    assert caught.value.name == ERR + "InvalidArgument" and words in caught.value.message


async def test_a_taken_network_name_is_name_in_use(client: Client, name: str, networks: list[str]) -> None:
    networks.append(f"{name}-dup")
    await client.create_network(f"{name}-dup")
    with pytest.raises(ClientError) as caught:
        await client.create_network(f"{name}-dup")
    assert caught.value.name == ERR + "NameInUse" and "network" in caught.value.message


async def test_unknown_networks_are_no_such_network(client: Client, busybox_tar: Path, name: str) -> None:
    for call in (client.get_network("nowhere"), client.remove_network("nowhere", True),
                 client.create_container(name, str(busybox_tar), ["/bin/true"], {"networks": ["nowhere"]}),
                 client.network_properties("/org/quilt/Runtime/network/" + "0" * 64)):
        with pytest.raises(ClientError) as caught:
            await call
        assert caught.value.name == ERR + "NoSuchNetwork"
        assert "nowhere" in caught.value.message or "0" * 64 in caught.value.message


async def test_the_default_network_cannot_be_removed(client: Client) -> None:
    with pytest.raises(ClientError) as caught:
        await client.remove_network("quilt", True)
    assert caught.value.name == ERR + "InvalidArgument"


async def test_bad_ping(client: Client, busybox_tar: Path, name: str) -> None:
    path = await start(client, name, busybox_tar)
    for target, count, error in (("10.89.0.1", 0, "InvalidArgument"), ("10.89.0.1", 101, "InvalidArgument"),
                                 ("nobody-here", 1, "NoSuchContainer"), ("", 1, "InvalidArgument")):
        with pytest.raises(ClientError) as caught:
            await client.ping(path, target, count)
        assert caught.value.name == ERR + error, (target, count, caught.value.message)
    lonely = await start(client, f"{name}-none", busybox_tar, options={"networks": ["none"]})
    with pytest.raises(ClientError) as caught:
        await client.ping(path, f"{name}-none", 1)
    assert caught.value.name == ERR + "InvalidArgument" and "no address" in caught.value.message
    created = await client.create_container(f"{name}-created", str(busybox_tar), ["/bin/true"],
                                            {"networks": ["none"]})
    with pytest.raises(ClientError) as caught:
        await client.ping(created, "127.0.0.1", 1)
    assert caught.value.name == ERR + "NotRunning"
    assert (await client.ping(lonely, "127.0.0.1", 2))[0] == 2  # none: its own loopback answers


async def test_wrong_option_types(client: Client, busybox_tar: Path, name: str) -> None:
    before = snapshot()
    for options in ({"networks": Variant("s", "quilt")}, {"ports": Variant("s", "80:80")},
                    {"ip": Variant("u", 5)}, {"aliases": Variant("s", "x")}):
        with pytest.raises(ClientError) as caught:
            await client.create_container(name, str(busybox_tar), ["/bin/true"], options)
        assert caught.value.name == ERR + "InvalidArgument"
    assert same(before, snapshot()) == []
