"""Nothing of a container's network outlives it: after a removal, a failed create, an agent killed and started
again, the test host's links, addresses, nftables ruleset and /run/netns are what they were.

A "keeper" container holds the default network up during each test: a network's bridge, name server and rules
outlive its last container by a while on purpose (network/core.py LINGER); what is compared here is what
belongs to the containers. Taking a whole network down is checked through RemoveNetwork, which does it at once.
"""
from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path
from typing import AsyncIterator

import pytest

from quilt_agent.client import Client, ClientError
from tests.integration.network.conftest import ERR, eventually_same, same, sh, snapshot, start
from tests.integration.waiting import until


@pytest.fixture
async def keeper(client: Client, busybox_tar: Path, name: str) -> AsyncIterator[str]:
    path = await start(client, f"{name}-keeper", busybox_tar)
    yield path


async def agent_restarted_after_kill(old_pid: int, timeout: float = 20.0) -> None:
    os.kill(old_pid, signal.SIGKILL)

    def back() -> bool:
        pid = int(sh("systemctl", "show", "-P", "MainPID", "quilt-agent").stdout.strip() or 0)
        state = sh("systemctl", "show", "-P", "ActiveState", "quilt-agent").stdout.strip()
        return bool(pid) and pid != old_pid and state == "active"

    await until(back, "the agent did not come back", timeout, interval=0.05)


def agent_pid() -> int:
    return int(sh("systemctl", "show", "-P", "MainPID", "quilt-agent").stdout.strip())


async def test_remove_leaves_nothing(client: Client, busybox_tar: Path, name: str, keeper: str,
                                     networks: list[str]) -> None:
    networks.append(f"{name}-second")
    await client.create_network(f"{name}-second")
    await start(client, f"{name}-holder", busybox_tar, options={"networks": [f"{name}-second"]})
    before = snapshot()
    paths = [
        await start(client, f"{name}-a", busybox_tar, options={"ports": ["8100:80", "127.0.0.1:8101:81/udp"],
                                                               "aliases": ["a-alias"]}),
        await start(client, f"{name}-b", busybox_tar, options={"networks": ["quilt", f"{name}-second"]}),
        await client.create_container(f"{name}-c", str(busybox_tar), ["/bin/true"], {}),  # never started
    ]
    during = snapshot()
    assert during["links"] != before["links"] and during["nft"] != before["nft"]
    for path in paths:
        await client.remove(path, True)
    assert same(before, snapshot()) == []


async def test_removing_a_network_takes_its_bridge_and_rules_away(client: Client, busybox_tar: Path, name: str,
                                                                  keeper: str) -> None:
    before = snapshot()
    await client.create_network(f"{name}-gone", {"internal": True})
    await start(client, f"{name}-on-it", busybox_tar, options={"networks": [f"{name}-gone"], "ports": ["8110:80"]})
    assert same(before, snapshot()) != []
    await client.remove_network(f"{name}-gone", True)
    assert same(before, snapshot()) == []


async def test_a_failed_create_leaves_nothing(client: Client, busybox_tar: Path, name: str, keeper: str) -> None:
    # Started, not only created: a start waits for the interfaces the create began to make.
    await start(client, f"{name}-taken", busybox_tar, options={"ports": ["8120:80"], "ip": "10.89.0.250"})
    before = snapshot()
    listed = await client.list_containers()
    refused = [
        ({"ports": ["8120:80"]}, "PortInUse"),
        ({"ip": "10.89.0.250"}, "AddressInUse"),
        ({"networks": ["no-such-net"]}, "NoSuchNetwork"),
        ({"networks": ["container:no-such-container"]}, "NoSuchContainer"),
        ({"ports": ["8121:0"]}, "InvalidArgument"),
        ({"ports": ["8121:70000"]}, "InvalidArgument"),
        ({"ports": ["8121:80/sctp"]}, "InvalidArgument"),
        ({"ip": "10.89.1.5"}, "InvalidArgument"),
        ({"ip": "not-an-ip"}, "InvalidArgument"),
        ({"aliases": ["bad alias!"]}, "InvalidArgument"),
        ({"networks": ["none"], "ports": ["8122:80"]}, "InvalidArgument"),
        ({"networks": ["quilt", "none"]}, "InvalidArgument"),
    ]
    for options, error in refused:
        with pytest.raises(ClientError) as caught:
            await client.create_container(f"{name}-no", str(busybox_tar), ["/bin/true"], options)
        assert caught.value.name == ERR + error, (options, caught.value.message)
    with pytest.raises(ClientError):
        await client.run_container(f"{name}-no", "/no/such/image.tar", ["/bin/true"], {"ports": ["8123:80"]})
    assert await client.list_containers() == listed
    assert same(before, snapshot()) == []
    # The refused port and address are still free for the next one to take.
    path = await client.create_container(f"{name}-yes", str(busybox_tar), ["/bin/true"], {"ports": ["8123:80"]})
    await client.remove(path)


async def test_agent_killed_and_restarted_then_remove_leaves_nothing(client: Client, busybox_tar: Path, name: str,
                                                                     keeper: str) -> None:
    before = snapshot()
    running = await start(client, f"{name}-run", busybox_tar, options={"ports": ["8130:80"]})
    created = await client.create_container(f"{name}-new", str(busybox_tar), ["/bin/true"], {})
    # The kill comes once the worker has made the created container's namespace and its interface: what a
    # crash leaves for the remove to find.
    cid = (await client.properties(created))["Id"]
    await until(lambda: sh("ip", "-n", f"quilt-{cid}", "-o", "link", "show", "eth0", check=False).returncode == 0,
                "the created container's namespace and interface were never made")
    await agent_restarted_after_kill(agent_pid())
    async with Client() as again:
        assert (await again.properties(running))["State"] == "running"
        received, _ = await again.ping(keeper, f"{name}-run", 1)  # still on the network, still named
        assert received == 1
        await again.remove(running, True)
        await again.remove(created, True)
    await eventually_same(before)


async def test_what_a_crash_left_is_removed_at_start(client: Client, name: str, keeper: str) -> None:
    before = snapshot()
    ghost = secrets.token_hex(32)  # a container id the agent never heard of: a create that died half-way
    sh("ip", "netns", "add", f"quilt-{ghost}")
    sh("ip", "link", "add", f"vq{ghost[:12]}0", "type", "veth", "peer", "name", "ghostpeer")
    sh("ip", "link", "set", f"vq{ghost[:12]}0", "alias", f"quilt:{ghost}")
    sh("ip", "link", "add", "notours0", "type", "veth", "peer", "name", "notours1")  # not Quilt's: stays
    try:
        sh("systemctl", "restart", "quilt-agent")
        after = snapshot()
        assert f"quilt-{ghost}" not in after["netns"]
        names = [link[0] for link in after["links"]]
        assert f"vq{ghost[:12]}0" not in names and "notours0" in names
    finally:
        sh("ip", "link", "del", "notours0", check=False)
    await eventually_same(before)


async def test_with_no_container_left_a_restart_takes_everything_down(client: Client, busybox_tar: Path,
                                                                      name: str) -> None:
    path = await start(client, name, busybox_tar, options={"ports": ["8140:80"]})
    note = Path("/run/quilt/ip_forward")
    was = note.read_text().strip() if note.exists() else sh("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()
    for entry in await client.list_containers():
        await client.remove(entry.path, True)
    assert path not in [e.path for e in await client.list_containers()]
    sh("systemctl", "restart", "quilt-agent")
    after = snapshot()
    assert not [link for link in after["links"] if link[0].startswith(("quilt", "vq"))], after["links"]
    assert after["nft"] == [] and after["netns"] == []
    assert after["ip_forward"] == was and not note.exists()
