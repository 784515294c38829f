"""Quilt's own nftables table, `inet quilt`: published ports, egress masquerade, isolation. No other table is
ever touched.

The whole table is rendered from the state (active networks, published ports) and replaced in one atomic
`nft -j -f -` batch (add table; delete table; add table; chains; rules), so a change never shows half a
ruleset, and recovery after a crash is one more render. With no active network the table is deleted.

    prerouting  (nat, dstnat)   fib daddr type local -> jump published      from other machines and containers
    output      (nat, dstnat)   fib daddr type local -> jump published      from the host itself, 127.0.0.1 too
    published                   [ip daddr HOSTIP] tcp dport P dnat ip to ADDRESS:PORT
    postrouting (nat, srcnat)   from 127.0.0.0/8 to a container (DNATed): masquerade (with route_localnet)
                                hairpin, a container to a published port on its own network: masquerade
                                egress of a non-internal network's subnet: masquerade
    forward     (filter)        between two Quilt bridges: drop; in or out of an internal network: drop
    input       (filter)        from an internal network's bridge to the host itself: replies to the host's
                                own connections and UDP 53 to its gateway (Quilt's name server) pass,
                                TCP 53 to its gateway is reset, everything else dropped

Traffic that other machines send to a published port is not masqueraded: the container sees the real client.

The input chain is what keeps an internal network internal: a packet for one of the host's own addresses (the
gateway, another network's gateway, any other interface's) takes the input hook, not forward, so without it
every host service listening on 0.0.0.0 would answer. A normal network's containers reach the host as
Podman's do (through the gateway, to whatever listens there or on 0.0.0.0): that is left to the admin's own
rules, in a table of their own.

Written by hand: the JSON batch (libnftables' documented input, nft's -j) and the call of the `nft` tool.
Debian's python3-nftables binding imports only into /usr/bin/python3 itself, not a venv, and pyroute2's
nftables module cannot express DNAT; one `nft` process per change (a few ms) happens only when a network
comes or goes or a container with published ports does, never on a plain container's start.
"""
from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from dataclasses import dataclass
from typing import Any

from quilt_agent.network.model import Network, PortMapping

log = logging.getLogger("quilt.network")

FAMILY, TABLE = "inet", "quilt"
NFT = "nft"


@dataclass(frozen=True)
class Published:
    mapping: PortMapping
    address: str  # the container's address on its first network
    bridge: str


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _prefix(cidr: str) -> dict[str, Any]:
    addr, length = cidr.split("/")
    return {"prefix": {"addr": addr, "len": int(length)}}


def _names(names: list[str]) -> Any:
    return names[0] if len(names) == 1 else {"set": names}


def _chain(name: str, hook: str = "", kind: str = "", prio: int = 0) -> dict[str, Any]:
    chain: dict[str, Any] = {"family": FAMILY, "table": TABLE, "name": name}
    if hook:
        chain.update({"type": kind, "hook": hook, "prio": prio, "policy": "accept"})
    return {"add": {"chain": chain}}


def _rule(chain: str, *expr: dict[str, Any], comment: str = "") -> dict[str, Any]:
    rule: dict[str, Any] = {"family": FAMILY, "table": TABLE, "chain": chain, "expr": list(expr)}
    if comment:
        rule["comment"] = comment
    return {"add": {"rule": rule}}


def render(networks: list[Network], published: list[Published]) -> dict[str, Any]:
    """The nft JSON batch that makes the table what the state says."""
    table = {"table": {"family": FAMILY, "name": TABLE}}
    commands: list[dict[str, Any]] = [{"add": table}, {"delete": table}]
    if not networks:
        return {"nftables": commands}
    commands.append({"add": table})
    commands += [
        _chain("prerouting", "prerouting", "nat", -100),
        _chain("output", "output", "nat", -100),
        _chain("postrouting", "postrouting", "nat", 100),
        _chain("forward", "forward", "filter", 0),
        _chain("input", "input", "filter", 0),
        _chain("published"),
    ]
    local = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
    for chain in ("prerouting", "output"):
        commands.append(_rule(chain, local, {"jump": {"target": "published"}}))
    for p in sorted(published, key=lambda p: p.mapping):
        m = p.mapping
        expr = [_match(_payload("ip", "daddr"), m.host_ip)] if m.host_ip else []
        expr += [_match(_payload(m.protocol, "dport"), m.host_port),
                 {"dnat": {"family": "ip", "addr": p.address, "port": m.container_port}}]
        commands.append(_rule("published", *expr, comment=str(m)))
    bridges = [n.bridge for n in networks]
    dnat = _match({"ct": {"key": "status"}}, "dnat", "in")
    for n in networks:
        out = _match(_meta("oifname"), n.bridge)
        commands.append(_rule("postrouting", out, _match(_payload("ip", "saddr"), _prefix("127.0.0.0/8")), dnat,
                              {"masquerade": None}, comment=f"{n.name}: from the host's loopback"))
        commands.append(_rule("postrouting", out, _match(_payload("ip", "saddr"), _prefix(n.subnet)), dnat,
                              {"masquerade": None}, comment=f"{n.name}: hairpin"))
        if not n.internal:
            commands.append(_rule("postrouting", _match(_payload("ip", "saddr"), _prefix(n.subnet)),
                                  _match(_meta("oifname"), _names(bridges), "!="), {"masquerade": None},
                                  comment=f"{n.name}: egress"))
    for n in networks:
        others = [b for b in bridges if b != n.bridge]
        if others:
            commands.append(_rule("forward", _match(_meta("iifname"), n.bridge),
                                  _match(_meta("oifname"), _names(others)), {"drop": None},
                                  comment=f"{n.name}: isolated from the other networks"))
        if n.internal:
            commands.append(_rule("forward", _match(_meta("iifname"), n.bridge),
                                  _match(_meta("oifname"), n.bridge, "!="), {"drop": None},
                                  comment=f"{n.name}: internal, no egress"))
            commands.append(_rule("forward", _match(_meta("oifname"), n.bridge),
                                  _match(_meta("iifname"), n.bridge, "!="), {"drop": None},
                                  comment=f"{n.name}: internal, no ingress"))
            commands += _closed_host(n)
    return {"nftables": commands}


def _closed_host(n: Network) -> list[dict[str, Any]]:
    """The input rules of an internal network: the host answers its containers with nothing but the name
    server, and still gets the replies to the connections it opens itself (to a container's address, to a
    port published from its loopback)."""
    bridge = _match(_meta("iifname"), n.bridge)
    rules = [_rule("input", bridge, _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                   {"accept": None}, comment=f"{n.name}: internal, replies to the host")]
    if n.dns:
        gateway = _match(_payload("ip", "daddr"), n.gateway)
        rules.append(_rule("input", bridge, gateway, _match(_payload("udp", "dport"), 53), {"accept": None},
                           comment=f"{n.name}: internal, its name server"))
        # Quilt's name server is UDP only. A resolver retries over TCP after a truncated answer: a reset fails
        # it at once, as on a normal network where nothing listens there, where a drop would leave it waiting.
        rules.append(_rule("input", bridge, gateway, _match(_payload("tcp", "dport"), 53),
                           {"reject": {"type": "tcp reset"}}, comment=f"{n.name}: internal, no DNS over TCP"))
    rules.append(_rule("input", bridge, {"drop": None}, comment=f"{n.name}: internal, the host closed"))
    return rules


class Firewall:
    """Applies renders one at a time; a render asked for while one runs is merged into the next."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._applied: str | None = None

    async def apply(self, batch: dict[str, Any]) -> None:
        text = json.dumps(batch)
        async with self._lock:
            if text == self._applied:
                return  # nothing changed since the last apply (a container without ports came or went)
            try:
                # In a worker thread: forking the agent, a large process with threads, can take the loop tens of
                # milliseconds on a loaded host.
                proc = await asyncio.to_thread(subprocess.run, [NFT, "-j", "-f", "-"], input=text.encode(),
                                               capture_output=True, check=False)
            except FileNotFoundError:
                raise OSError("the nft command is missing: install the nftables package") from None
            if proc.returncode != 0:
                self._applied = None
                raise OSError(f"nft refused Quilt's table: {proc.stderr.decode(errors='replace').strip()}")
            self._applied = text
