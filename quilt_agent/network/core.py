"""Networks: what the manager calls to give containers their networks. No D-Bus here.

A container on named networks gets, from its create until its removal:
  - an address on each network (ipam, in memory at once, in the store right after the container's row),
  - its names in each network's name server (at once: a create that returned is resolvable),
  - a network namespace pinned at /run/netns/quilt-ID with one veth pair per network (made by the network
    worker thread right after the create, while the caller goes on; a start waits for it before Go),
  - its published ports in the table `inet quilt`.
A network's bridge, name server and rules are set up with its first container and taken down LINGER seconds
after its last one left (at once when the network is removed): create-remove cycles do not rebuild them.

Modes: `none` keeps today's loopback-only namespace, made by the container's init itself; `host` shares the
host's namespace (the init does not unshare one); `container:ID` joins another container's namespace.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Awaitable, Protocol

from quilt_agent.config import Paths
from quilt_agent.errors import (
    AccessDenied, ContainerFailed, InvalidArgument, QuiltError, NetworkInUse, NetworkNameInUse, NoSuchNetwork, NotRunning, PortInUse,
)
from quilt_agent.containers import ContainerTable
from quilt_agent.model import Container, State, new_id, now_usec
from quilt_agent.network import config as network_config
from quilt_agent.network import dns, files, firewall, netns
from quilt_agent.network.bridge import Kernel, LinkPlan, NetworkKernel
from quilt_agent.network.ipam import Allocator
from quilt_agent.network.model import (
    CONTAINER_PREFIX, DEFAULT_NETWORK, HOST, NONE, Attachment, Network, PortMapping, bridge_name, link_alias,
    parse_gateway, parse_subnet, validate_network_name,
)
from quilt_agent.network.options import parse_network_options, ports_of
from quilt_agent.store import StateStore

log = logging.getLogger("quilt.network")

LINGER = 30.0  # seconds a network's bridge, name server and rules outlive its last container
# Namespaces made ahead (lo up, ping allowed), held by fd only: a create takes one at once instead of waiting
# for the worker (unshare, bind mount, thread hops: ~1.5 ms on the start's path). They vanish with the agent.
POOL_SIZE = 4
MAX_PING_COUNT = 100
PING_TIMEOUT = 1.0
# Where Quilt notes that it switched net.ipv4.ip_forward on (and from what), to switch it back when no
# network needs it. /run: the kernel setting does not outlive a reboot either.
FORWARD_NOTE = Path("/run/quilt/ip_forward")
AUTO_SUBNET_BASE = ipaddress.IPv4Network("10.89.0.0/16")  # new networks get the first free /24 in it

class NetworkListener(Protocol):
    def network_added(self, network: Network) -> None: ...

    def network_changed(self, network: Network) -> None: ...

    def network_removed(self, network: Network) -> None: ...


@dataclass(frozen=True)
class LaunchNetwork:
    """What the container's init needs: a namespace to join ("" = none of Quilt's) and files to bind."""

    netns: str
    files: tuple[tuple[str, str], ...]


@dataclass
class _Member:
    """A container as the networks know it."""

    name: str
    aliases: tuple[str, ...]
    mode: str  # "" (named networks), none, host or container:ID
    attachments: list[Attachment] = field(default_factory=list)
    ports: list[PortMapping] = field(default_factory=list)
    netns_ready: asyncio.Future[None] | None = None  # the namespace is pinned
    links_ready: asyncio.Future[None] | None = None  # veths, addresses, route, rules
    holds: list[socket.socket] = field(default_factory=list)  # its host ports, bound by the agent (hold_ports)


def hold_ports(ports: list[PortMapping]) -> list[socket.socket]:
    """Bind each published host port in the host's network namespace and keep it bound, as Podman does: a host
    process listening there already is PortInUse, and none can take the port while the container has it.
    The sockets never listen: the rules forward the port's traffic to the container before any socket would.
    A host port 0 is bound to a free one the kernel chooses: the socket's own address says which (in order)."""
    held: list[socket.socket] = []
    try:
        for p in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if p.protocol == "tcp" else socket.SOCK_DGRAM)
            held.append(sock)
            sock.set_inheritable(False)
            try:
                sock.bind((p.host_ip or "0.0.0.0", p.host_port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise PortInUse(f"Host port {p.host_port}/{p.protocol} is in use by a process of the host") from None
                raise InvalidArgument(f"Host port {p}: {e.strerror}") from None
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held


def mode_of(networks: tuple[str, ...]) -> str:
    first = networks[0] if networks else NONE
    return first if first in (NONE, HOST) or first.startswith(CONTAINER_PREFIX) else ""


class Networks:
    def __init__(self, paths: Paths, store: StateStore, containers: ContainerTable, kernel: NetworkKernel | None = None,
                 config: network_config.NetworkConfig | None = None, rules: firewall.Firewall | None = None,
                 forward_note: Path = FORWARD_NOTE) -> None:
        self._paths = paths
        self._store = store
        self._containers = containers  # read only: the manager's, to resolve container:NAME and ping targets
        self.kernel: NetworkKernel = kernel or Kernel()
        self.config = config or network_config.load()
        self._networks: dict[str, Network] = {}
        self._members: dict[str, _Member] = {}
        self._ipam = Allocator()
        self._names: dict[str, dict[str, list[str]]] = {}  # network id -> name -> addresses
        self._reverse: dict[str, dict[str, str]] = {}  # network id -> address -> name
        self._active: set[str] = set()  # networks whose bridge, name server and rules are up
        self._responders: dict[str, dns.Responder] = {}
        self._linger: dict[str, asyncio.TimerHandle] = {}
        self._network_locks: dict[str, asyncio.Lock] = {}
        self._listeners: list[NetworkListener] = []
        self._firewall = rules or firewall.Firewall()
        self._forward_note = forward_note
        self._upstreams = dns.Upstreams(self.config.dns_servers, self._gateways)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool: list[int] = []
        self._filling = False

    def subscribe(self, listener: NetworkListener) -> None:
        self._listeners.append(listener)

    # --- reads -----------------------------------------------------------------------------------

    def list(self) -> list[Network]:
        return sorted(self._networks.values(), key=lambda n: (n.name != DEFAULT_NETWORK, n.created_at, n.name))

    def get(self, name_or_id: str) -> Network:
        for n in self._networks.values():
            if n.name == name_or_id or n.id == name_or_id:
                return n
        if len(name_or_id) >= 3:
            matches = [n for n in self._networks.values() if n.id.startswith(name_or_id)]
            if len(matches) == 1:
                return matches[0]
        raise NoSuchNetwork(name_or_id)

    def named_networks(self, networks: tuple[str, ...]) -> tuple[Network, ...]:
        """The networks a container's networks option names (none for a mode: none, host, container:NAME)."""
        return () if mode_of(networks) else tuple(self.get(name) for name in networks)

    def namespace_owners(self, networks: tuple[str, ...]) -> tuple[Container, ...]:
        """For container:NAME, the container named and, when it shares another's namespace in turn, that
        namespace's owner (which a new container joins): the containers whose network it would share."""
        mode = mode_of(networks)
        if not mode.startswith(CONTAINER_PREFIX):
            return ()
        named = self._containers.find(mode[len(CONTAINER_PREFIX):])
        joined = self._members.get(named.id)
        if joined is not None and joined.mode == HOST:
            raise InvalidArgument(f"Container '{named.name}' uses the host's network: use networks ['host']")
        if joined is not None and joined.mode.startswith(CONTAINER_PREFIX):
            return named, self._containers.find(joined.mode[len(CONTAINER_PREFIX):])
        return (named,)

    def container_names(self, network_id: str) -> list[str]:
        return sorted(m.name for m in self._members.values()
                      if any(a.network_id == network_id for a in m.attachments))

    def addresses(self, container_id: str) -> list[tuple[str, str]]:
        """(network name, address) of each interface, in order."""
        m = self._members.get(container_id)
        if m is None:
            return []
        return [(self._networks[a.network_id].name, a.address) for a in m.attachments
                if a.network_id in self._networks]

    def host_interfaces(self, container_id: str) -> list[str]:
        """The host's side of its interfaces (veths), in order."""
        m = self._members.get(container_id)
        return [a.host_ifname for a in m.attachments] if m is not None else []

    # dns.Directory
    def lookup(self, network_id: str, name: str) -> list[str]:
        return list(self._names.get(network_id, {}).get(name, ()))

    def reverse(self, network_id: str, address: str) -> str | None:
        return self._reverse.get(network_id, {}).get(address)

    def _gateways(self) -> set[str]:
        return {n.gateway for n in self._networks.values()}

    # --- networks --------------------------------------------------------------------------------

    async def create(self, name: str, options: dict[str, object], owner_uid: int = 0) -> Network:
        validate_network_name(name)
        opts = parse_network_options(options)
        if any(n.name == name for n in self._networks.values()):
            raise NetworkNameInUse(name)
        routes = await self.kernel.run(self.kernel.host_routes)
        if opts.subnet is not None:
            subnet = opts.subnet
            self._check_overlap(subnet, routes)
        else:
            subnet = self._free_subnet(routes)
        gateway = opts.gateway or next(subnet.hosts())
        taken = {n.bridge for n in self._networks.values()}
        bridge = next(bridge_name(i) for i in range(len(taken) + 1) if bridge_name(i) not in taken)
        network = Network(id=new_id(), name=name, subnet=str(subnet), gateway=str(gateway), bridge=bridge,
                          internal=opts.internal, dns=opts.dns, created_at=now_usec(), owner_uid=owner_uid)
        # Checked again after the await: another create may have taken the name, subnet or bridge meanwhile.
        if any(n.name == name for n in self._networks.values()):
            raise NetworkNameInUse(name)
        self._check_overlap(subnet, [])
        if bridge in {n.bridge for n in self._networks.values()}:
            raise InvalidArgument(f"Network '{name}' could not get a bridge: try again")
        self._add_network(network)
        try:
            await self._store.insert_network(network)
        except BaseException:
            self._drop_network(network)
            raise
        for listener in self._listeners:
            listener.network_added(network)
        log.info("created network %s (%s, bridge %s%s)", name, network.subnet, bridge,
                 ", internal" if network.internal else "")
        return network

    def _check_overlap(self, subnet: ipaddress.IPv4Network, routes: list[ipaddress.IPv4Network]) -> None:
        for n in self._networks.values():
            if subnet.overlaps(n.network):
                raise InvalidArgument(f"Invalid subnet '{subnet}': it overlaps network '{n.name}' ({n.subnet})")
        for route in routes:
            if subnet.overlaps(route) and str(route) not in {n.subnet for n in self._networks.values()}:
                raise InvalidArgument(f"Invalid subnet '{subnet}': it overlaps the host's route to {route}")

    def _free_subnet(self, routes: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
        used = [n.network for n in self._networks.values()] + routes
        for candidate in AUTO_SUBNET_BASE.subnets(new_prefix=24):
            if not any(candidate.overlaps(u) for u in used):
                return candidate
        raise InvalidArgument(f"No free subnet left in {AUTO_SUBNET_BASE}: give one with the subnet option")

    def _add_network(self, network: Network) -> None:
        self._networks[network.id] = network
        self._ipam.add_network(network)
        self._names.setdefault(network.id, {})
        self._reverse.setdefault(network.id, {})

    def _drop_network(self, network: Network) -> None:
        self._networks.pop(network.id, None)
        self._ipam.remove_network(network.id)
        self._names.pop(network.id, None)
        self._reverse.pop(network.id, None)

    def removal_order(self, name_or_id: str) -> list[str]:
        """The containers a removal of the network with force removes first (removal.py), in the order they
        must go: those that share a user's namespace (container:NAME) before the user."""
        network = self._removable(name_or_id)
        users = self._users(network.id)
        joiners = [cid for cid, m in self._members.items()
                   if m.mode.startswith(CONTAINER_PREFIX) and m.mode[len(CONTAINER_PREFIX):] in users]
        return [*joiners, *users]

    def _removable(self, name_or_id: str) -> Network:
        network = self.get(name_or_id)
        if network.name == DEFAULT_NETWORK:
            raise InvalidArgument(f"The default network '{DEFAULT_NETWORK}' cannot be removed")
        return network

    async def remove(self, name_or_id: str, cascaded: bool = False) -> None:
        """Remove a network no container uses (NetworkInUse otherwise). cascaded: its containers were just
        removed for it (removal.py), so one found now came meanwhile."""
        network = self._removable(name_or_id)
        users = self._users(network.id)
        if users and cascaded:
            raise NetworkInUse(f"Network '{network.name}' got a new container while it was being removed")
        if users:
            raise NetworkInUse(f"Network '{network.name}' is used by container"
                               f"{'s' if len(users) > 1 else ''} {', '.join(sorted(users.values()))}: remove "
                               "them first, or remove the network with force")
        await self._deactivate(network.id)
        await self._store.delete_network(network.id)
        self._drop_network(network)
        for listener in self._listeners:
            listener.network_removed(network)
        log.info("removed network %s", network.name)

    def _users(self, network_id: str) -> dict[str, str]:
        return {cid: m.name for cid, m in self._members.items()
                if any(a.network_id == network_id for a in m.attachments)}

    # --- a container's networks --------------------------------------------------------------------

    def reserve(self, c: Container) -> Container:
        """At create, before anything is stored: resolve the networks, take addresses and ports, register names.
        Returns the container with container:NAME made container:ID. Raises (and keeps nothing) when refused."""
        spec = c.spec
        mode = mode_of(spec.networks)
        if mode.startswith(CONTAINER_PREFIX):
            target = self.namespace_owners(spec.networks)[-1]
            if target.id == c.id:
                raise InvalidArgument("A container cannot join its own network namespace")
            mode = CONTAINER_PREFIX + target.id
            c = c.with_(spec=replace(spec, networks=(mode,)))
            self._members[c.id] = _Member(spec.name, spec.aliases, mode)
            return c
        member = _Member(spec.name, spec.aliases, mode)
        if mode:
            self._members[c.id] = member
            return c
        networks = [self.get(name) for name in spec.networks]
        self._check_names(c, networks)
        try:
            for position, network in enumerate(networks):
                address = self._ipam.take(network, c.id, spec.ip if position == 0 else "")
                member.attachments.append(Attachment(c.id, network.id, address, position))
            member.ports = ports_of(spec.ports)
            for mapping in member.ports:
                for other in self._members.values():
                    for taken in other.ports:
                        if mapping.conflicts_with(taken):
                            raise PortInUse(f"Host port {mapping.host_port}/{mapping.protocol} is published by "
                                            f"container '{other.name}' already ({taken})")
            member.holds = hold_ports(member.ports)
            member.ports = [replace(p, host_port=sock.getsockname()[1]) for p, sock in zip(member.ports, member.holds)]
        except BaseException:
            for a in member.attachments:
                self._ipam.release(a.network_id, a.address)
            raise
        self._members[c.id] = member
        self._register_names(c.id, member)
        for network in networks:
            self._changed(network.id)
        if member.ports:
            # The host ports chosen for those given without one: what the Ports property shows from now on.
            c = c.with_(spec=replace(spec, ports=tuple(str(p) for p in member.ports)))
        return c

    def _check_names(self, c: Container, networks: list[Network]) -> None:
        """A name on a network answers with every container that has it: an alias that another owner's container
        has (as its name or an alias) on a network it would share with it would take part of that container's
        traffic. Aliases among one owner's containers stay shared, as Podman's do."""
        wanted = {c.spec.name.lower(), *c.spec.aliases}
        for network in networks:
            for other_id, m in self._members.items():
                other = self._containers.get(other_id)
                if other is None or other.owner_uid == c.owner_uid:
                    continue
                if not any(a.network_id == network.id for a in m.attachments):
                    continue
                taken = sorted(wanted & {m.name.lower(), *m.aliases})
                if taken:
                    raise AccessDenied(f"The name '{taken[0]}' on network '{network.name}' is another owner's "
                                       "container's: choose another alias")

    def _register_names(self, container_id: str, m: _Member) -> None:
        for a in m.attachments:
            names = self._names.setdefault(a.network_id, {})
            for name in dict.fromkeys((m.name.lower(), *m.aliases, container_id[:12])):
                names.setdefault(name, [])
                if a.address not in names[name]:
                    names[name].append(a.address)
            self._reverse.setdefault(a.network_id, {})[a.address] = m.name

    def _forget_names(self, container_id: str, m: _Member) -> None:
        for a in m.attachments:
            names = self._names.get(a.network_id, {})
            for name in dict.fromkeys((m.name.lower(), *m.aliases, container_id[:12])):
                left = [x for x in names.get(name, []) if x != a.address]
                if left:
                    names[name] = left
                else:
                    names.pop(name, None)
            if self._reverse.get(a.network_id, {}).get(a.address) == m.name:
                del self._reverse[a.network_id][a.address]

    def rename(self, c: Container, new_name: str) -> None:
        """A stopped container takes a new name: its old one leaves its networks' name servers and the new one
        answers there at once. AccessDenied, changing nothing, when another owner's container has the new name on
        a network it shares (as at create)."""
        m = self._members.get(c.id)
        if m is None:
            return
        self._check_names(c.with_(spec=replace(c.spec, name=new_name)),
                          [self._networks[a.network_id] for a in m.attachments if a.network_id in self._networks])
        self._forget_names(c.id, m)
        m.name = new_name
        self._register_names(c.id, m)
        for a in m.attachments:
            self._changed(a.network_id)

    def created(self, c: Container) -> None:
        """After the container's row is stored: queue its addresses and ports behind it (not awaited: a crash
        before they land is repaired by recover(), which takes addresses again), and start making its namespace
        and interfaces in the worker (start() waits for them)."""
        self._commit(c)
        self.attach(c)

    def _commit(self, c: Container) -> asyncio.Future[None] | None:
        m = self._members.get(c.id)
        if m is not None and (m.attachments or m.ports):
            return self._store.insert_attachments(c.id, list(m.attachments), list(m.ports))
        return None

    def release(self, container_id: str) -> None:
        """Forget a container's names, addresses and ports in memory (a failed create, or a removal)."""
        m = self._members.pop(container_id, None)
        if m is None:
            return
        for sock in m.holds:
            sock.close()
        self._forget_names(container_id, m)
        for a in m.attachments:
            self._ipam.release(a.network_id, a.address)
            self._changed(a.network_id)

    def attach(self, c: Container) -> None:
        """Start making the container's namespace and interfaces in the worker; start() waits for them."""
        m = self._members.get(c.id)
        if m is None or m.mode or not m.attachments:
            return
        path = netns.path_for(c.id)
        loop = asyncio.get_running_loop()
        m.netns_ready = (self._from_pool(path)
                         or asyncio.ensure_future(self.kernel.run(self.kernel.create_netns, path)))
        m.links_ready = loop.create_task(self._links(c.id, m, m.netns_ready, check=False))
        self._refill()  # after: the worker makes the next namespace once this container's links are queued

    def _from_pool(self, path: Path) -> asyncio.Future[None] | None:
        """A namespace made ahead, pinned at path by the worker; None when the pool is empty."""
        if not self._pool:
            return None
        return asyncio.ensure_future(self._pin(self._pool.pop(), path))

    async def _pin(self, fd: int, path: Path) -> None:
        try:
            await self.kernel.run(self.kernel.pin_netns, fd, path)  # closes fd
        except OSError as e:
            log.warning("could not pin a namespace at %s (%s): making one", path, e)
            await self.kernel.run(self.kernel.create_netns, path)

    def _refill(self) -> None:
        if self._filling or len(self._pool) >= POOL_SIZE:
            return
        self._filling = True

        async def fill() -> None:
            try:
                while len(self._pool) < POOL_SIZE:
                    self._pool.append(await self.kernel.run(self.kernel.prepare_netns))
            finally:
                self._filling = False

        self._spawn(fill())

    async def _links(self, container_id: str, m: _Member, netns_ready: asyncio.Future[None], check: bool) -> None:
        await netns_ready
        for a in m.attachments:
            await self._activate(a.network_id)
        path = netns.path_for(container_id)
        if check and await self.kernel.run(self.kernel.attached, path, [a.host_ifname for a in m.attachments]):
            return
        first = self._networks[m.attachments[0].network_id]
        plans = [LinkPlan(host_ifname=a.host_ifname, ifname=a.ifname, bridge=self._networks[a.network_id].bridge,
                          address=a.address, prefixlen=self._networks[a.network_id].prefixlen,
                          gateway=first.gateway, default_route=a.position == 0, alias=link_alias(container_id))
                 for a in m.attachments]
        await self.kernel.run(self.kernel.attach, path, plans, check)
        if m.ports:
            await self._apply_firewall()

    async def launch(self, c: Container, hostname: str) -> LaunchNetwork:
        """At each start, before the helper is forked: the namespace to join (waited for) and the files."""
        m = self._members.get(c.id)
        if m is None:
            return LaunchNetwork("", ())
        joined = ""
        if not m.mode and m.attachments:
            if m.netns_ready is None or (m.links_ready is not None and m.links_ready.done()
                                         and (m.links_ready.cancelled() or m.links_ready.exception())):
                # Not made by this agent (it restarted), or a first try failed: check, and make what is missing.
                m.netns_ready = asyncio.ensure_future(self.kernel.run(self.kernel.create_netns,
                                                                      netns.path_for(c.id)))
                m.links_ready = asyncio.get_running_loop().create_task(
                    self._links(c.id, m, m.netns_ready, check=True))
            await self._setup_step(c, m.netns_ready)
            joined = str(netns.path_for(c.id))
        elif m.mode.startswith(CONTAINER_PREFIX):
            joined = self._netns_of(m.mode[len(CONTAINER_PREFIX):])
            if joined and not joined.startswith("/proc/"):
                target = self._members.get(m.mode[len(CONTAINER_PREFIX):])
                if target is not None and target.netns_ready is not None:
                    await self._setup_step(c, target.netns_ready)
        names = self._file_names(c, m, hostname)
        # Three small files on the agent's own state directory: written here, a thread hop would cost more.
        mounts = files.write(self._paths.container(c.id), names)
        return LaunchNetwork(joined, tuple(mounts))

    def _file_names(self, c: Container, m: _Member, hostname: str) -> files.Names:
        source = m
        if m.mode.startswith(CONTAINER_PREFIX):
            source = self._members.get(m.mode[len(CONTAINER_PREFIX):], m)
        nets = [self._networks[a.network_id] for a in source.attachments if a.network_id in self._networks]
        return files.Names(hostname=hostname, names=(c.name, *c.spec.aliases),
                           addresses=tuple(a.address for a in source.attachments),
                           nameservers=tuple(dict.fromkeys(n.gateway for n in nets if n.dns)),
                           gateway=nets[0].gateway if nets else "", host_mode=source.mode == HOST,
                           add_hosts=c.spec.add_hosts, dns_servers=c.spec.dns_servers, dns_search=c.spec.dns_search,
                           dns_options=c.spec.dns_options)

    def _netns_of(self, container_id: str) -> str:
        """The namespace a container's network lives in: its pinned one, or its running init's for none."""
        m = self._members.get(container_id)
        if m is not None and m.mode.startswith(CONTAINER_PREFIX):
            return self._netns_of(m.mode[len(CONTAINER_PREFIX):])
        if m is not None and not m.mode and m.attachments:
            return str(netns.path_for(container_id))
        if m is not None and m.mode == HOST:
            return ""
        c = self._containers.find(container_id)
        if c.state is not State.RUNNING or not c.main_pid:
            raise NotRunning(c.name, c.state.value)
        return f"/proc/{c.main_pid}/ns/net"

    async def ready(self, c: Container) -> None:
        """Before Go: the interfaces, addresses, route and published ports are in place."""
        m = self._members.get(c.id)
        if m is not None and m.links_ready is not None:
            await self._setup_step(c, m.links_ready)

    @staticmethod
    async def _setup_step(c: Container, step: asyncio.Future[None]) -> None:
        try:
            await asyncio.shield(step)
        except QuiltError:
            raise
        except Exception as e:  # noqa: BLE001 - a netlink or nft failure: the start fails with what it said
            raise ContainerFailed(f"Container '{c.name}' failed to start: its network could not be set up: "
                                  f"{e}") from e

    def joiners(self, container_id: str) -> list[str]:
        return sorted(m.name for m in self._members.values() if m.mode == CONTAINER_PREFIX + container_id)

    def check_removable(self, c: Container) -> None:
        users = self.joiners(c.id)
        if users:
            raise NetworkInUse(f"Container '{c.name}' shares its network namespace with {', '.join(users)}: "
                               "remove them first")

    async def detach(self, c: Container) -> None:
        """At removal: names go at once, then the interfaces and namespace, then the rules."""
        m = self._members.get(c.id)
        if m is None:
            m = _Member(c.name, c.spec.aliases, mode_of(c.spec.networks))
        self.release(c.id)
        for future in (m.netns_ready, m.links_ready):
            if future is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(future), 30)
                except Exception as e:  # noqa: BLE001 - whatever it made is removed below
                    log.info("container %s: its network setup ended with %r before its removal", c.name, e)
        if not m.mode:
            hosts = [a.host_ifname for a in m.attachments]
            await self.kernel.run(self.kernel.detach, netns.path_for(c.id), hosts)
        if m.ports:
            await self._apply_firewall()
        for a in m.attachments:
            self._schedule_linger(a.network_id)

    # --- activation: bridge, name server, rules ---------------------------------------------------

    def _lock(self, network_id: str) -> asyncio.Lock:
        return self._network_locks.setdefault(network_id, asyncio.Lock())

    async def _activate(self, network_id: str) -> None:
        handle = self._linger.pop(network_id, None)
        if handle is not None:
            handle.cancel()
        if network_id in self._active:
            return
        async with self._lock(network_id):
            if network_id in self._active or network_id not in self._networks:
                return
            network = self._networks[network_id]
            await self.kernel.run(self.kernel.ensure_bridge, network)
            if network.dns:
                try:
                    self._responders[network_id] = await dns.serve(network, self, self._upstreams)
                except OSError as e:
                    # Another server holds port 53 on every address (a dnsmasq bound to 0.0.0.0): the network
                    # still works, its containers only do not find each other by name.
                    log.error("network %s: no name server on %s:53: %s", network.name, network.gateway, e)
            self._active.add(network_id)
            await self._forwarding()
            await self._apply_firewall()
            log.info("network %s is up: bridge %s, gateway %s", network.name, network.bridge, network.gateway)

    def _schedule_linger(self, network_id: str) -> None:
        if network_id not in self._active or self._users(network_id) or network_id in self._linger:
            return
        loop = asyncio.get_running_loop()

        def expire() -> None:
            self._linger.pop(network_id, None)
            self._spawn(self._deactivate(network_id, only_if_unused=True))

        self._linger[network_id] = loop.call_later(LINGER, expire)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: t.cancelled() or not t.exception()
                               or log.error("network task failed: %s", t.exception()))

    async def _deactivate(self, network_id: str, only_if_unused: bool = False) -> None:
        handle = self._linger.pop(network_id, None)
        if handle is not None:
            handle.cancel()
        async with self._lock(network_id):
            if network_id not in self._active or (only_if_unused and self._users(network_id)):
                return
            network = self._networks[network_id]
            self._active.discard(network_id)
            responder = self._responders.pop(network_id, None)
            if responder is not None:
                responder.close()
            await self._apply_firewall()
            await self.kernel.run(self.kernel.remove_bridge, network.bridge)
            await self._forwarding()
            log.info("network %s is down: bridge %s removed", network.name, network.bridge)

    async def _forwarding(self) -> None:
        """net.ipv4.ip_forward on while a network with egress is up; back to what it was after."""
        needed = any(not self._networks[i].internal for i in self._active if i in self._networks)
        if needed:
            before = await self.kernel.run(self.kernel.forwarding, "1")
            if before != "1" and not self._forward_note.exists():
                self._forward_note.parent.mkdir(parents=True, exist_ok=True)
                self._forward_note.write_text(before)
        elif self._forward_note.exists():
            await self.kernel.run(self.kernel.forwarding, self._forward_note.read_text().strip() or "0")
            self._forward_note.unlink()

    async def _apply_firewall(self) -> None:
        active = [self._networks[i] for i in self._active if i in self._networks]
        published = []
        for m in self._members.values():
            if m.ports and m.attachments and m.attachments[0].network_id in self._active:
                first = self._networks[m.attachments[0].network_id]
                published += [firewall.Published(p, m.attachments[0].address, first.bridge) for p in m.ports]
        await self._firewall.apply(firewall.render(sorted(active, key=lambda n: n.bridge), published))

    # --- recovery --------------------------------------------------------------------------------

    async def recover(self, containers: list[Container]) -> None:
        """At agent start: the store's networks, addresses and ports back in memory, the kernel made to match
        (namespaces, veths and bridges no container owns removed; active networks' bridges, name servers and
        rules up again), addresses a crash lost between a container's row and its addresses taken again."""
        for network in await self._store.networks():
            self._add_network(network)
        await self._ensure_default()
        attachments: dict[str, list[Attachment]] = {}
        for a in await self._store.attachments():
            attachments.setdefault(a.container_id, []).append(a)
        ports: dict[str, list[PortMapping]] = {}
        for container_id, mapping in await self._store.ports():
            ports.setdefault(container_id, []).append(mapping)
        for c in containers:
            mode = mode_of(c.spec.networks)
            m = _Member(c.name, c.spec.aliases, mode, attachments.get(c.id, []), ports.get(c.id, []))
            self._members[c.id] = m
            for a in m.attachments:
                self._ipam.restore(a.network_id, a.address, c.id)
            if not mode and not m.attachments and c.state is not State.REMOVING:
                # The agent died between the container's row and its addresses: take them now.
                del self._members[c.id]
                try:
                    self.reserve(c)
                    written = self._commit(c)
                    if written is not None:
                        await written
                except Exception as e:  # noqa: BLE001 - the container stays, without a network; logged
                    log.error("container %s lost its addresses and could not get new ones: %s", c.name, e)
                    self._members[c.id] = _Member(c.name, c.spec.aliases, NONE)
                continue
            if m.ports:
                try:
                    m.holds = hold_ports(m.ports)
                except QuiltError as e:  # the container keeps its rules; the host process has the port meanwhile
                    log.warning("container %s: %s", c.name, e)
            self._register_names(c.id, m)
        # The kernel side is repaired as far as it can be; a failure is logged, never keeps the agent from
        # starting (its containers must stay manageable): a container's next start tries again.
        try:
            await self._reconcile_kernel()
            for network_id in {a.network_id for m in self._members.values() for a in m.attachments}:
                await self._activate(network_id)
            await self._apply_firewall()
            await self._forwarding()
        except Exception as e:  # noqa: BLE001 - logged; see above
            log.error("could not restore the containers' networks: %s", e)
        self._spawn(self.kernel.run(self.kernel.warm))

    async def _ensure_default(self) -> None:
        subnet = parse_subnet(self.config.default_subnet)
        existing = next((n for n in self._networks.values() if n.name == DEFAULT_NETWORK), None)
        if existing is None:
            for n in self._networks.values():
                if subnet.overlaps(n.network):
                    log.error("the default subnet %s overlaps network %s: using %s", subnet, n.name, n.subnet)
            network = Network(id=new_id(), name=DEFAULT_NETWORK, subnet=str(subnet),
                              gateway=str(parse_gateway(str(next(subnet.hosts())), subnet)), bridge=bridge_name(0),
                              created_at=now_usec())
            if any(n.bridge == network.bridge for n in self._networks.values()):
                taken = {n.bridge for n in self._networks.values()}
                network = network.with_(bridge=next(bridge_name(i) for i in range(len(taken) + 1)
                                                    if bridge_name(i) not in taken))
            self._add_network(network)
            await self._store.insert_network(network)
        elif existing.subnet != str(subnet):
            if self._ipam.count(existing.id) == 0 and not any(
                    a.network_id == existing.id for m in self._members.values() for a in m.attachments):
                moved = existing.with_(subnet=str(subnet), gateway=str(next(subnet.hosts())))
                self._networks[existing.id] = moved
                await self._store.update_network(moved)
                log.info("default network %s now uses subnet %s (configured)", DEFAULT_NETWORK, subnet)
            else:
                log.warning("the configured default subnet %s is not used: network %s has containers on %s",
                            subnet, DEFAULT_NETWORK, existing.subnet)

    async def _reconcile_kernel(self) -> None:
        owned = {cid for cid, m in self._members.items() if not m.mode and m.attachments}
        for path in await self.kernel.run(self.kernel.list_netns):
            container_id = path.name[len(netns.NAME_PREFIX):]
            if container_id not in owned:
                log.warning("removing network namespace %s: no container owns it", path)
                await self.kernel.run(self.kernel.remove_netns, path)
        expected_hosts = {a.host_ifname for cid in owned for a in self._members[cid].attachments}
        in_use = {a.network_id for cid in owned for a in self._members[cid].attachments}
        bridges = {self._networks[i].bridge for i in in_use if i in self._networks}
        for name, alias in await self.kernel.run(self.kernel.owned_links):
            if alias.startswith("quilt:network:"):
                if name not in bridges:
                    log.info("removing bridge %s: its network has no container", name)
                    await self.kernel.run(self.kernel.delete_link, name)
            elif name not in expected_hosts:
                log.warning("removing veth %s: no container owns it", name)
                await self.kernel.run(self.kernel.delete_link, name)

    def _changed(self, network_id: str) -> None:
        network = self._networks.get(network_id)
        if network is not None:
            for listener in self._listeners:
                listener.network_changed(network)

    # --- ping ------------------------------------------------------------------------------------

    async def ping(self, c: Container, target: str, count: int) -> tuple[int, float, str, list[float]]:
        """ICMP echo from c's network namespace to target (a container or an address): (received, average
        round trip in ms, the address pinged, each round trip)."""
        if not 1 <= count <= MAX_PING_COUNT:
            raise InvalidArgument(f"Invalid count {count}: must be between 1 and {MAX_PING_COUNT}")
        address = self._ping_address(c, target)
        path = self._netns_of(c.id)
        sock = await self.kernel.run(self.kernel.icmp_socket, path or None)
        loop = asyncio.get_running_loop()
        times: list[float] = []
        try:
            sock.setblocking(False)
            sock.connect((address, 0))
            for seq in range(1, count + 1):
                # The kernel fills in the identifier and the checksum of an ICMP datagram socket's echo.
                packet = struct.pack("!BBHHH", 8, 0, 0, 0, seq) + b"quilt-ping".ljust(48, b".")
                sent = time.perf_counter()
                await loop.sock_sendall(sock, packet)
                deadline = sent + PING_TIMEOUT
                while (left := deadline - time.perf_counter()) > 0:
                    try:
                        reply = await asyncio.wait_for(loop.sock_recv(sock, 2048), left)
                    except asyncio.TimeoutError:
                        break
                    if len(reply) >= 8 and reply[0] == 0 and struct.unpack("!H", reply[6:8])[0] == seq:
                        times.append((time.perf_counter() - sent) * 1000)
                        break
        except OSError as e:
            log.info("ping from %s to %s: %s", c.name, address, e)
        finally:
            sock.close()
        average = sum(times) / len(times) if times else 0.0
        return len(times), average, address, times

    def _ping_address(self, c: Container, target: str) -> str:
        try:
            return str(ipaddress.IPv4Address(target))
        except ValueError:
            pass
        other = self._containers.find(target)
        theirs = self._members.get(other.id)
        if theirs is not None and theirs.mode.startswith(CONTAINER_PREFIX):
            theirs = self._members.get(theirs.mode[len(CONTAINER_PREFIX):])
        if theirs is None or not theirs.attachments:
            raise InvalidArgument(f"Container '{other.name}' has no address to ping (network mode "
                                  f"{theirs.mode if theirs else 'none'})")
        mine = self._members.get(c.id)
        if mine is not None and mine.mode.startswith(CONTAINER_PREFIX):
            mine = self._members.get(mine.mode[len(CONTAINER_PREFIX):])
        my_networks = {a.network_id for a in mine.attachments} if mine else set()
        shared = [a for a in theirs.attachments if a.network_id in my_networks]
        return (shared or theirs.attachments)[0].address
