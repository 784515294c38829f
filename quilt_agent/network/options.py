"""The network options of CreateContainer (networks, aliases, ip, ports) and of CreateNetwork.

Only the form is checked here (pure functions); whether a network exists, an address is free or a port is
taken is the business of Networks.reserve, which sees the state.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from quilt_agent.errors import InvalidArgument
from quilt_agent.network.model import (
    CONTAINER_PREFIX, DEFAULT_NETWORK, DNS_NAME_RE, HOST, MAX_NETWORKS_PER_CONTAINER, MODES, NONE, PROTOCOLS,
    PortMapping, parse_gateway, parse_subnet, validate_network_name,
)

# [[HOSTIP:][HOSTPORT]:]CONTAINERPORT[/PROTOCOL], as podman run -p takes it (ranges are not supported). No host
# port, or 0: a free one, chosen by the agent at create (Networks.reserve).
PORT_RE = re.compile(r"(?:(?:(?P<ip>[^:/]*):)?(?P<host>[^:/]*):)?(?P<container>[^:/]*)(?:/(?P<proto>.*))?")


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"Option '{key}' must be a list of strings, not {value!r}")
    return tuple(value)


def parse_networks(value: Any) -> tuple[str, ...]:
    """Network names, or exactly one mode: none, host, container:NAME."""
    names = _strings("networks", value)
    if not names:
        raise InvalidArgument("Option 'networks' is empty: name a network, or none, host or container:NAME")
    for name in names:
        if name in MODES or name.startswith(CONTAINER_PREFIX):
            if len(names) > 1:
                raise InvalidArgument(f"Network mode '{name}' cannot be combined with other networks")
            if name.startswith(CONTAINER_PREFIX) and not name[len(CONTAINER_PREFIX):]:
                raise InvalidArgument("Network mode 'container:' needs a container's name: container:NAME")
            return names
        validate_network_name(name)
    if len(set(names)) != len(names):
        raise InvalidArgument(f"Option 'networks' names a network twice: {', '.join(names)}")
    if len(names) > MAX_NETWORKS_PER_CONTAINER:
        raise InvalidArgument(f"A container may join at most {MAX_NETWORKS_PER_CONTAINER} networks")
    return names


def parse_aliases(value: Any) -> tuple[str, ...]:
    aliases = _strings("aliases", value)
    for alias in aliases:
        if not DNS_NAME_RE.fullmatch(alias):
            raise InvalidArgument(f"Invalid alias '{alias}': not a DNS name (letters, digits, '-' and '.')")
    return tuple(dict.fromkeys(a.lower() for a in aliases))


def parse_ip(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"Option 'ip' must be a string, not {value!r}")
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise InvalidArgument(f"Invalid ip '{value}': not an IPv4 address") from None


def _port(text: str, spec: str, what: str, lowest: int = 1) -> int:
    if not text.isdigit():
        raise InvalidArgument(f"Invalid port mapping '{spec}': {what} '{text}' is not a number")
    port = int(text)
    if not lowest <= port <= 65535:
        raise InvalidArgument(f"Invalid port mapping '{spec}': {what} {port} is not between 1 and 65535"
                              + (" (0 or none: a free one)" if lowest == 0 else ""))
    return port


def parse_port(spec: str) -> PortMapping:
    match = PORT_RE.fullmatch(spec)
    if match is None:
        raise InvalidArgument(f"Invalid port mapping '{spec}': expected [[HOSTIP:][HOSTPORT]:]CONTAINERPORT[/tcp|udp]")
    host_ip = match.group("ip") or ""
    if host_ip:
        try:
            host_ip = str(ipaddress.IPv4Address(host_ip))
        except ValueError:
            raise InvalidArgument(f"Invalid port mapping '{spec}': '{host_ip}' is not an IPv4 address") from None
        if host_ip == "0.0.0.0":
            host_ip = ""  # every address, as Podman reads it
    protocol = (match.group("proto") if match.group("proto") is not None else "tcp").lower()
    if protocol not in PROTOCOLS:
        raise InvalidArgument(f"Invalid port mapping '{spec}': unknown protocol '{protocol}' (tcp or udp)")
    host = match.group("host") or "0"  # none given: a free one
    return PortMapping(protocol=protocol, host_ip=host_ip, host_port=_port(host, spec, "host port", lowest=0),
                       container_port=_port(match.group("container"), spec, "container port"))


def parse_ports(value: Any) -> tuple[str, ...]:
    """As normalised strings (what the Ports property shows); PortMapping.parse gets them back."""
    mappings = [parse_port(spec) for spec in _strings("ports", value)]
    for i, mapping in enumerate(mappings):
        for other in mappings[:i]:
            if mapping.conflicts_with(other):
                raise InvalidArgument(f"Port mappings '{other}' and '{mapping}' publish the same host port")
    return tuple(str(m) for m in mappings)


# Option key -> (ContainerSpec field, parser): merged into model.OPTION_PARSERS.
CONTAINER_OPTIONS = {
    "networks": ("networks", parse_networks),
    "aliases": ("aliases", parse_aliases),
    "ip": ("ip", parse_ip),
    "ports": ("ports", parse_ports),
}


def settle(fields: dict[str, Any], namespaces: tuple[str, ...]) -> None:
    """Make the network fields and the net namespace agree (called by model.parse_options, in place).

    Leaving "net" out of the namespaces is the older spelling of networks=["host"]; "host" drops it in turn.
    """
    networks = fields.get("networks")
    if networks is None:
        fields["networks"] = networks = (DEFAULT_NETWORK,) if "net" in namespaces else (HOST,)
    elif networks == (HOST,):
        fields["namespaces"] = tuple(n for n in namespaces if n != "net")
    elif "net" not in namespaces:
        raise InvalidArgument(f"Networks {', '.join(networks)} need the net namespace: leave 'net' in the "
                              "namespaces, or use networks ['host']")
    mode = networks[0] if networks[0] in MODES or networks[0].startswith(CONTAINER_PREFIX) else ""
    if mode:
        for key in ("aliases", "ip", "ports", "publish_all"):
            if fields.get(key):
                raise InvalidArgument(f"Option '{key}' needs a network: it means nothing with network mode '{mode}'")
    if fields.get("ip") and len(networks) > 1:
        raise InvalidArgument("Option 'ip' can only be used with a single network")


@dataclass(frozen=True)
class NetworkOptions:
    """CreateNetwork's options, checked for form."""

    subnet: ipaddress.IPv4Network | None = None
    gateway: ipaddress.IPv4Address | None = None
    internal: bool = False
    dns: bool = True


def parse_network_options(options: dict[str, Any]) -> NetworkOptions:
    known = ("subnet", "gateway", "internal", "dns")
    for key in options:
        if key not in known:
            raise InvalidArgument(f"Unknown network option '{key}': known options are {', '.join(known)}")
    for key in ("internal", "dns"):
        if key in options and not isinstance(options[key], bool):
            raise InvalidArgument(f"Network option '{key}' must be a boolean, not {options[key]!r}")
    for key in ("subnet", "gateway"):
        if key in options and not isinstance(options[key], str):
            raise InvalidArgument(f"Network option '{key}' must be a string, not {options[key]!r}")
    subnet = parse_subnet(options["subnet"]) if "subnet" in options else None
    gateway = None
    if "gateway" in options:
        if subnet is None:
            raise InvalidArgument("Network option 'gateway' needs a subnet to belong to")
        gateway = parse_gateway(options["gateway"], subnet)
    return NetworkOptions(subnet=subnet, gateway=gateway, internal=bool(options.get("internal", False)),
                          dns=bool(options.get("dns", True)))


def ports_of(specs: tuple[str, ...]) -> list[PortMapping]:
    return [parse_port(spec) for spec in specs]


__all__ = ["CONTAINER_OPTIONS", "NONE", "HOST", "NetworkOptions", "parse_network_options", "parse_port", "ports_of",
           "settle"]
