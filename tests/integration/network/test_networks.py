"""Networks as objects, and what each kind gives a container: isolation between networks, internal networks
without egress, egress with masquerade to an upstream, the none, host and container:NAME modes."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from quilt_agent.client import Client, ClientError
from tests.integration.network.conftest import (
    ERR, HOST_ADDRESS, address, ping_command, run, sh, snapshot, start,
)
from tests.integration.waiting import until


async def test_the_default_network_is_listed(client: Client) -> None:
    entries = await client.list_networks()
    assert entries[0].name == "quilt" and entries[0].subnet == "10.89.0.0/24"
    props = await client.network_properties(await client.get_network("quilt"))
    assert {k: props[k] for k in ("Name", "Subnet", "Gateway", "Bridge", "Internal", "DNS")} == {
        "Name": "quilt", "Subnet": "10.89.0.0/24", "Gateway": "10.89.0.1", "Bridge": "quilt0", "Internal": False,
        "DNS": True}


async def test_create_inspect_and_remove_a_network(client: Client, busybox_tar: Path, name: str,
                                                   networks: list[str]) -> None:
    networks.append(f"{name}-net")
    path = await client.create_network(f"{name}-net", {"subnet": "10.123.0.0/24", "internal": True})
    assert path.startswith("/org/quilt/Runtime/network/")
    assert await client.get_network(f"{name}-net") == path
    props = await client.network_properties(path)
    assert props["Subnet"] == "10.123.0.0/24" and props["Gateway"] == "10.123.0.1" and props["Internal"]
    assert props["Bridge"].startswith("quilt") and props["Bridge"] != "quilt0"
    c = await client.create_container(f"{name}-c", str(busybox_tar), ["/bin/true"], {"networks": [f"{name}-net"]})
    assert (await client.network_properties(path))["Containers"] == [f"{name}-c"]
    assert [tuple(a) for a in (await client.properties(c))["Addresses"]] == [(f"{name}-net", "10.123.0.2")]
    with pytest.raises(ClientError) as caught:
        await client.remove_network(f"{name}-net", False)
    assert caught.value.name == ERR + "NetworkInUse" and f"{name}-c" in caught.value.message
    await client.remove_network(f"{name}-net", True)  # removes the container too
    assert f"{name}-net" not in [n.name for n in await client.list_networks()]
    with pytest.raises(ClientError) as caught:
        await client.get_container(f"{name}-c")
    assert caught.value.name == ERR + "NoSuchContainer"
    with pytest.raises(ClientError) as caught:
        await client.network_properties(path)
    assert caught.value.name == ERR + "NoSuchNetwork"


async def test_a_new_network_gets_the_next_free_subnet(client: Client, name: str, networks: list[str]) -> None:
    networks += [f"{name}-1", f"{name}-2"]
    one = await client.network_properties(await client.create_network(f"{name}-1"))
    two = await client.network_properties(await client.create_network(f"{name}-2"))
    assert one["Subnet"] != two["Subnet"] and one["Bridge"] != two["Bridge"]
    assert one["Subnet"].startswith("10.89.") and two["Subnet"].startswith("10.89.")


async def test_network_signals(client: Client, name: str, networks: list[str]) -> None:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    seen: list[Message] = []
    bus.add_message_handler(lambda m: seen.append(m) if m.message_type is MessageType.SIGNAL else None)
    try:
        await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                               interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                               body=["type='signal',sender='org.quilt.Runtime',path='/org/quilt/Runtime'"]))
        path = await client.create_network(f"{name}-sig")
        await client.remove_network(f"{name}-sig")
        await until(lambda: {"NetworkNew", "NetworkRemoved"} <= {m.member for m in seen},
                    lambda: f"signals seen: {[m.member for m in seen]}")
    finally:
        bus.disconnect()
    got = {m.member: m.body[1] for m in seen if m.member in ("NetworkNew", "NetworkRemoved")}
    assert got == {"NetworkNew": path, "NetworkRemoved": path}


async def test_two_networks_are_isolated(client: Client, ping_image: Path, name: str, networks: list[str]) -> None:
    networks.append(f"{name}-other")
    await client.create_network(f"{name}-other")
    here = await start(client, f"{name}-here", ping_image)
    there = await start(client, f"{name}-there", ping_image, options={"networks": [f"{name}-other"]})
    there_ip = await address(client, there, f"{name}-other")
    out = await run(client, f"{name}-probe", ping_image, f"{ping_command(there_ip)}; nslookup {name}-there")
    assert out.exit_code != 0 and not any(there_ip in line for line in out.stdout[2:]), out
    received, _ = await client.ping(here, f"{name}-there", 1)
    assert received == 0
    # A container on both networks reaches both.
    both = await run(client, f"{name}-both", ping_image, f"{ping_command(there_ip)} && {ping_command(f'{name}-here')}",
                     {"networks": ["quilt", f"{name}-other"]})
    assert both.exit_code == 0, both


async def test_another_networks_container_cannot_use_this_networks_name_server(client: Client, busybox_tar: Path,
                                                                                name: str, networks: list[str]) -> None:
    networks.append(f"{name}-o")
    await client.create_network(f"{name}-o")
    await start(client, f"{name}-secret", busybox_tar)
    out = await run(client, f"{name}-spy", busybox_tar, f"nslookup {name}-secret 10.89.0.1",
                    {"networks": [f"{name}-o"]})
    assert out.exit_code != 0 and not any("10.89.0." in line for line in out.stdout[2:]), out


async def test_egress_is_masqueraded_to_the_upstream(client: Client, busybox_tar: Path, name: str,
                                                     upstream: str) -> None:
    out = await run(client, name, busybox_tar, f"wget -q -O- http://{upstream}/")
    assert out.stdout == [f"client={HOST_ADDRESS}"], out  # the upstream sees the host, not 10.89.0.x
    assert sh("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"


async def test_an_internal_network_has_no_egress(client: Client, busybox_tar: Path, name: str, upstream: str,
                                                 networks: list[str]) -> None:
    networks.append(f"{name}-int")
    await client.create_network(f"{name}-int", {"internal": True})
    await start(client, f"{name}-peer", busybox_tar, ["/bin/sh", "-c", "echo peer > /i; exec httpd -f -p 80 -h /"],
                {"networks": [f"{name}-int"]})
    out = await run(client, name, busybox_tar,
                    f"wget -q -O- http://{name}-peer/i; timeout 3 wget -q -O- http://{upstream}/; echo rc=$?",
                    {"networks": [f"{name}-int"]})
    assert out.stdout[0] == "peer", out  # inside the network: yes
    assert out.stdout[-1] != "rc=0" and not any("client=" in line for line in out.stdout), out


ADMIN_CLOSES_HOST = """
table inet host-closed {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "quilt*" ct state established,related accept
        iifname "quilt*" udp dport 53 accept
        iifname "quilt*" drop
    }
}
"""


async def test_an_internal_network_reaches_no_host_service(client: Client, busybox_tar: Path, name: str,
                                                            networks: list[str]) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"host\n")
        await writer.drain()
        writer.close()

    # A host service on every address, as a careless daemon listens.
    server = await asyncio.start_server(answer, "0.0.0.0", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        networks.append(f"{name}-int")
        internal = await client.network_properties(await client.create_network(f"{name}-int", {"internal": True}))
        peer = await start(client, f"{name}-peer", busybox_tar,
                           ["/bin/sh", "-c", "echo peer > /i; exec httpd -f -p 80 -h /"], {"networks": [f"{name}-int"]})
        probe = f"timeout 3 nc {{}} {port} </dev/null; echo rc=$?"
        # On the default network the host answers, through the gateway: what Podman does, and the README says.
        out = await run(client, f"{name}-open", busybox_tar, probe.format("10.89.0.1"))
        assert out.stdout == ["host", "rc=0"], out
        # The README's recipe closes it, in a table of the admin's own, while names still resolve.
        sh("nft", "-f", "-", input=ADMIN_CLOSES_HOST)
        try:
            out = await run(client, f"{name}-shut", busybox_tar,
                            f"{probe.format('10.89.0.1')}; nslookup {name}-shut 10.89.0.1 | grep -c 10.89.0.")
            assert out.stdout[0] == "rc=143" and out.stdout[1] != "0", out
        finally:
            sh("nft", "delete", "table", "inet", "host-closed")
        # On the internal one: not on its own gateway, not on the other network's, while its name server answers.
        script = "; ".join([probe.format(internal["Gateway"]), probe.format("10.89.0.1"),
                            f"nslookup {name}-peer {internal['Gateway']} | grep -c {internal['Subnet'][:-5]}"])
        out = await run(client, f"{name}-closed", busybox_tar, script, {"networks": [f"{name}-int"]})
        assert out.stdout[:2] == ["rc=143", "rc=143"] and "host" not in out.stdout, out
        assert out.stdout[2] != "0", out
        # The host still opens connections to the internal network's containers and gets their replies.
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(await address(client, peer, f"{name}-int"), 80), 5)
        writer.write(b"GET /i HTTP/1.0\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert reply.endswith(b"peer\n"), reply
    finally:
        server.close()
        await server.wait_closed()


async def test_none_has_only_loopback(client: Client, busybox_tar: Path, name: str) -> None:
    out = await run(client, name, busybox_tar, "ls /sys/class/net; cat /etc/resolv.conf | grep -c 10.89",
                    {"networks": ["none"]})
    assert out.stdout[0] == "lo" and out.stdout[1] == "0", out
    path = await client.get_container(name)
    assert (await client.properties(path))["Addresses"] == []


async def test_container_mode_shares_the_namespace(client: Client, busybox_tar: Path, name: str) -> None:
    owner = await start(client, f"{name}-owner", busybox_tar,
                        ["/bin/sh", "-c", "echo shared > /i; exec httpd -f -p 127.0.0.1:80 -h /"])
    out = await run(client, f"{name}-guest", busybox_tar,
                    "readlink /proc/self/ns/net; wget -q -O- http://127.0.0.1/i; ip -o -4 addr show eth0",
                    {"networks": [f"container:{name}-owner"]})
    owner_ns = os.readlink(f"/proc/{(await client.properties(owner))['MainPID']}/ns/net")
    assert out.stdout[0] == owner_ns and out.stdout[1] == "shared", out
    assert await address(client, owner) in out.stdout[2]
    # The owner cannot be removed while another container shares its namespace.
    guest = await client.get_container(f"{name}-guest")
    with pytest.raises(ClientError) as caught:
        await client.remove(owner, True)
    assert caught.value.name == ERR + "NetworkInUse"
    await client.remove(guest)
    await client.remove(owner, True)


async def test_host_mode_shares_the_hosts_namespace(client: Client, busybox_tar: Path, name: str) -> None:
    out = await run(client, name, busybox_tar, "readlink /proc/self/ns/net", {"networks": ["host"]})
    assert out.stdout == [os.readlink("/proc/self/ns/net")]
    props = await client.properties(await client.get_container(name))
    assert "net" not in props["Namespaces"]


async def test_fixed_address(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.create_container(f"{name}-a", str(busybox_tar), ["/bin/true"], {"ip": "10.89.0.200"})
    assert await address(client, path) == "10.89.0.200"
    with pytest.raises(ClientError) as caught:
        await client.create_container(f"{name}-b", str(busybox_tar), ["/bin/true"], {"ip": "10.89.0.200"})
    assert caught.value.name == ERR + "AddressInUse"
    with pytest.raises(ClientError) as caught:
        await client.create_container(f"{name}-c", str(busybox_tar), ["/bin/true"], {"ip": "10.89.0.1"})
    assert caught.value.name == ERR + "AddressInUse"  # the gateway
    with pytest.raises(ClientError) as caught:
        await client.create_container(f"{name}-d", str(busybox_tar), ["/bin/true"], {"ip": "10.90.0.5"})
    assert caught.value.name == ERR + "InvalidArgument" and "10.89.0.0/24" in caught.value.message
    out = await run(client, f"{name}-e", busybox_tar, "ip -o -4 addr show eth0", {"ip": "10.89.0.201"})
    assert "10.89.0.201/24" in out.stdout[0]


async def test_fifty_concurrent_creates_get_fifty_addresses(client: Client, busybox_tar: Path, name: str) -> None:
    paths = await asyncio.gather(*(client.create_container(f"{name}-{i}", str(busybox_tar), ["/bin/true"], {})
                                   for i in range(50)))
    addresses = [await address(client, p) for p in paths]
    assert len(set(addresses)) == 50
    # And in the kernel: each namespace has its own.
    ids = [p.rsplit("/", 1)[1] for p in paths[:5]]
    for cid, ip in zip(ids, addresses[:5]):
        def inside(cid: str = cid) -> str:
            return sh("ip", "-n", f"quilt-{cid}", "-o", "-4", "addr", "show", "eth0", check=False).stdout

        # the worker makes them one after the other, on a loaded machine
        await until(lambda ip=ip: f"{ip}/24" in inside(), lambda cid=cid, ip=ip: f"{cid} {ip} {inside()}", 20,
                    interval=0.05)


async def test_addresses_survive_an_agent_restart(client: Client, busybox_tar: Path, name: str) -> None:
    path = await start(client, name, busybox_tar)
    before = await address(client, path)
    sh("systemctl", "restart", "quilt-agent")
    async with Client() as again:
        assert await address(again, path) == before
        received, _ = await again.ping(path, "10.89.0.1", 1)
        assert received == 1
    assert snapshot()["netns"].count(f"quilt-{path.rsplit('/', 1)[1]}") == 1
