"""Networks on the bus: org.quilt.Runtime.Network on /org/quilt/Runtime/network/ID (one object per network), the
Manager's network methods (NetworkMethods, mixed into ManagerInterface) and the Container's (ContainerNetwork,
mixed into ContainerInterface): Addresses, Ports, Ping. Thin: parse, look up, authorize, call, reply."""

import ipaddress
from typing import Any, Callable

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_method, dbus_property, dbus_signal

from quilt_agent.bus.errors import ERROR_NAMES
from quilt_agent.bus import access, caller
from quilt_agent.bus.access import Target
from quilt_agent.bus.guard import (
    PUBLIC, GuardedInterface, cascade, guarded, readable, reveal, visible,
)
from quilt_agent.bus.names import NETWORK_INTERFACE, NETWORK_PATH_PREFIX, network_path
from quilt_agent.bus.polkit import MANAGE, Authority
from quilt_agent.errors import InvalidArgument, NoSuchContainer, NoSuchNetwork
from quilt_agent.manager import Manager
from quilt_agent.network.core import Networks
from quilt_agent.removal import Removal
from quilt_agent.network.model import Network

MANAGER_ARG_NAMES: dict[str, tuple[str, ...]] = {
    "CreateNetwork": ("network",), "GetNetwork": ("network",), "ListNetworks": ("networks",),
    "NetworkNew": ("id", "network"), "NetworkRemoved": ("id", "network"),
}
CONTAINER_ARG_NAMES: dict[str, tuple[str, ...]] = {"Ping": ("received", "average_ms")}


def properties(networks: Networks, n: Network) -> dict[str, Any]:
    """The object's property values, by D-Bus name; PropertiesChanged compares these."""
    return {"Id": n.id, "Name": n.name, "Subnet": n.subnet, "Gateway": n.gateway, "Bridge": n.bridge,
            "Internal": n.internal, "DNS": n.dns, "Containers": networks.container_names(n.id), "Owner": n.owner_uid}


def _unwrap(options: dict[str, Variant]) -> dict[str, Any]:
    return {key: value.value for key, value in options.items()}


async def _remove(authority: Authority, removal: Removal, name_or_id: str, force: bool) -> None:
    """With force, the containers on the network go too: each authorized first."""
    authorized = await cascade(authority, removal.affected("network", name_or_id)) if force else []
    await removal.network(name_or_id, force, authorized)


class NetworkInterface(GuardedInterface):
    def __init__(self, network_id: str, networks: Networks, removal: Removal, authority: Authority,
                 resolve: Callable[[str, str], Target]) -> None:
        """resolve: the Manager's (its Containers are named, and told only to those who may see them)."""
        super().__init__(NETWORK_INTERFACE, authority)
        self.network_id = network_id
        self._networks = networks
        self._removal = removal
        self._resolve = resolve
        self.last: dict[str, Any] = {}

    def subject(self) -> Target:
        return access.network(self._n)

    def resolve(self, kind: str, text: str) -> Target:
        return self._resolve(kind, text)

    @property
    def _n(self) -> Network:
        return self._networks.get(self.network_id)

    def changed(self, n: Network) -> None:
        now = properties(self._networks, n)
        diff = {k: v for k, v in now.items() if self.last.get(k) != v}
        self.last = now
        if diff:
            self.emit_properties_changed(diff)

    @dbus_method(name="Remove")
    @guarded(MANAGE, "remove")
    async def remove(self, force: "b") -> None:
        await _remove(self.authority, self._removal, self.network_id, force)

    @dbus_property(access=PropertyAccess.READ, name="Id")
    @readable
    def id_(self) -> "s":
        return self._n.id

    @dbus_property(access=PropertyAccess.READ, name="Name")
    @readable
    def name_(self) -> "s":
        return self._n.name

    @dbus_property(access=PropertyAccess.READ, name="Subnet")
    @readable
    def subnet(self) -> "s":
        return self._n.subnet

    @dbus_property(access=PropertyAccess.READ, name="Gateway")
    @readable
    def gateway(self) -> "s":
        return self._n.gateway

    @dbus_property(access=PropertyAccess.READ, name="Bridge")
    @readable
    def bridge(self) -> "s":
        return self._n.bridge

    @dbus_property(access=PropertyAccess.READ, name="Internal")
    @readable
    def internal(self) -> "b":
        return self._n.internal

    @dbus_property(access=PropertyAccess.READ, name="DNS")
    @readable
    def dns(self) -> "b":
        return self._n.dns

    @dbus_property(access=PropertyAccess.READ, name="Containers")
    async def containers(self) -> "as":
        """The names of those the caller may see."""
        await self.check_visible()
        return await visible(self.authority, self._networks.container_names(self.network_id),
                             lambda name: self.resolve("container", name))

    @dbus_property(access=PropertyAccess.READ, name="Owner")
    @readable
    def owner(self) -> "u":
        return self._n.owner_uid


class NetworkMethods(ServiceInterface):
    """The Manager's network methods and signals, and the export of one object per network. Mixed into
    ManagerInterface, which has _bus and authority."""

    _bus: MessageBus
    authority: Authority
    resolve: Callable[[str, str], Target]  # GuardedInterface's, as ManagerInterface answers it
    _targets: dict[str, Target]  # ManagerInterface's: what each object path is, for relayed signals

    def _networks_init(self, networks: Networks, removal: Removal) -> None:
        self._networks = networks
        self._network_removal = removal
        self._network_objects: dict[str, NetworkInterface] = {}
        networks.subscribe(self)

    def _export_network(self, n: Network) -> None:
        obj = NetworkInterface(n.id, self._networks, self._network_removal, self.authority, self.resolve)
        obj.last = properties(self._networks, n)
        self._network_objects[n.id] = obj
        self._targets[network_path(n.id)] = access.network(n)
        with caller.agent():  # InterfacesAdded: the agent reads the properties
            self._bus.export(network_path(n.id), obj)

    # network/core.py's NetworkListener
    def network_added(self, network: Network) -> None:
        self._export_network(network)
        self.network_new(network.id, network_path(network.id))

    def network_changed(self, network: Network) -> None:
        obj = self._network_objects.get(network.id)
        if obj is not None:
            obj.changed(network)

    def network_removed(self, network: Network) -> None:
        obj = self._network_objects.pop(network.id, None)
        if obj is not None:
            self._bus.unexport(network_path(network.id), obj)
        self.network_removed_signal(network.id, network_path(network.id))
        self._targets.pop(network_path(network.id), None)

    def unknown_network(self, msg: Message) -> Message | bool | None:
        """Message handler: a call to a network path without an object is NoSuchNetwork naming the id."""
        if (msg.message_type is not MessageType.METHOD_CALL or not msg.path.startswith(NETWORK_PATH_PREFIX)
                or msg.interface not in (NETWORK_INTERFACE, "org.freedesktop.DBus.Properties")
                or msg.path[len(NETWORK_PATH_PREFIX):] in self._network_objects):
            return None
        if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return True
        error = NoSuchNetwork(msg.path[len(NETWORK_PATH_PREFIX):])
        return Message.new_error(msg, ERROR_NAMES[NoSuchNetwork], str(error))

    @dbus_method(name="CreateNetwork")
    @guarded(MANAGE, "create", subject="network")
    async def create_network(self, name: "s", options: "a{sv}") -> "o":
        creds = await self.authority.credentials()
        n = await self._networks.create(name, _unwrap(options), creds.uid)
        return network_path(n.id)

    @dbus_method(name="ListNetworks")
    @guarded(PUBLIC)
    async def list_networks(self) -> "a(sso)":
        return [[n.name, n.subnet, network_path(n.id)]
                for n in await visible(self.authority, self._networks.list(), access.network)]

    @dbus_method(name="GetNetwork")
    @guarded(PUBLIC)
    async def get_network(self, name_or_id: "s") -> "o":
        await reveal(self.authority, self.resolve("network", name_or_id))
        return network_path(self._networks.get(name_or_id).id)

    @dbus_method(name="RemoveNetwork")
    @guarded(MANAGE, "remove", subject="network")
    async def remove_network(self, name: "s", force: "b") -> None:
        await _remove(self.authority, self._network_removal, name, force)

    @dbus_signal(name="NetworkNew")
    def network_new(self, network_id: str, path: str) -> "so":
        return [network_id, path]

    @dbus_signal(name="NetworkRemoved")
    def network_removed_signal(self, network_id: str, path: str) -> "so":
        return [network_id, path]


class ContainerNetwork(ServiceInterface):
    """The Container's network members. Mixed into ContainerInterface, which has _manager, _networks and
    container_id."""

    _manager: Manager
    _networks: Networks
    container_id: str
    authority: Authority

    @dbus_method(name="Ping")
    @guarded(MANAGE, "ping from")
    async def ping(self, target: "s", count: "u") -> "ud":
        if not target:
            raise InvalidArgument("No target given: name a container or an IPv4 address")
        try:
            ipaddress.IPv4Address(target)
        except ValueError:  # a container's name: whether it exists, and where, is for those who may see it
            try:
                await reveal(self.authority, access.container(self._manager.get(target)))
            except NoSuchContainer:
                await reveal(self.authority, access.absent("container", target))
                raise
        c = self._manager.get(self.container_id)
        received, average, _address, _times = await self._networks.ping(c, target, count)
        return [received, average]

    @dbus_property(access=PropertyAccess.READ, name="Addresses")
    @readable
    def addresses(self) -> "a(ss)":
        return [list(pair) for pair in self._networks.addresses(self.container_id)]

    @dbus_property(access=PropertyAccess.READ, name="Ports")
    @readable
    def ports(self) -> "as":
        return list(self._manager.get(self.container_id).spec.ports)
