"""The behaviour every NetworkKernel has (quilt_agent/network/bridge.py): subclassed with fixtures `kernel` (the
implementation, on a host namespace of the test's) and `probe` (how to see, without the kernel object, which
links, addresses and routes a namespace holds).

Each test has names of its own (a bridge quiltc..., host ends vq<container id>N, namespaces quilt-<container id>
under /run/netns, a subnet in 198.18.0.0/15, the benchmarking range no host routes) and removes what it made.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import struct
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Protocol

import pytest

from quilt_agent.network import netns
from quilt_agent.network.bridge import LinkPlan, NetworkKernel, bridge_mac
from quilt_agent.network.model import Network, host_ifname, link_alias
from tests.contract.protocols import missing_methods

DEADLINE = 10.0  # seconds for the kernel to finish what it does after the call (a namespace's teardown)
IFNAMSIZ = 16


@dataclass(frozen=True)
class LinkView:
    """One interface as `ip -d addr` shows it; addresses are IPv4 only, as "198.18.3.1/24"."""

    up: bool  # administratively (IFF_UP)
    master: str | None  # the bridge it is a port of
    alias: str
    mac: str
    addresses: frozenset[str]


Where = Path | int | None  # a pinned namespace's path, a namespace's fd, None for the kernel's host namespace


class KernelProbe(Protocol):
    async def links(self, where: Where) -> dict[str, LinkView]:
        """Every interface of the namespace, by name."""

    async def default_gateway(self, where: Where) -> str | None:
        """The IPv4 default route's gateway, None when there is no default route."""


@dataclass(frozen=True)
class Names:
    """A test's own networks, container and namespace."""

    container_id: str
    first: Network
    second: Network

    @property
    def path(self) -> Path:
        return netns.path_for(self.container_id)

    def host(self, position: int) -> str:
        return host_ifname(self.container_id, position)

    def plan(self, network: Network, position: int, address_index: int = 2, default_route: bool | None = None,
             alias: str | None = None) -> LinkPlan:
        address = network.network.network_address + address_index
        return LinkPlan(host_ifname=self.host(position), ifname=f"eth{position}", bridge=network.bridge,
                        address=str(address), prefixlen=network.prefixlen, gateway=self.first.gateway,
                        default_route=position == 0 if default_route is None else default_route,
                        alias=link_alias(self.container_id) if alias is None else alias)


def make_names() -> Names:
    token = uuid.uuid4().hex
    container_id = (token * 2)[:64]
    third = int(token[:4], 16) % 256

    def network(i: int) -> Network:
        subnet = ipaddress.IPv4Network(f"198.{18 + i}.{third}.0/24")
        return Network(id=f"{i}{token[1:]}"[:32] * 2, name=f"contract{i}", subnet=str(subnet),
                       gateway=str(subnet.network_address + 1), bridge=f"quiltc{i}{token[:6]}")

    return Names(container_id, network(0), network(1))


async def wait_until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = DEADLINE) -> None:
    """Until check() holds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not so within {timeout} s: {what}"
        await asyncio.sleep(0.01)


def echo(sock: socket.socket, address: str) -> bool:
    """One ICMP echo to address from an ICMP datagram socket; whether its reply came."""
    sock.settimeout(2.0)
    sock.connect((address, 0))
    sock.send(struct.pack("!BBHHH", 8, 0, 0, 0, 7) + b"contract")
    try:
        reply = sock.recv(2048)
    except socket.timeout:
        return False
    return reply[0] == 0 and struct.unpack("!H", reply[6:8])[0] == 7


class KernelContract:
    """Subclasses provide the fixtures `kernel` (a NetworkKernel) and `probe` (a KernelProbe)."""

    @pytest.fixture
    async def names(self, kernel: NetworkKernel) -> AsyncIterator[Names]:
        names = make_names()
        yield names
        for name in (names.host(0), names.host(1), names.first.bridge, names.second.bridge):
            await kernel.run(kernel.delete_link, name)
        await kernel.run(kernel.remove_netns, names.path)

    async def test_it_offers_every_method_of_the_protocol(self, kernel: NetworkKernel) -> None:
        assert missing_methods(NetworkKernel, kernel) == []

    # --- bridges -----------------------------------------------------------------------------------

    async def test_ensure_bridge_makes_it_up_with_the_gateway_address_mac_and_alias(
            self, kernel: NetworkKernel, probe: KernelProbe, names: Names) -> None:
        net = names.first
        await kernel.run(kernel.ensure_bridge, net)
        bridge = (await probe.links(None))[net.bridge]
        assert bridge == LinkView(up=True, master=None, alias=f"quilt:network:{net.id}", mac=bridge_mac(net.id),
                                  addresses=frozenset({f"{net.gateway}/24"}))

    async def test_ensure_bridge_twice_leaves_one_bridge_with_one_address(
            self, kernel: NetworkKernel, probe: KernelProbe, names: Names) -> None:
        await kernel.run(kernel.ensure_bridge, names.first)
        await kernel.run(kernel.ensure_bridge, names.first)
        links = await probe.links(None)
        assert [n for n in links if n == names.first.bridge] == [names.first.bridge]
        assert links[names.first.bridge].addresses == {f"{names.first.gateway}/24"}

    async def test_a_bridges_subnet_is_among_the_host_routes_until_it_is_removed(
            self, kernel: NetworkKernel, names: Names) -> None:
        subnet = names.first.network
        assert subnet not in await kernel.run(kernel.host_routes)
        await kernel.run(kernel.ensure_bridge, names.first)
        assert subnet in await kernel.run(kernel.host_routes)
        await kernel.run(kernel.remove_bridge, names.first.bridge)
        assert subnet not in await kernel.run(kernel.host_routes)

    async def test_remove_bridge_deletes_it_and_again_is_a_no_op(self, kernel: NetworkKernel, probe: KernelProbe,
                                                                 names: Names) -> None:
        await kernel.run(kernel.ensure_bridge, names.first)
        await kernel.run(kernel.remove_bridge, names.first.bridge)
        assert names.first.bridge not in await probe.links(None)
        await kernel.run(kernel.remove_bridge, names.first.bridge)

    async def test_a_bridge_name_longer_than_an_interface_name_is_refused(
            self, kernel: NetworkKernel, probe: KernelProbe, names: Names) -> None:
        long = names.first.with_(bridge="quiltc" + "x" * IFNAMSIZ)
        with pytest.raises(OSError) as err:
            await kernel.run(kernel.ensure_bridge, long)
        assert err.value.errno == errno.ERANGE
        assert long.bridge not in await probe.links(None)

    # --- namespaces --------------------------------------------------------------------------------

    async def test_create_netns_pins_a_namespace_with_loopback_up(self, kernel: NetworkKernel, probe: KernelProbe,
                                                                  names: Names) -> None:
        await kernel.run(kernel.create_netns, names.path)
        assert names.path in await kernel.run(kernel.list_netns)
        links = await probe.links(names.path)
        assert set(links) == {"lo"}
        assert links["lo"].up and links["lo"].addresses == {"127.0.0.1/8"}

    async def test_create_netns_twice_keeps_the_first_namespace(self, kernel: NetworkKernel, probe: KernelProbe,
                                                                names: Names) -> None:
        await kernel.run(kernel.ensure_bridge, names.first)
        await kernel.run(kernel.create_netns, names.path)
        await kernel.run(kernel.attach, names.path, [names.plan(names.first, 0)])
        await kernel.run(kernel.create_netns, names.path)
        assert "eth0" in await probe.links(names.path)

    async def test_create_netns_in_a_missing_directory_fails(self, kernel: NetworkKernel, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            await kernel.run(kernel.create_netns, tmp_path / "missing" / "quilt-x")

    async def test_remove_netns_unlists_it_and_again_is_a_no_op(self, kernel: NetworkKernel, names: Names) -> None:
        await kernel.run(kernel.create_netns, names.path)
        await kernel.run(kernel.remove_netns, names.path)
        assert names.path not in await kernel.run(kernel.list_netns)
        await kernel.run(kernel.remove_netns, names.path)

    async def test_prepare_netns_gives_a_namespace_held_by_its_fd_only(self, kernel: NetworkKernel,
                                                                       probe: KernelProbe) -> None:
        before = await kernel.run(kernel.list_netns)
        fd = await kernel.run(kernel.prepare_netns)
        try:
            links = await probe.links(fd)
            assert set(links) == {"lo"} and links["lo"].up
            assert await kernel.run(kernel.list_netns) == before
        finally:
            os.close(fd)

    async def test_pin_netns_pins_a_prepared_namespace_that_takes_an_attach(
            self, kernel: NetworkKernel, probe: KernelProbe, names: Names) -> None:
        await kernel.run(kernel.ensure_bridge, names.first)
        fd = await kernel.run(kernel.prepare_netns)
        await kernel.run(kernel.pin_netns, fd, names.path)
        with pytest.raises(OSError) as err:
            os.fstat(fd)
        assert err.value.errno == errno.EBADF  # the kernel closed it: the pin holds the namespace now
        assert names.path in await kernel.run(kernel.list_netns)
        links = await probe.links(names.path)
        assert set(links) == {"lo"} and links["lo"].up  # prepared: a namespace just made has lo down
        await kernel.run(kernel.attach, names.path, [names.plan(names.first, 0)])
        assert await kernel.run(kernel.attached, names.path, [names.host(0)])

    async def test_pin_netns_where_one_is_pinned_fails_and_keeps_the_pinned_one(
            self, kernel: NetworkKernel, probe: KernelProbe, names: Names) -> None:
        await kernel.run(kernel.ensure_bridge, names.first)
        await kernel.run(kernel.create_netns, names.path)
        await kernel.run(kernel.attach, names.path, [names.plan(names.first, 0)])
        fd = await kernel.run(kernel.prepare_netns)
        with pytest.raises(FileExistsError):
            await kernel.run(kernel.pin_netns, fd, names.path)
        with pytest.raises(OSError) as err:
            os.fstat(fd)
        assert err.value.errno == errno.EBADF
        assert "eth0" in await probe.links(names.path)

    # --- attach ------------------------------------------------------------------------------------

    async def test_attach_puts_the_host_end_on_the_bridge_and_the_address_and_route_inside(
            self, kernel: NetworkKernel, probe: KernelProbe, names: Names) -> None:
        await kernel.run(kernel.ensure_bridge, names.first)
        await kernel.run(kernel.create_netns, names.path)
        plan = names.plan(names.first, 0)
        await kernel.run(kernel.attach, names.path, [plan])
        host = (await probe.links(None))[plan.host_ifname]
        assert (host.up, host.master, host.alias) == (True, names.first.bridge, link_alias(names.container_id))
        inside = await probe.links(names.path)
        assert set(inside) == {"lo", "eth0"}
        assert inside["eth0"].up and inside["eth0"].addresses == {f"{plan.address}/24"}
        assert await probe.default_gateway(names.path) == names.first.gateway
        assert await kernel.run(kernel.attached, names.path, [plan.host_ifname])

    async def test_attach_to_two_networks_routes_by_the_first_only(self, kernel: NetworkKernel, probe: KernelProbe,
                                                                   names: Names) -> None:
        for net in (names.first, names.second):
            await kernel.run(kernel.ensure_bridge, net)
        await kernel.run(kernel.create_netns, names.path)
        plans = [names.plan(names.first, 0), names.plan(names.second, 1)]
        await kernel.run(kernel.attach, names.path, plans)
        inside = await probe.links(names.path)
        assert inside["eth1"].addresses == {f"{plans[1].address}/24"}
        assert (await probe.links(None))[plans[1].host_ifname].master == names.second.bridge
        assert await probe.default_gateway(names.path) == names.first.gateway
        assert await kernel.run(kernel.attached, names.path, [p.host_ifname for p in plans])

    async def test_attached_is_false_before_the_attach_and_once_the_bridge_is_gone(
            self, kernel: NetworkKernel, names: Names) -> None:
        plan = names.plan(names.first, 0)
        assert not await kernel.run(kernel.attached, names.path, [plan.host_ifname])
        await kernel.run(kernel.ensure_bridge, names.first)
        await kernel.run(kernel.create_netns, names.path)
        assert not await kernel.run(kernel.attached, names.path, [plan.host_ifname])
        await kernel.run(kernel.attach, names.path, [plan])
        await kernel.run(kernel.remove_bridge, names.first.bridge)
        assert not await kernel.run(kernel.attached, names.path, [plan.host_ifname])

    async def test_attach_to_a_missing_bridge_fails_with_enodev(self, kernel: NetworkKernel, probe: KernelProbe,
                                                                names: Names) -> None:
        await kernel.run(kernel.create_netns, names.path)
        with pytest.raises(OSError) as err:
            await kernel.run(kernel.attach, names.path, [names.plan(names.first, 0)])
        assert err.value.errno == errno.ENODEV
        assert names.host(0) not in await probe.links(None)

    async def test_attach_into_a_missing_namespace_fails_with_enoent(self, kernel: NetworkKernel,
                                                                     probe: KernelProbe, names: Names) -> None:
        await kernel.run(kernel.ensure_bridge, names.first)
        with pytest.raises(FileNotFoundError):
            await kernel.run(kernel.attach, names.path, [names.plan(names.first, 0)])
        assert names.host(0) not in await probe.links(None)

    async def test_attach_again_fails_with_eexist_and_repair_remakes_it(self, kernel: NetworkKernel,
                                                                        probe: KernelProbe, names: Names) -> None:
        await kernel.run(kernel.ensure_bridge, names.first)
        await kernel.run(kernel.create_netns, names.path)
        await kernel.run(kernel.attach, names.path, [names.plan(names.first, 0)])
        with pytest.raises(OSError) as err:
            await kernel.run(kernel.attach, names.path, [names.plan(names.first, 0, address_index=3)])
        assert err.value.errno == errno.EEXIST
        await kernel.run(kernel.attach, names.path, [names.plan(names.first, 0, address_index=3)], True)
        inside = await probe.links(names.path)
        assert set(inside) == {"lo", "eth0"}
        assert inside["eth0"].addresses == {f"{names.first.network.network_address + 3}/24"}
        assert await probe.default_gateway(names.path) == names.first.gateway

    async def test_attach_with_a_host_ifname_longer_than_an_interface_name_fails_with_erange(
            self, kernel: NetworkKernel, probe: KernelProbe, names: Names) -> None:
        await kernel.run(kernel.ensure_bridge, names.first)
        await kernel.run(kernel.create_netns, names.path)
        plan = replace(names.plan(names.first, 0), host_ifname=names.host(0) + "x")
        with pytest.raises(OSError) as err:
            await kernel.run(kernel.attach, names.path, [plan])
        assert err.value.errno == errno.ERANGE
        assert set(await probe.links(names.path)) == {"lo"}

    async def test_attach_with_an_address_that_is_none_fails_and_detach_clears_what_it_made(
            self, kernel: NetworkKernel, probe: KernelProbe, names: Names) -> None:
        await kernel.run(kernel.ensure_bridge, names.first)
        await kernel.run(kernel.create_netns, names.path)
        with pytest.raises(OSError):
            await kernel.run(kernel.attach, names.path, [replace(names.plan(names.first, 0), address="198.18.300.2")])
        await kernel.run(kernel.detach, names.path, [names.host(0)])
        assert names.host(0) not in await probe.links(None)

    async def test_attach_with_two_default_routes_fails_with_eexist(self, kernel: NetworkKernel, names: Names) -> None:
        for net in (names.first, names.second):
            await kernel.run(kernel.ensure_bridge, net)
        await kernel.run(kernel.create_netns, names.path)
        with pytest.raises(OSError) as err:
            await kernel.run(kernel.attach, names.path, [names.plan(names.first, 0),
                                                         names.plan(names.second, 1, default_route=True)])
        assert err.value.errno == errno.EEXIST

    # --- detach and links --------------------------------------------------------------------------

    async def test_detach_removes_the_veths_and_the_namespace(self, kernel: NetworkKernel, probe: KernelProbe,
                                                              names: Names) -> None:
        await kernel.run(kernel.ensure_bridge, names.first)
        await kernel.run(kernel.create_netns, names.path)
        await kernel.run(kernel.attach, names.path, [names.plan(names.first, 0)])
        await kernel.run(kernel.detach, names.path, [names.host(0)])
        assert names.host(0) not in await probe.links(None)
        assert names.path not in await kernel.run(kernel.list_netns)
        assert names.first.bridge in await probe.links(None)  # the bridge is the network's, not the container's

    async def test_detach_of_what_is_gone_is_a_no_op(self, kernel: NetworkKernel, names: Names) -> None:
        await kernel.run(kernel.detach, names.path, [names.host(0)])
        assert names.path not in await kernel.run(kernel.list_netns)

    async def test_removing_a_namespace_takes_its_veths_with_it(self, kernel: NetworkKernel, probe: KernelProbe,
                                                                names: Names) -> None:
        await kernel.run(kernel.ensure_bridge, names.first)
        await kernel.run(kernel.create_netns, names.path)
        await kernel.run(kernel.attach, names.path, [names.plan(names.first, 0)])
        await kernel.run(kernel.remove_netns, names.path)

        async def gone() -> bool:
            return names.host(0) not in await probe.links(None)
        await wait_until(f"{names.host(0)} deleted with its peer's namespace", gone)

    async def test_delete_link_removes_a_veth_with_its_peer_and_again_is_a_no_op(
            self, kernel: NetworkKernel, probe: KernelProbe, names: Names) -> None:
        await kernel.run(kernel.ensure_bridge, names.first)
        await kernel.run(kernel.create_netns, names.path)
        await kernel.run(kernel.attach, names.path, [names.plan(names.first, 0)])
        await kernel.run(kernel.delete_link, names.host(0))
        assert names.host(0) not in await probe.links(None)
        assert set(await probe.links(names.path)) == {"lo"}
        await kernel.run(kernel.delete_link, names.host(0))

    async def test_owned_links_lists_quilts_bridges_and_veths_by_their_alias(
            self, kernel: NetworkKernel, names: Names) -> None:
        await kernel.run(kernel.ensure_bridge, names.first)
        await kernel.run(kernel.ensure_bridge, names.second)
        await kernel.run(kernel.create_netns, names.path)
        await kernel.run(kernel.attach, names.path, [names.plan(names.first, 0),
                                                     names.plan(names.second, 1, alias="")])
        owned = dict(await kernel.run(kernel.owned_links))
        assert owned[names.first.bridge] == f"quilt:network:{names.first.id}"
        assert owned[names.host(0)] == link_alias(names.container_id)
        assert names.host(1) not in owned  # a name like Quilt's, but no alias of Quilt's

    # --- sysctls and sockets -----------------------------------------------------------------------

    async def test_forwarding_returns_the_value_before_setting_it(self, kernel: NetworkKernel) -> None:
        before = await kernel.run(kernel.forwarding)
        try:
            assert await kernel.run(kernel.forwarding, "1") == before
            assert await kernel.run(kernel.forwarding) == "1"
            assert await kernel.run(kernel.forwarding, "0") == "1"
            assert await kernel.run(kernel.forwarding) == "0"
        finally:
            await kernel.run(kernel.forwarding, before)

    async def test_an_icmp_socket_in_a_namespace_gets_echo_replies(self, kernel: NetworkKernel,
                                                                   names: Names) -> None:
        await kernel.run(kernel.create_netns, names.path)
        sock = await kernel.run(kernel.icmp_socket, names.path)
        with sock:
            assert (sock.family, sock.type, sock.proto) == (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
            assert echo(sock, "127.0.0.1")

    async def test_an_icmp_socket_in_a_missing_namespace_fails_with_enoent(self, kernel: NetworkKernel,
                                                                           names: Names) -> None:
        with pytest.raises(FileNotFoundError):
            await kernel.run(kernel.icmp_socket, names.path)
