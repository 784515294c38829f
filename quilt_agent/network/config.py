"""The agent's network settings: the [network] table of /etc/quilt/quilt.conf (TOML).

    [network]
    default_subnet = "10.89.0.0/24"     # the subnet of the default network "quilt"
    dns_servers = ["192.0.2.53"]        # where names the containers ask for are forwarded;
                                        # default: the nameservers of the host's /etc/resolv.conf

QUILT_CONFIG names another file (tests). A missing file means the defaults; a bad one is logged and ignored,
so a typo never keeps the agent (and its running containers' management) from starting.
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from quilt_agent.config import config_path, read_table
from quilt_agent.errors import InvalidArgument
from quilt_agent.network.model import DEFAULT_SUBNET, parse_subnet

log = logging.getLogger("quilt.network")

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
HOST_HOSTS = Path("/etc/hosts")


@dataclass(frozen=True)
class NetworkConfig:
    default_subnet: str = DEFAULT_SUBNET
    dns_servers: tuple[str, ...] = ()  # empty: the host's resolv.conf


def load(path: Path | None = None) -> NetworkConfig:
    path = path or config_path()
    data = read_table(path, "network")
    config = NetworkConfig()
    try:
        if "default_subnet" in data:
            config = NetworkConfig(str(parse_subnet(str(data["default_subnet"]))), config.dns_servers)
        if "dns_servers" in data:
            servers = tuple(str(ipaddress.IPv4Address(str(s))) for s in data["dns_servers"])
            config = NetworkConfig(config.default_subnet, servers)
    except (InvalidArgument, ValueError, TypeError) as e:
        log.error("ignoring the [network] settings of %s: %s", path, e)
        return NetworkConfig()
    return config


def host_nameservers(path: Path = HOST_RESOLV_CONF) -> list[str]:
    """The IPv4 nameservers of a resolv.conf, in order."""
    servers = []
    try:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    servers.append(str(ipaddress.IPv4Address(parts[1])))
                except ValueError:
                    pass  # IPv6 nameservers: the responder forwards over IPv4 only
    except OSError:
        pass
    return servers
