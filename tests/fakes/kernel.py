"""The network kernel in memory: bridges, veth pairs, addresses, default routes and namespaces as records.

What the kernel refuses, the fake refuses with the same errno (an ifname taken: EEXIST; longer than IFNAMSIZ
allows: ERANGE; a plan's bridge missing: ENODEV; a namespace path missing: FileNotFoundError), in the same order
of steps as bridge.Kernel, so a failure leaves what the real one would leave. Namespaces made ahead are held by
a real fd (an eventfd: something the caller can close) standing for the namespace.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from quilt_agent.helper.namespaces import loopback_up
from quilt_agent.helper.syscalls import CLONE_NEWNET, unshare
from quilt_agent.network import netns
from quilt_agent.network.bridge import PING_GROUP_RANGE, LinkPlan, bridge_mac
from quilt_agent.network.model import BRIDGE_PREFIX, LINK_ALIAS_PREFIX, VETH_PREFIX, Network

T = TypeVar("T")
IFNAMSIZ = 16  # with the NUL


@dataclass
class FakeLink:
    kind: str  # loopback, bridge, veth
    up: bool = False
    alias: str = ""
    mac: str = ""
    master: str | None = None
    addresses: set[tuple[str, int]] = field(default_factory=set)  # (address, prefixlen)
    peer: tuple[FakeNamespace, str] | None = None  # a veth's other end


@dataclass(eq=False)
class FakeNamespace:
    links: dict[str, FakeLink] = field(default_factory=dict)
    default_gateway: str | None = None
    sysctls: dict[str, str] = field(default_factory=dict)

    @classmethod
    def new(cls) -> FakeNamespace:
        """What a new namespace has once lo is up, as Kernel makes them."""
        return cls(links={"lo": FakeLink("loopback", up=True, mac="00:00:00:00:00:00",
                                         addresses={("127.0.0.1", 8)})})

    def add(self, name: str, link: FakeLink) -> None:
        if len(name) >= IFNAMSIZ:
            raise OSError(errno.ERANGE, os.strerror(errno.ERANGE))
        if name in self.links:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        self.links[name] = link

    def delete(self, name: str) -> None:
        link = self.links.pop(name)
        if link.kind == "bridge":
            for port in self.links.values():
                if port.master == name:
                    port.master = None
        if link.peer is not None:
            space, peer = link.peer
            space.links.pop(peer, None)
            if space.default_gateway is not None and not space.routable(space.default_gateway):
                space.default_gateway = None

    def routable(self, gateway: str) -> bool:
        address = ipaddress.IPv4Address(gateway)
        return any(link.up and address in ipaddress.IPv4Network(f"{a}/{p}", strict=False)
                   for link in self.links.values() for a, p in link.addresses)


class FakeKernel:
    """A NetworkKernel whose host namespace, pinned namespaces and namespaces held by fd are records."""

    def __init__(self, forwarding: str = "0", routes: list[ipaddress.IPv4Network] | None = None) -> None:
        self.host = FakeNamespace.new()
        self.host.sysctls["net.ipv4.ip_forward"] = forwarding
        self.pinned: dict[Path, FakeNamespace] = {}
        self.held: dict[int, FakeNamespace] = {}  # by the fd prepare_netns returned
        self._routes = list(routes or ())  # the host's own, besides those of its addresses
        self.warmed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    def close(self) -> None:
        for fd in self.held:
            try:
                os.close(fd)
            except OSError:
                pass  # closed by its taker, as it should be
        self.held.clear()

    def warm(self) -> None:
        self.warmed = True

    def ensure_bridge(self, network: Network) -> None:
        bridge = self.host.links.get(network.bridge)
        if bridge is None:
            bridge = FakeLink("bridge", mac=bridge_mac(network.id), alias=f"{LINK_ALIAS_PREFIX}network:{network.id}")
            self.host.add(network.bridge, bridge)
        bridge.addresses.add((network.gateway, network.prefixlen))
        bridge.up = True

    def remove_bridge(self, bridge: str) -> None:
        if bridge in self.host.links:
            self.host.delete(bridge)

    def forwarding(self, value: str | None = None) -> str:
        old = self.host.sysctls["net.ipv4.ip_forward"]
        if value is not None:
            self.host.sysctls["net.ipv4.ip_forward"] = value
        return old

    def create_netns(self, path: Path) -> None:
        if path in self.pinned:
            return
        if path.parent != netns.NETNS_DIR and not path.parent.is_dir():  # Kernel makes /run/netns itself
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        self.pinned[path] = FakeNamespace.new()

    def prepare_netns(self) -> int:
        fd = os.eventfd(0, os.EFD_CLOEXEC)
        self.held[fd] = FakeNamespace.new()
        return fd

    def pin_netns(self, fd: int, path: Path) -> None:
        try:
            space = self.held.pop(fd, None)
            if space is None:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            if path.parent != netns.NETNS_DIR and not path.parent.is_dir():
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
            if path in self.pinned:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
            self.pinned[path] = space
        finally:
            os.close(fd)

    def _pinned(self, path: str | Path) -> FakeNamespace:
        space = self.pinned.get(Path(path))
        if space is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        return space

    def attach(self, path: Path, plans: list[LinkPlan], repair: bool = False) -> None:
        inside = self._pinned(path)
        for plan in plans:  # the host ends first, then the inside: the real one's order
            if repair:
                self.delete_link(plan.host_ifname)
            bridge = self.host.links.get(plan.bridge)
            if bridge is None or bridge.kind != "bridge":
                raise OSError(errno.ENODEV, f"bridge {plan.bridge} is missing")
            host = FakeLink("veth", up=True, master=plan.bridge, peer=(inside, plan.ifname))
            self.host.add(plan.host_ifname, host)
            try:
                inside.add(plan.ifname, FakeLink("veth", peer=(self.host, plan.host_ifname)))
            except OSError:
                del self.host.links[plan.host_ifname]  # one request makes the pair: neither end is left
                raise
            host.alias = plan.alias
        for plan in plans:
            link = inside.links[plan.ifname]
            link.up = True
            try:
                address = ipaddress.IPv4Address(plan.address)
            except ValueError:
                raise OSError("illegal IP address string passed to inet_pton") from None  # pyroute2's words
            if (str(address), plan.prefixlen) in link.addresses:
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
            link.addresses.add((str(address), plan.prefixlen))
            if plan.default_route:
                if inside.default_gateway is not None:
                    raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
                if not inside.routable(plan.gateway):
                    raise OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))
                inside.default_gateway = plan.gateway

    def attached(self, path: Path, host_ifnames: list[str]) -> bool:
        if Path(path) not in self.pinned:
            return False
        links = [self.host.links.get(name) for name in host_ifnames]
        return all(link is not None and link.master is not None and link.up for link in links)

    def detach(self, path: Path, host_ifnames: list[str]) -> None:
        for name in host_ifnames:
            self.delete_link(name)
        self.remove_netns(path)

    def owned_links(self) -> list[tuple[str, str]]:
        return [(name, link.alias) for name, link in self.host.links.items()
                if name.startswith((VETH_PREFIX, BRIDGE_PREFIX)) and link.alias.startswith(LINK_ALIAS_PREFIX)]

    def delete_link(self, name: str) -> None:
        if name in self.host.links:
            self.host.delete(name)

    def list_netns(self) -> list[Path]:
        return sorted(p for p in self.pinned if p.parent == netns.NETNS_DIR and p.name.startswith(netns.NAME_PREFIX))

    def remove_netns(self, path: Path) -> None:
        space = self.pinned.pop(Path(path), None)
        if space is None:
            return
        for name, link in list(space.links.items()):  # an unused namespace ends, and its veth pairs with it
            if link.peer is not None and name in space.links:
                space.delete(name)

    def host_routes(self) -> list[ipaddress.IPv4Network]:
        """The routes the kernel makes of the host's addresses (their subnet, and the local table's address
        and broadcast) and those it was given."""
        routes = list(self._routes)
        for link in self.host.links.values():
            if not link.up:
                continue
            for address, prefixlen in sorted(link.addresses):
                subnet = ipaddress.IPv4Network(f"{address}/{prefixlen}", strict=False)
                routes.append(subnet)
                routes.append(ipaddress.IPv4Network(f"{address}/32"))
                if prefixlen < 31:
                    routes.append(ipaddress.IPv4Network(f"{subnet.broadcast_address}/32"))
        return routes

    def icmp_socket(self, path: str | Path | None) -> socket.socket:
        if path is not None:
            self._pinned(path)
        return _loopback_icmp_socket()


def _loopback_icmp_socket() -> socket.socket:
    """A real ICMP echo socket (its caller does I/O on it), made in a network namespace of its own: the fake's
    namespaces carry no packets, and the test's own may allow no unprivileged ping. Only 127.0.0.1 answers in
    it; it goes away with the socket. The namespace is entered by a thread that ends right after (needs root)."""
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            unshare(CLONE_NEWNET)
            loopback_up()
            Path("/proc/sys/net/ipv4/ping_group_range").write_text(PING_GROUP_RANGE)  # this namespace's
            made.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP))
        except BaseException as e:  # noqa: BLE001 - raised again by the caller
            made.append(e)

    thread = threading.Thread(target=make, name="fake-netns")
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]
