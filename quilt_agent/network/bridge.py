"""The kernel side of networks: bridges, veth pairs, addresses, routes, sysctls (pyroute2).

pyroute2 is blocking, and a netlink socket belongs to the namespace of the thread that opened it: every call
here runs in one worker thread (Kernel.run), never in the event loop, one at a time. The thread enters a
container's namespace only inside Namespaces.entered and always comes back.

Measured in the test host (2 cores): a namespace made ahead (unshare, lo up, a sysctl) 0.9 ms; an attach
(veth pair made with its peer in the namespace, enslaved and up in one request 1.0 ms, its alias, the peer's
address and route 1.4 ms) 3.3 ms; moving a made veth between namespaces instead would cost 22 ms. Deleting a
veth takes 20-35 ms (the kernel waits for RCU grace periods): removal is the slow side.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar

from quilt_agent.helper.namespaces import loopback_up
from quilt_agent.network.model import BRIDGE_PREFIX, LINK_ALIAS_PREFIX, VETH_PREFIX, Network
from quilt_agent.network import netns
from quilt_agent.network.netns import Namespaces

if TYPE_CHECKING:
    from pyroute2 import IPRoute

log = logging.getLogger("quilt.network")
T = TypeVar("T")


def _iproute() -> IPRoute:
    """pyroute2 is imported by the worker on its first job, not at agent start: `import pyroute2` takes ~60 ms
    (it loads its ndb and ipdb too), which every agent start and restart would pay."""
    from pyroute2 import IPRoute
    return IPRoute()

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
# Every group may open ICMP echo sockets in the container's namespace, so busybox ping needs no CAP_NET_RAW
# (Podman sets the same range).
PING_GROUP_RANGE = "0 2147483647"


@dataclass(frozen=True)
class LinkPlan:
    """One interface to make for a container: host_ifname on bridge, ifname with address inside."""

    host_ifname: str
    ifname: str
    bridge: str
    address: str
    prefixlen: int
    gateway: str
    default_route: bool
    alias: str  # marks the host end as Quilt's


class NetworkKernel(Protocol):
    """What the networks (core.py) ask of the kernel. The methods but run() block: core.py calls each through
    run(fn, *args), which runs it where the kernel's sockets live (Kernel's worker thread) and returns its
    result. A refusal by the kernel is an OSError with its errno (the ifname taken: EEXIST; a plan's bridge
    missing: ENODEV; a namespace path missing: FileNotFoundError). Kernel is the real one; tests/fakes/kernel.py
    keeps records in memory, and tests/contract/kernel.py holds both to the same behaviour."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T: ...

    def warm(self) -> None:
        """Get ready for the first container (the real one imports pyroute2 and opens its socket)."""

    def ensure_bridge(self, network: Network) -> None:
        """The network's bridge, up, with its gateway address, MAC and alias; what exists is kept."""

    def remove_bridge(self, bridge: str) -> None:
        """Delete the bridge (its ports stay, on no bridge); a missing one is no error."""

    def forwarding(self, value: str | None = None) -> str:
        """net.ipv4.ip_forward before; set to value when one is given."""

    def create_netns(self, path: Path) -> None:
        """A namespace pinned at path, loopback up; one pinned there already is kept."""

    def prepare_netns(self) -> int:
        """A namespace made ahead, loopback up, held by the returned fd only (the caller closes it, or gives it
        to pin_netns)."""

    def pin_netns(self, fd: int, path: Path) -> None:
        """Pin the namespace held by fd (prepare_netns's) at path, and close fd, pinned or not. Something at path
        already: FileExistsError, the namespace there kept."""

    def attach(self, path: Path, plans: list[LinkPlan], repair: bool = False) -> None:
        """Each plan's veth pair: host end up on its bridge with its alias, peer up inside with its address, the
        default route by the plan that asks for it. repair: first delete host ends left by a former attach."""

    def attached(self, path: Path, host_ifnames: list[str]) -> bool:
        """Whether the namespace is pinned and every host end is up on a bridge."""

    def detach(self, path: Path, host_ifnames: list[str]) -> None:
        """Delete the veth pairs and unpin the namespace; what is gone already is no error."""

    def owned_links(self) -> list[tuple[str, str]]:
        """(name, alias) of the host's bridges and veth host ends named and aliased as Quilt's."""

    def delete_link(self, name: str) -> None:
        """Delete the link (a veth with its peer); a missing one is no error."""

    def list_netns(self) -> list[Path]:
        """The pinned namespaces of Quilt's under /run/netns."""

    def remove_netns(self, path: Path) -> None:
        """Unpin the namespace (its veths go with it); a missing one is no error."""

    def host_routes(self) -> list[ipaddress.IPv4Network]:
        """The destinations of the host's IPv4 routes."""

    def icmp_socket(self, path: str | Path | None) -> socket.socket:
        """An ICMP echo socket in the namespace at path (None: the host's)."""


def _sysctl(path: Path, value: str | None = None) -> str:
    old = path.read_text().strip()
    if value is not None and old != value:
        path.write_text(value)
    return old


def bridge_mac(network_id: str) -> str:
    """A fixed, locally administered MAC: else a bridge takes its ports' lowest, and the containers' ARP
    caches would hold a stale gateway each time a container comes or goes."""
    return "02:" + ":".join(network_id[i:i + 2] for i in range(0, 10, 2))


def _os_errors(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args), with pyroute2's NetlinkError told as the OSError of its errno: callers know the kernel's
    refusals by errno, not by the library that carried them."""
    try:
        return fn(*args)
    except Exception as e:
        exceptions = sys.modules.get("pyroute2.netlink.exceptions")  # imported already if it raised
        if exceptions is not None and isinstance(e, exceptions.NetlinkError) and e.code:
            raise OSError(e.code, os.strerror(e.code)) from e
        raise


class Kernel:
    """The network worker: one thread that owns every netlink socket."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quilt-net")
        self._ipr: IPRoute | None = None
        self._ns: Namespaces | None = None
        self._bridges: dict[str, int] = {}  # bridge name -> index, so an attach need not look it up

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, _os_errors, fn, *args)

    def close(self) -> None:
        self._executor.submit(self._close).result()
        self._executor.shutdown()

    def _close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    # --- in the worker thread only -----------------------------------------------------------------

    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = _iproute()
        return self._ipr

    def warm(self) -> None:
        """Import pyroute2 and open the host's netlink socket now (the agent is idle after its start), not on
        the first container's critical path."""
        _ = self.ipr

    @property
    def ns(self) -> Namespaces:
        if self._ns is None:
            self._ns = Namespaces()
        return self._ns

    def _index(self, ifname: str) -> int | None:
        found = self.ipr.link_lookup(ifname=ifname)
        return found[0] if found else None

    def ensure_bridge(self, network: Network) -> None:
        """The network's bridge with its gateway address, up; route_localnet on it so that DNAT from the host's
        127.0.0.1 to a container may leave through it (then masqueraded)."""
        index = self._index(network.bridge)
        if index is None:
            self.ipr.link("add", ifname=network.bridge, kind="bridge", address=bridge_mac(network.id))
            index = self._index(network.bridge)
            self.ipr.link("set", index=index, ifalias=f"{LINK_ALIAS_PREFIX}network:{network.id}")
        wanted = (network.gateway, network.prefixlen)
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in self.ipr.get_addr(index=index, family=socket.AF_INET)}
        if wanted not in have:
            self.ipr.addr("add", index=index, address=network.gateway, prefixlen=network.prefixlen)
        self.ipr.link("set", index=index, state="up")
        self._bridges[network.bridge] = index
        _sysctl(Path(f"/proc/sys/net/ipv4/conf/{network.bridge}/route_localnet"), "1")

    def remove_bridge(self, bridge: str) -> None:
        self._bridges.pop(bridge, None)
        index = self._index(bridge)
        if index is not None:
            self.ipr.link("del", index=index)

    def forwarding(self, value: str | None = None) -> str:
        """net.ipv4.ip_forward; set it when value is given; returns the value before."""
        return _sysctl(IP_FORWARD, value)

    @staticmethod
    def _inside_new_netns() -> None:
        """What every container namespace gets: lo up, unprivileged ping allowed."""
        loopback_up()  # as the container's init does: one ioctl, cheaper than netlink for one flag
        _sysctl(Path("/proc/sys/net/ipv4/ping_group_range"), PING_GROUP_RANGE)

    def create_netns(self, path: Path) -> None:
        """A container's namespace pinned at path."""
        if self.ns.exists(path):
            return
        self.ns.remove(path)  # an empty mount point left by a crash
        self.ns.create(path)
        with self.ns.entered(path):
            self._inside_new_netns()

    def prepare_netns(self) -> int:
        """A container namespace made ahead (for the pool), held by the returned fd only."""
        fd = self.ns.new()
        try:
            self._inside_new_netns()
        except BaseException:
            os.close(fd)
            raise
        finally:
            self.ns.leave()
        return fd

    def pin_netns(self, fd: int, path: Path) -> None:
        """A pool's namespace given to a container: a file and a bind mount, no netlink. The fd is closed here,
        in the thread that pins: a caller cancelled meanwhile cannot close it under the mount."""
        try:
            netns.pin(fd, path)
        finally:
            os.close(fd)

    def attach(self, path: Path, plans: list[LinkPlan], repair: bool = False) -> None:
        """Each plan's veth pair: host end up on its bridge, the other end in the namespace with its address, and
        the default route via the first network's gateway. repair: first delete what a crashed attach left."""
        nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        peers = []
        try:
            for plan in plans:
                if repair:
                    self.delete_link(plan.host_ifname)
                # One request makes the pair with the peer straight in the container's namespace (moving it
                # there afterwards costs ~20 ms more: the kernel re-registers the device), enslaved and up.
                self.ipr.link("add", ifname=plan.host_ifname, kind="veth", master=self._bridge_index(plan.bridge),
                              state="up", peer={"ifname": plan.ifname, "net_ns_fd": nsfd})
                (link,) = self.ipr.link("get", ifname=plan.host_ifname)
                self.ipr.link("set", index=link["index"], ifalias=plan.alias)
                peers.append(link.get_attr("IFLA_LINK"))  # the peer's index, in the container's namespace
        finally:
            os.close(nsfd)
        with self.ns.entered(path):
            with _iproute() as inner:
                for plan, index in zip(plans, peers):
                    inner.link("set", index=index, state="up")
                    inner.addr("add", index=index, address=plan.address, prefixlen=plan.prefixlen)
                    if plan.default_route:
                        inner.route("add", dst="0.0.0.0/0", gateway=plan.gateway)

    def _bridge_index(self, bridge: str) -> int:
        index = self._bridges.get(bridge) or self._index(bridge)
        if index is None:
            raise OSError(errno.ENODEV, f"bridge {bridge} is missing")
        self._bridges[bridge] = index
        return index

    def attached(self, path: Path, host_ifnames: list[str]) -> bool:
        """Whether an attach finished: the namespace is pinned and every host end is up on a bridge."""
        if not self.ns.exists(path):
            return False
        for name in host_ifnames:
            links = self.ipr.get_links(ifname=name) if self._index(name) is not None else []
            if not links or not links[0].get_attr("IFLA_MASTER") or not links[0]["flags"] & 1:
                return False
        return True

    def detach(self, path: Path, host_ifnames: list[str]) -> None:
        """Delete the veth pairs (now, not when the kernel gets round to the namespace) and the namespace."""
        for name in host_ifnames:
            index = self._index(name)
            if index is not None:
                from pyroute2.netlink.exceptions import NetlinkError
                try:
                    self.ipr.link("del", index=index)
                except NetlinkError as e:
                    if e.code != errno.ENODEV:
                        raise
        self.ns.remove(path)

    @staticmethod
    def owned_links() -> list[tuple[str, str]]:
        """(name, alias) of every link Quilt made in the host's namespace: veth host ends and bridges. Read from
        /sys/class/net: at agent start, with nothing to remove, pyroute2 need not even be imported."""
        found = []
        for name in os.listdir("/sys/class/net"):
            if not name.startswith((VETH_PREFIX, BRIDGE_PREFIX)):
                continue
            try:
                alias = Path(f"/sys/class/net/{name}/ifalias").read_text().strip()
            except OSError:
                continue  # gone meanwhile
            if alias.startswith(LINK_ALIAS_PREFIX):
                found.append((name, alias))
        return found

    def delete_link(self, name: str) -> None:
        index = self._index(name)
        if index is not None:
            self._bridges = {b: i for b, i in self._bridges.items() if i != index}
            self.ipr.link("del", index=index)

    def list_netns(self) -> list[Path]:
        return self.ns.list()

    def remove_netns(self, path: Path) -> None:
        self.ns.remove(path)

    def host_routes(self) -> list[ipaddress.IPv4Network]:
        """The host's IPv4 routes' destinations (a new network's subnet must not overlap them)."""
        nets = []
        for route in self.ipr.get_routes(family=socket.AF_INET):
            dst = route.get_attr("RTA_DST")
            if dst and route["dst_len"]:
                nets.append(ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False))
        return nets

    def icmp_socket(self, path: str | Path | None) -> socket.socket:
        """An ICMP echo socket in the namespace at path (None: the host's); usable from any thread."""
        if path is None:
            return socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        with self.ns.entered(path):
            return socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
