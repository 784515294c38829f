"""The pure parts of networking: options, address allocation, the nftables render, the name server's answers,
the container files. No kernel, no bus."""
from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from dnslib import RCODE, DNSRecord

from quilt_agent.errors import AddressInUse, InvalidArgument
from quilt_agent.model import parse_options
from quilt_agent.network import files
from quilt_agent.network.dns import Responder
from quilt_agent.network.firewall import Published, render
from quilt_agent.network.ipam import Allocator
from quilt_agent.network.model import Network, PortMapping, host_ifname
from quilt_agent.network.options import parse_network_options, parse_port

NET = Network(id="a" * 64, name="quilt", subnet="10.89.0.0/24", gateway="10.89.0.1", bridge="quilt0")


# --- options ---------------------------------------------------------------------------------------


def test_the_default_is_the_quilt_network() -> None:
    assert parse_options({})["networks"] == ("quilt",)


@pytest.mark.parametrize("options, networks, namespaces_without_net", [
    ({"networks": ["host"]}, ("host",), True),
    ({"namespaces": ["pid", "mount"]}, ("host",), True),
    ({"networks": ["none"]}, ("none",), False),
    ({"networks": ["container:web"]}, ("container:web",), False),
    ({"networks": ["a", "b"]}, ("a", "b"), False),
])
def test_network_modes(options: dict, networks: tuple, namespaces_without_net: bool) -> None:
    fields = parse_options(options)
    assert fields["networks"] == networks
    assert ("net" not in fields.get("namespaces", ("net",))) == namespaces_without_net


@pytest.mark.parametrize("options, words", [
    ({"networks": []}, "empty"),
    ({"networks": ["none", "quilt"]}, "cannot be combined"),
    ({"networks": ["quilt", "quilt"]}, "twice"),
    ({"networks": ["container:"]}, "container:NAME"),
    ({"networks": ["bad name"]}, "Invalid network name"),
    ({"networks": "quilt"}, "list of strings"),
    ({"networks": ["quilt"], "namespaces": ["pid", "mount"]}, "need the net namespace"),
    ({"networks": ["none"], "ports": ["80:80"]}, "needs a network"),
    ({"networks": ["host"], "aliases": ["x"]}, "needs a network"),
    ({"networks": ["a", "b"], "ip": "10.0.0.2"}, "single network"),
    ({"ip": "10.0.0.300"}, "not an IPv4 address"),
    ({"ip": "::1"}, "not an IPv4 address"),
    ({"aliases": ["under_score"]}, "not a DNS name"),
    ({"aliases": ["-x"]}, "not a DNS name"),
    ({"ports": ["1:2:3:4"]}, "expected"),
    ({"ports": ["80:0"]}, "between 1 and 65535"),
    ({"ports": ["80:65536"]}, "between 1 and 65535"),
    ({"ports": ["80:80/sctp"]}, "unknown protocol"),
    ({"ports": ["1.2.3:80:80"]}, "not an IPv4 address"),
    ({"ports": ["x:80"]}, "not a number"),
    ({"ports": ["8080:80", "0.0.0.0:8080:81"]}, "same host port"),
])
def test_bad_network_options(options: dict, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        parse_options(options)


def test_ports_are_normalised() -> None:
    fields = parse_options({"ports": ["8080:80", "127.0.0.1:53:53/UDP", "0.0.0.0:9000:90/tcp"]})
    assert fields["ports"] == ("8080:80/tcp", "127.0.0.1:53:53/udp", "9000:90/tcp")
    assert parse_port("127.0.0.1:53:53/udp") == PortMapping("udp", "127.0.0.1", 53, 53)


def test_port_conflicts() -> None:
    every = PortMapping("tcp", "", 80, 80)
    assert every.conflicts_with(PortMapping("tcp", "127.0.0.1", 80, 81))
    assert not every.conflicts_with(PortMapping("udp", "", 80, 80))
    assert not PortMapping("tcp", "127.0.0.1", 80, 80).conflicts_with(PortMapping("tcp", "192.0.2.1", 80, 80))


def test_network_options() -> None:
    opts = parse_network_options({"subnet": "10.1.0.0/16", "gateway": "10.1.255.254", "internal": True})
    assert opts.subnet == ipaddress.IPv4Network("10.1.0.0/16") and str(opts.gateway) == "10.1.255.254"
    assert opts.internal and opts.dns
    for bad, words in [({"subnet": "10.1.0.1/16"}, "host bits"), ({"subnet": "fd00::/64"}, "IPv4"),
                       ({"subnet": "10.0.0.0/31"}, "prefix length"), ({"gateway": "10.0.0.1"}, "needs a subnet"),
                       ({"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}, "not a host address"),
                       ({"internal": 1}, "boolean"), ({"mtu": 1500}, "Unknown network option"),
                       ({"subnet": "127.0.0.0/8"}, "not a subnet for hosts")]:
        with pytest.raises(InvalidArgument, match=words):
            parse_network_options(bad)


def test_host_veth_names_fit_ifnamsiz() -> None:
    assert len(host_ifname("f" * 64, 15)) <= 15


# --- address allocation ----------------------------------------------------------------------------


def test_addresses_are_never_given_twice_and_go_round() -> None:
    ipam = Allocator()
    small = Network(id="b" * 64, name="small", subnet="10.9.0.0/29", gateway="10.9.0.1", bridge="quilt1")
    got = [ipam.take(small, f"c{i}") for i in range(5)]
    assert got == ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
    with pytest.raises(AddressInUse, match="no free address"):
        ipam.take(small, "c5")
    ipam.release(small.id, "10.9.0.3")
    assert ipam.take(small, "c6") == "10.9.0.3"


def test_a_released_address_is_not_the_next_one_given() -> None:
    ipam = Allocator()
    first = ipam.take(NET, "a")
    ipam.release(NET.id, first)
    assert ipam.take(NET, "b") != first


def test_a_wanted_address_is_checked() -> None:
    ipam = Allocator()
    assert ipam.take(NET, "a", "10.89.0.9") == "10.89.0.9"
    with pytest.raises(AddressInUse):
        ipam.take(NET, "b", "10.89.0.9")
    with pytest.raises(AddressInUse, match="gateway"):
        ipam.take(NET, "b", "10.89.0.1")
    for bad in ("10.89.0.0", "10.89.0.255", "10.90.0.2"):
        with pytest.raises(InvalidArgument):
            ipam.take(NET, "b", bad)
    ipam.restore(NET.id, "10.89.0.2", "c")
    assert ipam.take(NET, "d") not in ("10.89.0.2", "10.89.0.9")


# --- nftables --------------------------------------------------------------------------------------


def _rules(batch: dict) -> list[dict]:
    return [c["add"]["rule"] for c in batch["nftables"] if "add" in c and "rule" in c["add"]]


def test_no_active_network_deletes_the_table() -> None:
    batch = render([], [])
    assert batch["nftables"] == [{"add": {"table": {"family": "inet", "name": "quilt"}}},
                                 {"delete": {"table": {"family": "inet", "name": "quilt"}}}]


def test_only_quilts_table_is_touched() -> None:
    internal = Network(id="c" * 64, name="int", subnet="10.89.1.0/24", gateway="10.89.1.1", bridge="quilt1",
                       internal=True)
    batch = render([NET, internal], [Published(PortMapping("tcp", "", 8080, 80), "10.89.0.2", "quilt0")])
    for command in batch["nftables"]:
        (what,) = command.values()
        (kind,) = what.keys()
        assert what[kind].get("family") == "inet"
        assert what[kind].get("table", what[kind].get("name")) == "quilt"
    comments = [r.get("comment", "") for r in _rules(batch)]
    assert "quilt: egress" in comments and "int: egress" not in comments  # internal: no masquerade
    assert "int: internal, no egress" in comments and "8080:80/tcp" in comments
    dnat = next(r for r in _rules(batch) if r.get("comment") == "8080:80/tcp")
    assert {"dnat": {"family": "ip", "addr": "10.89.0.2", "port": 80}} in dnat["expr"]



def _input(batch: dict) -> list[str]:
    return [r.get("comment", "") for r in _rules(batch) if r["chain"] == "input"]


def test_an_internal_network_closes_the_host_but_its_name_server() -> None:
    internal = Network(id="c" * 64, name="int", subnet="10.89.1.0/24", gateway="10.89.1.1", bridge="quilt1",
                       internal=True)
    assert _input(render([NET, internal], [])) == [
        "int: internal, replies to the host", "int: internal, its name server", "int: internal, no DNS over TCP",
        "int: internal, the host closed"]
    dns = next(r for r in _rules(render([internal], [])) if r.get("comment") == "int: internal, its name server")
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                      "right": "10.89.1.1"}} in dns["expr"]
    quiet = Network(id="d" * 64, name="quiet", subnet="10.89.2.0/24", gateway="10.89.2.1", bridge="quilt2",
                    internal=True, dns=False)
    assert _input(render([quiet], [])) == ["quiet: internal, replies to the host", "quiet: internal, the host closed"]


def test_a_normal_network_leaves_the_host_to_the_admin() -> None:
    assert _input(render([NET], [])) == []


# --- the name server -------------------------------------------------------------------------------


class FakeDirectory:
    def __init__(self) -> None:
        self.names = {"web": ["10.89.0.2"], "www": ["10.89.0.2"]}

    def lookup(self, network_id: str, name: str) -> list[str]:
        return self.names.get(name, [])

    def reverse(self, network_id: str, address: str) -> str | None:
        return "web" if address == "10.89.0.2" else None


def _answer(qname: str, qtype: str = "A") -> DNSRecord | None:
    return Responder(NET, FakeDirectory(), lambda: []).answer(DNSRecord.question(qname, qtype))


def test_names_and_aliases_bare_or_under_the_domain() -> None:
    for qname in ("web", "WEB.", "www.dns.quilt"):
        reply = _answer(qname)
        assert reply is not None and [str(rr.rdata) for rr in reply.rr] == ["10.89.0.2"] and reply.header.aa


def test_unknown_names_are_forwarded_but_not_under_the_domain() -> None:
    assert _answer("example.org") is None
    assert _answer("nobody") is None
    reply = _answer("nobody.dns.quilt")
    assert reply is not None and reply.header.rcode == RCODE.NXDOMAIN


def test_reverse_and_other_types() -> None:
    reply = _answer("2.0.89.10.in-addr.arpa", "PTR")
    assert reply is not None and [str(rr.rdata) for rr in reply.rr] == ["web.dns.quilt."]
    reply = _answer("9.0.89.10.in-addr.arpa", "PTR")
    assert reply is not None and reply.header.rcode == RCODE.NXDOMAIN
    assert _answer("1.1.168.192.in-addr.arpa", "PTR") is None  # not our subnet: forwarded
    reply = _answer("web", "AAAA")
    assert reply is not None and reply.header.rcode == RCODE.NOERROR and not reply.rr


# --- the container's files -------------------------------------------------------------------------


def test_files(tmp_path: Path) -> None:
    names = files.Names(hostname="box", names=("web", "www"), addresses=("10.89.0.2",), nameservers=("10.89.0.1",),
                        gateway="10.89.0.1")
    mounts = files.write(tmp_path, names)
    assert mounts == [(str(tmp_path / f), f"/etc/{f}") for f in ("resolv.conf", "hosts", "hostname")]
    assert (tmp_path / "resolv.conf").read_text() == "search dns.quilt\nnameserver 10.89.0.1\n"
    assert "10.89.0.2\tbox web www\n" in (tmp_path / "hosts").read_text()
    assert "10.89.0.1\thost.quilt.internal\n" in (tmp_path / "hosts").read_text()
    assert (tmp_path / "hostname").read_text() == "box\n"
    alone = files.hosts(files.Names(hostname="box", names=("box",), addresses=(), nameservers=()))
    assert "127.0.1.1\tbox\n" in alone
