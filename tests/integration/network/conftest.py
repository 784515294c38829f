"""What the network tests share: running a script in a container, the test host's network state (to compare
before and after), an "upstream" namespace playing the internet, an image with iputils' ping.

Every packet stays inside namespaces the test host made: the test host's own (no route out of it but the
upstream veth) and those below it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from quilt_agent.client import Client
from tests.integration.cleanup import NETWORK_GONE, Cleanup
from tests.integration.waiting import until, until_now

ERR = "org.quilt.Runtime.Error."
END = "END"
UPSTREAM_NS = "qtest-upstream"
HOST_ADDRESS = "192.0.2.1"  # the test host's own address (TEST-NET-1), on its veth to the upstream
UPSTREAM_ADDRESS = "192.0.2.2"
# Ends at once on SIGTERM, so removals do not wait for the SIGKILL fallback.
SLEEPER = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"]


@dataclass
class Output:
    exit_code: int
    stdout: list[str]
    stderr: list[str]


async def logs_until_end(client: Client, path: str, timeout: float = 15.0) -> tuple[list[str], list[str]]:
    out: list[str] = []
    err: list[str] = []

    async def ended() -> bool:
        lines = await client.get_logs(path, {})
        out[:] = [line.text for line in lines if line.stream == "stdout"]
        err[:] = [line.text for line in lines if line.stream == "stderr"]
        return END in out and END in err

    await until(ended, lambda: f"no {END} in the logs: stdout {out}, stderr {err}", timeout)
    return out[:out.index(END)], err[:err.index(END)]


async def run(client: Client, name: str, image: Path | str, script: str, options: dict | None = None) -> Output:
    """Run a shell script to its end in a new container; its exit code and output."""
    wrapped = f"{script}\nrc=$?; echo {END}; echo {END} >&2; exit $rc"
    path = await client.run_container(name, str(image), ["/bin/sh", "-c", wrapped], options or {})
    code = await client.wait(path)
    out, err = await logs_until_end(client, path)
    return Output(code, out, err)


async def start(client: Client, name: str, image: Path | str, command: list[str] | None = None,
                options: dict | None = None) -> str:
    return await client.run_container(name, str(image), command or SLEEPER, options or {})


async def address(client: Client, path: str, network: str = "quilt") -> str:
    found = [a for n, a in (await client.properties(path))["Addresses"] if n == network]
    assert found, f"no address on {network}"
    return found[0]


def sh(*args: str, check: bool = True, timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout, input=input)


def snapshot() -> dict[str, Any]:
    """The test host's links, addresses, nftables ruleset and /run/netns, without what changes by itself
    (handles, counters, indexes)."""
    links = json.loads(sh("ip", "-j", "-d", "link").stdout)
    addrs = json.loads(sh("ip", "-j", "addr").stdout)
    ruleset = json.loads(sh("nft", "-j", "list", "ruleset").stdout)["nftables"]

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("handle", "metainfo")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    netns = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    return {
        "links": sorted((l["ifname"], l.get("linkinfo", {}).get("info_kind", ""), l.get("master", ""),
                         "UP" in l.get("flags", [])) for l in links),
        "addresses": sorted((a["ifname"], i["local"], i["prefixlen"]) for a in addrs for i in a.get("addr_info", [])),
        "nft": [strip(item) for item in ruleset if "metainfo" not in item],
        "netns": [n for n in netns if n.startswith("quilt-")],
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
    }


def same(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [f"{key}: before {before[key]}, after {after[key]}" for key in before if before[key] != after[key]]


async def eventually_same(before: dict[str, Any], timeout: float = 5.0) -> None:
    await until(lambda: not same(before, snapshot()), lambda: "\n".join(same(before, snapshot())), timeout,
                interval=0.05)


@pytest.fixture
async def networks(client: Client) -> AsyncIterator[list[str]]:
    """Names of networks the test creates; removed (with their containers) afterwards."""
    made: list[str] = []
    yield made
    cleanup = Cleanup("networks")
    for name in made:
        await cleanup.attempt(f"remove network {name}", client.remove_network(name, True), NETWORK_GONE)
    await cleanup.attempt("list networks", networks_left(client, made, cleanup))
    cleanup.report()


async def networks_left(client: Client, made: list[str], cleanup: Cleanup) -> None:
    cleanup.left("networks", [n.name for n in await client.list_networks() if n.name in made])


@pytest.fixture(scope="session")
def ping_image(busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox image with iputils' ping and its libraries: busybox 1.35's ping only opens raw sockets
    (CAP_NET_RAW), iputils' falls back to the unprivileged ICMP sockets that ping_group_range allows."""
    ping = shutil.which("ping")
    if ping is None:
        pytest.fail("iputils-ping is not installed: make setup installs it")
    out = tmp_path_factory.mktemp("images") / "ping.tar"
    libs = [line.split("=>")[-1].split("(")[0].strip() for line in sh("ldd", ping).stdout.splitlines()]
    libs = [lib for lib in libs if lib.startswith("/")]
    with tarfile.open(busybox_tar) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        for path in [ping, *libs]:
            info = tarfile.TarInfo("./usr/lib/quilt-test" + path if path != ping else "./usr/lib/quilt-test/ping")
            real = os.path.realpath(path)
            info.size = os.path.getsize(real)
            info.mode = 0o755
            with open(real, "rb") as f:
                dst.addfile(info, f)
    return out


def ping_command(target: str, count: int = 1) -> str:
    """The shell command that runs iputils' ping from ping_image (no file capabilities: unprivileged)."""
    lib = "/usr/lib/quilt-test"
    loader = next(p for p in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1") if os.path.exists(p))
    return (f"{lib}{loader} --library-path {lib}/lib/x86_64-linux-gnu:{lib}/lib/aarch64-linux-gnu:{lib}/lib "
            f"{lib}/ping -c {count} -W 2 {target}")


@pytest.fixture
def upstream() -> Iterator[str]:
    """A namespace playing the internet: a veth from the test host (HOST_ADDRESS) to it (UPSTREAM_ADDRESS), the
    test host's default route through it, and an HTTP server there answering with the client's address."""
    sh("ip", "netns", "add", UPSTREAM_NS)
    server = None
    try:
        sh("ip", "link", "add", "qtup0", "type", "veth", "peer", "name", "qtup1", "netns", UPSTREAM_NS)
        sh("ip", "addr", "add", f"{HOST_ADDRESS}/24", "dev", "qtup0")
        sh("ip", "link", "set", "qtup0", "up")
        inside = ["ip", "netns", "exec", UPSTREAM_NS]
        sh(*inside, "ip", "addr", "add", f"{UPSTREAM_ADDRESS}/24", "dev", "qtup1")
        sh(*inside, "ip", "link", "set", "qtup1", "up")
        sh(*inside, "ip", "link", "set", "lo", "up")
        sh("ip", "route", "add", "default", "via", UPSTREAM_ADDRESS)
        code = ("import http.server as h\n"
                "class H(h.BaseHTTPRequestHandler):\n"
                "    def do_GET(self):\n"
                "        body = ('client=' + self.client_address[0] + '\\n').encode()\n"
                "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
                "        self.end_headers(); self.wfile.write(body)\n"
                "    def log_message(self, *a): pass\n"
                f"h.HTTPServer(('{UPSTREAM_ADDRESS}', 80), H).serve_forever()\n")
        server = subprocess.Popen([*inside, "/usr/bin/python3", "-c", code])
        until_now(lambda: sh(*inside, "ss", "-Htln", "sport = :80", check=False).stdout.strip(),
                  "the upstream HTTP server did not start")
        yield UPSTREAM_ADDRESS
    finally:
        if server is not None:
            server.kill()
            server.wait()
        sh("ip", "route", "del", "default", check=False)
        sh("ip", "link", "del", "qtup0", check=False)
        sh("ip", "netns", "del", UPSTREAM_NS, check=False)
