"""Network records and their rules. Pure: no kernel, no store."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Any

from quilt_agent.errors import InvalidArgument

DEFAULT_NETWORK = "quilt"
DEFAULT_SUBNET = "10.89.0.0/24"
# Modes that are not network names (networks option); "container:NAME" is the fourth.
NONE, HOST, CONTAINER_PREFIX = "none", "host", "container:"
MODES = (NONE, HOST)
# Containers find each other as NAME or NAME.dns.quilt, as Podman's aardvark-dns answers NAME.dns.podman.
DNS_DOMAIN = "dns.quilt"
HOST_GATEWAY_NAME = "host.quilt.internal"  # the host, seen from a container (Podman: host.containers.internal)
NETWORK_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
MAX_NETWORK_NAME = 63
# A DNS label (RFC 1123): what an alias may be, so that it can be answered for.
DNS_NAME_RE = re.compile(r"(?=.{1,253}$)[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
                         r"(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*")
BRIDGE_PREFIX = "quilt"  # bridges are quilt0, quilt1, ...
# Host ends of the veth pairs: "vq" + 12 hex digits of the container id + the interface's index (IFNAMSIZ is 16
# with the NUL). Ownership is also marked with the link's alias, so recovery never touches a link it did not make.
VETH_PREFIX = "vq"
LINK_ALIAS_PREFIX = "quilt:"
MAX_NETWORKS_PER_CONTAINER = 16  # one hex digit of the host veth's name
PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class Network:
    """A network as the store keeps it."""

    id: str
    name: str
    subnet: str  # "10.89.0.0/24"
    gateway: str  # "10.89.0.1": the bridge's address, the containers' default route and name server
    bridge: str  # "quilt0"
    internal: bool = False  # no egress: nothing forwarded in or out of the bridge
    dns: bool = True
    created_at: int = 0
    owner_uid: int = 0  # who created it

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def with_(self, **changes: Any) -> Network:
        return replace(self, **changes)


@dataclass(frozen=True)
class Attachment:
    """One container's interface on one network."""

    container_id: str
    network_id: str
    address: str
    position: int  # eth{position} inside the container; the first network has the default route

    @property
    def ifname(self) -> str:
        return f"eth{self.position}"

    @property
    def host_ifname(self) -> str:
        return host_ifname(self.container_id, self.position)


@dataclass(frozen=True, order=True)
class PortMapping:
    """A published port: host_ip:host_port on the host to container_port in the container."""

    protocol: str
    host_ip: str  # "" = every address of the host
    host_port: int
    container_port: int

    def __str__(self) -> str:
        host = f"{self.host_ip}:" if self.host_ip else ""
        return f"{host}{self.host_port}:{self.container_port}/{self.protocol}"

    def conflicts_with(self, other: PortMapping) -> bool:
        """The same port on the same protocol, on the same address or on every address. Port 0 (a free one, to
        be chosen) conflicts with none."""
        return (self.protocol == other.protocol and self.host_port != 0 and self.host_port == other.host_port
                and (not self.host_ip or not other.host_ip or self.host_ip == other.host_ip))


def host_ifname(container_id: str, position: int) -> str:
    return f"{VETH_PREFIX}{container_id[:12]}{position:x}"


def link_alias(container_id: str) -> str:
    return f"{LINK_ALIAS_PREFIX}{container_id}"


def bridge_name(index: int) -> str:
    return f"{BRIDGE_PREFIX}{index}"


def validate_network_name(name: str) -> str:
    if not name:
        raise InvalidArgument("Invalid network name '': it is empty")
    if len(name) > MAX_NETWORK_NAME:
        raise InvalidArgument(f"Invalid network name '{name}': longer than {MAX_NETWORK_NAME} characters")
    if not NETWORK_NAME_RE.fullmatch(name):
        raise InvalidArgument(f"Invalid network name '{name}': use letters, digits, '_', '.' and '-', "
                              "starting with a letter or digit")
    if name in MODES or name.startswith(CONTAINER_PREFIX):
        raise InvalidArgument(f"Invalid network name '{name}': it names a network mode")
    return name


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """An IPv4 subnet with room for a gateway and at least one container (/30 or larger)."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise InvalidArgument(f"Invalid subnet '{text}': {e}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidArgument(f"Invalid subnet '{text}': only IPv4 subnets are supported")
    if net.prefixlen > 30 or net.prefixlen < 8:
        raise InvalidArgument(f"Invalid subnet '{text}': the prefix length must be between 8 and 30")
    if net.is_loopback or net.is_multicast or net.is_link_local or net.is_unspecified:
        raise InvalidArgument(f"Invalid subnet '{text}': not a subnet for hosts")
    return net


def parse_gateway(text: str, net: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    try:
        gateway = ipaddress.IPv4Address(text)
    except ValueError:
        raise InvalidArgument(f"Invalid gateway '{text}': not an IPv4 address") from None
    if gateway not in net or gateway in (net.network_address, net.broadcast_address):
        raise InvalidArgument(f"Invalid gateway '{text}': not a host address of subnet {net}")
    return gateway
