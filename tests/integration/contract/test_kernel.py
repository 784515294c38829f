"""The network kernel contract (tests/contract/kernel.py) against the real Kernel (pyroute2, namespaces).

The host side (bridges, veth host ends, ip_forward) is the test host's own network namespace, a throwaway one
the test runner made: the Kernel works on the namespace its worker thread is in, and owned_links reads
/sys/class/net, which shows the namespace sysfs was mounted in, so the host side cannot move to a namespace of
the test's own. The containers' side is a namespace each test makes and removes. Each test's links have names of
its own, so what the agent makes meanwhile is never touched.
"""
from __future__ import annotations

import json
import subprocess
from typing import Any, Iterator

import pytest

from quilt_agent.network.bridge import Kernel
from tests.contract.kernel import KernelContract, LinkView, Where


def ip(where: Where, *args: str) -> Any:
    """`ip -j ARGS` in the namespace: nsenter --net for a path or an fd (passed on), else the test host's."""
    command = ["ip", "-j", *args]
    fds: tuple[int, ...] = ()
    if isinstance(where, int):
        command = ["nsenter", f"--net=/proc/self/fd/{where}", *command]
        fds = (where,)
    elif where is not None:
        command = ["nsenter", f"--net={where}", *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True, pass_fds=fds, timeout=10).stdout
    return json.loads(out or "[]")


class IpProbe:
    async def links(self, where: Where) -> dict[str, LinkView]:
        found = {}
        for link in ip(where, "-d", "addr", "show"):
            addresses = frozenset(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", ())
                                  if a.get("family") == "inet")
            found[link["ifname"]] = LinkView(up="UP" in link["flags"], master=link.get("master"),
                                             alias=link.get("ifalias", ""), mac=link.get("address", ""),
                                             addresses=addresses)
        return found

    async def default_gateway(self, where: Where) -> str | None:
        routes = ip(where, "-4", "route", "show", "default")
        return routes[0].get("gateway") if routes else None


class TestKernel(KernelContract):
    @pytest.fixture
    def kernel(self) -> Iterator[Kernel]:
        kernel = Kernel()
        yield kernel
        kernel.close()

    @pytest.fixture
    def probe(self) -> IpProbe:
        return IpProbe()
