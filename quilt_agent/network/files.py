"""Each container's /etc/resolv.conf, /etc/hosts and /etc/hostname: written under the container's directory
(/var/lib/quilt/containers/ID/) at each start and bind-mounted over the image's, never written into the image
or its layers (Podman does the same)."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from quilt_agent.network.config import HOST_HOSTS, HOST_RESOLV_CONF
from quilt_agent.network.model import DNS_DOMAIN, HOST_GATEWAY_NAME

FILES = ("resolv.conf", "hosts", "hostname")


@dataclass(frozen=True)
class Names:
    """What the files say about one container."""

    hostname: str
    names: tuple[str, ...]  # its name and aliases
    addresses: tuple[str, ...]  # its address on each network, in order
    nameservers: tuple[str, ...]  # the gateways of its DNS-enabled networks
    gateway: str = ""  # of its first network: host.quilt.internal
    host_mode: bool = False  # the host's network: the host's own files
    # The container's own (create options add_hosts, dns_servers, dns_search, dns_options): "HOST:IP" lines added
    # to /etc/hosts; name servers, search domains ("." alone: none) and options over what the network gives.
    add_hosts: tuple[str, ...] = ()
    dns_servers: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()


def resolv_conf(n: Names) -> str:
    text = _network_resolv_conf(n)
    if not (n.dns_servers or n.dns_search or n.dns_options):
        return text
    # As Podman: servers given replace the network's (and Quilt's name server with them: the containers' names
    # are then not resolved), search domains given replace its search line, options are added.
    lines = text.splitlines()
    servers = [f"nameserver {s}" for s in n.dns_servers] or [x for x in lines if x.split()[:1] == ["nameserver"]]
    search = [x for x in lines if x.split()[:1] in (["search"], ["domain"])]
    if n.dns_search:
        search = [] if n.dns_search == (".",) else [f"search {' '.join(n.dns_search)}"]
    options = [x for x in lines if x.split()[:1] == ["options"]]
    if n.dns_options:
        options.append(f"options {' '.join(n.dns_options)}")
    rest = [x for x in lines if x.split()[:1] not in (["nameserver"], ["search"], ["domain"], ["options"])]
    return "\n".join(rest + search + servers + options) + "\n"


def _network_resolv_conf(n: Names) -> str:
    if n.nameservers:
        return f"search {DNS_DOMAIN}\n" + "".join(f"nameserver {s}\n" for s in n.nameservers)
    try:
        text = HOST_RESOLV_CONF.read_text()
    except OSError:
        text = ""
    if n.host_mode:
        return text
    # Without Quilt's name server the host's resolvers are used; those on its loopback (systemd-resolved's
    # 127.0.0.53) cannot be reached from the container's namespace.
    keep = [line for line in text.splitlines() if not (line.split()[:1] == ["nameserver"]
                                                         and _loopback(line.split()[1:2]))]
    return "\n".join(keep) + "\n" if keep else ""


def _loopback(value: list[str]) -> bool:
    try:
        return bool(value) and ipaddress.ip_address(value[0]).is_loopback
    except ValueError:
        return False


def hosts(n: Names) -> str:
    # Podman writes --add-host entries first: the first line naming a host is the one a lookup finds.
    added = "".join(f"{address}\t{host}\n" for host, _, address in (entry.partition(":") for entry in n.add_hosts))
    return added + _network_hosts(n)


def _network_hosts(n: Names) -> str:
    if n.host_mode:
        try:
            return HOST_HOSTS.read_text()
        except OSError:
            pass
    names = " ".join(dict.fromkeys((n.hostname, *n.names)))
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if n.addresses:
        lines += [f"{address}\t{names}" for address in n.addresses]
    elif not n.host_mode:
        lines.append(f"127.0.1.1\t{names}")
    if n.gateway:
        lines.append(f"{n.gateway}\t{HOST_GATEWAY_NAME}")
    return "\n".join(lines) + "\n"


def write(directory: Path, n: Names) -> list[tuple[str, str]]:
    """Write the three files; return (source, target in the container) for the bind mounts."""
    contents = {"resolv.conf": resolv_conf(n), "hosts": hosts(n), "hostname": n.hostname + "\n"}
    mounts = []
    for name in FILES:
        path = directory / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(contents[name])
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        mounts.append((str(path), f"/etc/{name}"))
    return mounts
