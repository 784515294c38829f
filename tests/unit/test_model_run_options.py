"""The create options behind Podman's run flags, as pure rules: their parsing, the capability set they make,
the image defaults they change (entrypoint, stop signal, exposed ports), the /etc files they write, and which
of them polkit is told are privileged."""
from __future__ import annotations

import json
import signal
from dataclasses import replace

import pytest

from quilt_agent import capabilities
from quilt_agent.bus import access
from quilt_agent.errors import InvalidArgument
from quilt_agent.images import oci
from quilt_agent.images.service import container_defaults
from quilt_agent.images.store import Image
from quilt_agent.model import ContainerSpec, capability_mask, parse_options
from quilt_agent.network import files
from quilt_agent.network.options import parse_port, parse_ports

SPEC = ContainerSpec(name="web", image="debian:12", image_id="ab" * 32, command=("true",))
IMAGE = Image(id="c" * 64, digest="sha256:" + "c" * 64, config_digest="sha256:" + "c" * 64, names=("app:v1",),
              layers=(), layer_dirs=(), size=0, created_at=0, source="")
CAP = capabilities.CAPABILITIES


def config(**run: object) -> oci.ImageConfig:
    doc = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "config": run}
    return oci.parse_config(json.dumps(doc).encode())


# --- parsing ---------------------------------------------------------------------------------------


def test_the_new_options_are_normalised() -> None:
    fields = parse_options({
        "cap_add": ["cap_net_raw", "NET_RAW", " sys_time "], "cap_drop": ["Cap_Chown"], "stop_signal": "usr1",
        "add_hosts": ["db:10.0.0.5", "v6:[fd00::1]", "v6b:FD00:0:0::2"], "dns_servers": ["1.1.1.1", "1.1.1.1"],
        "dns_search": ["example.com"], "dns_options": ["ndots:2", "edns0"], "entrypoint": ["/bin/sh", "-c"],
        "publish_all": True,
    })
    assert fields["cap_add"] == ("NET_RAW", "SYS_TIME") and fields["cap_drop"] == ("CHOWN",)
    assert fields["stop_signal"] == signal.SIGUSR1
    assert fields["add_hosts"] == ("db:10.0.0.5", "v6:fd00::1", "v6b:fd00::2")
    assert fields["dns_servers"] == ("1.1.1.1",)
    assert (fields["entrypoint"], fields["publish_all"]) == (("/bin/sh", "-c"), True)


@pytest.mark.parametrize("text, number", [("SIGTERM", 15), ("term", 15), ("9", 9), ("SIGRTMIN", signal.SIGRTMIN),
                                          ("RTMIN+3", signal.SIGRTMIN + 3), ("SIGRTMAX-1", signal.SIGRTMAX - 1)])
def test_a_stop_signal_is_a_name_or_a_number(text: str, number: int) -> None:
    assert parse_options({"stop_signal": text})["stop_signal"] == number


@pytest.mark.parametrize("entrypoint, expected", [([""], ()), ([], ()), (["/bin/x", ""], ("/bin/x", ""))])
def test_an_empty_entrypoint_clears_the_images(entrypoint: list[str], expected: tuple[str, ...]) -> None:
    assert parse_options({"entrypoint": entrypoint})["entrypoint"] == expected


@pytest.mark.parametrize("options, words", [
    ({"cap_add": ["NET_RAWR"]}, "'NET_RAWR'"),
    ({"cap_add": "NET_RAW"}, "list of strings"),
    ({"cap_drop": [""]}, "not a capability"),
    ({"cap_drop": [1]}, "list of strings"),
    ({"cap_add": ["ALL"], "cap_drop": ["all"]}, "all capabilities cannot be both added and dropped"),
    ({"cap_add": ["NET_RAW"], "cap_drop": ["CAP_NET_RAW"]}, "capability 'NET_RAW' cannot be both"),
    ({"stop_signal": 15}, "a string"),
    ({"stop_signal": "SIGNOPE"}, "'SIGNOPE'"),
    ({"stop_signal": "0"}, "not a signal"),
    ({"stop_signal": "65"}, "not a signal"),
    ({"stop_signal": "RTMIN+x"}, "not a signal"),
    ({"stop_signal": "RTMAX+1"}, "not a signal"),
    ({"add_hosts": ["db"]}, "HOST:IP"),
    ({"add_hosts": [":10.0.0.1"]}, "HOST:IP"),
    ({"add_hosts": ["db:10.0.0"]}, "'10.0.0' is not an IP address"),
    ({"add_hosts": ["db:"]}, "is not an IP address"),
    ({"dns_servers": ["resolver"]}, "not an IP address"),
    ({"dns_servers": "1.1.1.1"}, "list of strings"),
    ({"dns_search": ["a b"]}, "not a DNS name"),
    ({"dns_search": [".", "x.example"]}, "cannot be combined"),
    ({"dns_options": ["ndots 2"]}, "resolv.conf option"),
    ({"dns_options": [""]}, "resolv.conf option"),
    ({"entrypoint": ["", "x"]}, "its program is empty"),
    ({"entrypoint": ["/bin/sh\0"]}, "NUL"),
    ({"publish_all": "yes"}, "a boolean"),
    ({"publish_all": True, "networks": ["none"]}, "needs a network"),
])
def test_bad_values_are_invalid_argument_naming_them(options: dict, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words.replace("(", r"\(").replace("+", r"\+")):
        parse_options(options)


# --- capabilities -------------------------------------------------------------------------------------


@pytest.mark.parametrize("add, drop, expected", [
    ((), (), capabilities.DEFAULT),
    (("NET_RAW",), ("CHOWN",), tuple(sorted({*capabilities.DEFAULT, "NET_RAW"} - {"CHOWN"}, key=CAP.get))),
    (("NET_BIND_SERVICE",), ("ALL",), ("NET_BIND_SERVICE",)),
    ((), ("ALL",), ()),
    (("ALL",), ("SYS_ADMIN",), tuple(sorted(set(CAP) - {"SYS_ADMIN"}, key=CAP.get))),
])
def test_the_set_is_the_default_plus_added_less_dropped(add: tuple, drop: tuple, expected: tuple) -> None:
    assert capabilities.effective(add, drop) == tuple(sorted(expected, key=CAP.get))


def test_the_mask_has_a_bit_per_capability() -> None:
    assert capability_mask(SPEC) == capabilities.DEFAULT_MASK == 0x800405fb  # Podman 4+'s CapEff as root
    assert capability_mask(replace(SPEC, cap_drop=("ALL",), cap_add=("KILL",))) == 1 << 5


@pytest.mark.parametrize("add, drop, privileged", [
    ((), ("ALL",), ()),
    (("CHOWN", "KILL"), (), ()),  # in the default set already
    (("NET_RAW",), (), ("cap-add:NET_RAW",)),
    (("SYS_ADMIN", "NET_ADMIN"), ("CHOWN",), ("cap-add:NET_ADMIN", "cap-add:SYS_ADMIN")),
    (("NET_RAW",), ("ALL",), ("cap-add:NET_RAW",)),
])
def test_capabilities_beyond_the_default_set_are_privileged_each_by_name(add: tuple, drop: tuple,
                                                                        privileged: tuple) -> None:
    assert access.privileged_options(replace(SPEC, cap_add=add, cap_drop=drop)) == privileged


def test_add_all_names_every_capability_beyond_the_default_set() -> None:
    named = access.privileged_options(replace(SPEC, cap_add=("ALL",)))
    assert len(named) == len(CAP) - len(capabilities.DEFAULT) and "cap-add:SYS_MODULE" in named


def test_a_port_left_to_the_agent_is_not_a_privileged_one() -> None:
    assert access.privileged_options(replace(SPEC, ports=("0:80/tcp", "80:80/tcp"))) == ("port:80:80/tcp",)


# --- ports --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, normalised", [
    ("80", "0:80/tcp"), ("53/udp", "0:53/udp"), (":80", "0:80/tcp"), ("0:80", "0:80/tcp"),
    ("127.0.0.1::80", "127.0.0.1:0:80/tcp"), ("8080:80", "8080:80/tcp"),
])
def test_a_port_without_a_host_port_is_left_to_the_agent(text: str, normalised: str) -> None:
    assert str(parse_port(text)) == normalised


def test_ports_left_to_the_agent_conflict_with_none() -> None:
    assert parse_ports(["80", "80", "8080:80"]) == ("0:80/tcp", "0:80/tcp", "8080:80/tcp")


# --- image defaults -----------------------------------------------------------------------------------------


def test_an_entrypoint_given_replaces_the_images_and_drops_its_cmd() -> None:
    c = config(Entrypoint=["/bin/tini", "--"], Cmd=["/bin/sh"])
    assert container_defaults(IMAGE, c, (), {"entrypoint": ("/bin/echo",)}).command == ("/bin/echo",)
    assert container_defaults(IMAGE, c, ("x",), {"entrypoint": ("/bin/echo",)}).command == ("/bin/echo", "x")
    assert container_defaults(IMAGE, c, ("/bin/date",), {"entrypoint": ()}).command == ("/bin/date",)
    assert "entrypoint" not in container_defaults(IMAGE, c, (), {"entrypoint": ("/bin/echo",)}).fields
    with pytest.raises(InvalidArgument, match="'app:v1' is run with an empty entrypoint"):
        container_defaults(IMAGE, c, (), {"entrypoint": ()})


def test_a_stop_signal_given_wins_over_the_images() -> None:
    c = config(Cmd=["x"], StopSignal="SIGINT")
    assert container_defaults(IMAGE, c, (), {"stop_signal": signal.SIGUSR1}).fields["stop_signal"] == signal.SIGUSR1
    assert container_defaults(IMAGE, c, (), {}).fields["stop_signal"] == signal.SIGINT


def test_publish_all_adds_each_exposed_port_not_published_yet() -> None:
    c = config(Cmd=["x"], ExposedPorts={"80/tcp": {}, "53/udp": {}, "8080": {}, "9000-9010/tcp": {},
                                        "132/sctp": {}})
    assert c.exposed_ports == ("80/tcp", "53/udp", "8080/tcp")
    fields = container_defaults(IMAGE, c, (), {"publish_all": True, "ports": ("9999:8080/tcp",)}).fields
    assert fields["ports"] == ("9999:8080/tcp", "0:80/tcp", "0:53/udp") and "publish_all" not in fields
    assert "ports" not in container_defaults(IMAGE, c, (), {}).fields


# --- /etc files -----------------------------------------------------------------------------------------------


NAMES = files.Names(hostname="web", names=("web",), addresses=("10.89.0.2",), nameservers=("10.89.0.1",),
                    gateway="10.89.0.1")


def test_added_hosts_come_before_the_networks_lines() -> None:
    text = files.hosts(replace(NAMES, add_hosts=("db:10.0.0.5", "v6:fd00::1")))
    assert text.splitlines()[:3] == ["10.0.0.5\tdb", "fd00::1\tv6", "127.0.0.1\tlocalhost"]


def test_dns_servers_and_search_replace_the_networks_and_options_are_added() -> None:
    assert files.resolv_conf(NAMES) == "search dns.quilt\nnameserver 10.89.0.1\n"
    text = files.resolv_conf(replace(NAMES, dns_servers=("192.0.2.1",), dns_options=("ndots:2",)))
    assert text == "search dns.quilt\nnameserver 192.0.2.1\noptions ndots:2\n"
    assert files.resolv_conf(replace(NAMES, dns_search=("a.example", "b.example"))) == (
        "search a.example b.example\nnameserver 10.89.0.1\n")
    assert files.resolv_conf(replace(NAMES, dns_search=(".",))) == "nameserver 10.89.0.1\n"
