"""quiltctl network create|ls|inspect|rm, run --network/--ip/--network-alias/-p, icc ping and icc exec, as a
script runs them."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from quilt_agent.client import Client
from tests.integration.network.conftest import HOST_ADDRESS

QUILTCTL = shutil.which("quiltctl") or "/usr/bin/quiltctl"


def quiltctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QUILTCTL, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def ok(*args: str) -> str:
    result = quiltctl(*args)
    assert result.returncode == 0, f"quiltctl {' '.join(args)} -> {result.returncode}: {result.stderr}"
    return result.stdout


async def test_network_create_ls_inspect_rm(client: Client, name: str, networks: list[str]) -> None:
    networks.append(f"{name}-n")
    assert ok("network", "create", "--subnet", "10.124.0.0/24", "--internal", f"{name}-n").strip() == f"{name}-n"
    table = ok("network", "ls").splitlines()
    assert table[0].split() == ["NAME", "SUBNET", "GATEWAY", "BRIDGE", "INTERNAL", "DNS", "CONTAINERS"]
    row = next(line.split() for line in table if line.startswith(f"{name}-n "))
    assert row[1:3] == ["10.124.0.0/24", "10.124.0.1"] and row[4] == "yes"
    (props,) = json.loads(ok("network", "inspect", f"{name}-n"))
    assert props["Name"] == f"{name}-n" and props["Internal"] is True and props["Containers"] == []
    assert [n["Name"] for n in json.loads(ok("network", "ls", "--json"))][0] == "quilt"
    again = quiltctl("network", "create", f"{name}-n")
    assert again.returncode == 125 and "already in use by another network" in again.stderr
    assert ok("network", "rm", f"{name}-n").strip() == f"{name}-n"
    gone = quiltctl("network", "inspect", f"{name}-n")
    assert gone.returncode == 125 and f"No network '{name}-n' known" in gone.stderr
    default = quiltctl("network", "rm", "quilt")
    assert default.returncode == 125 and "cannot be removed" in default.stderr


async def test_run_with_network_flags_and_icc(client: Client, busybox_tar: Path, name: str,
                                              networks: list[str], upstream: str) -> None:
    networks.append(f"{name}-n")
    ok("network", "create", "--subnet", "10.125.0.0/24", f"{name}-n")
    web = ok("run", "-d", "--name", f"{name}-web", "--network", f"{name}-n", "--ip", "10.125.0.10",
             "--network-alias", "site", "-p", "8200:80", str(busybox_tar), "--",
             "/bin/sh", "-c", "echo via-cli > /i; exec httpd -f -p 80 -h /").strip()
    (props,) = json.loads(ok("inspect", web))
    assert [tuple(a) for a in props["Addresses"]] == [(f"{name}-n", "10.125.0.10")]
    assert props["Ports"] == ["8200:80/tcp"]
    out = ok("run", "--rm", "--network", f"{name}-n", str(busybox_tar), "wget", "-q", "-O-", "http://site/i")
    assert out.strip() == "via-cli"
    ok("run", "-d", "--name", f"{name}-cli", "--network", f"{name}-n", str(busybox_tar), "sleep", "300")
    ping = quiltctl("icc", "ping", "-c", "2", f"{name}-cli", f"{name}-web")
    assert ping.returncode == 0, ping.stderr
    assert "10.125.0.10" in ping.stdout and "2 received" in ping.stdout
    ok("run", "-d", "--name", f"{name}-far", str(busybox_tar), "sleep", "300")  # on quilt: not reachable
    far = quiltctl("icc", "ping", "-c", "1", f"{name}-far", f"{name}-web")
    assert far.returncode == 1 and "0 received" in far.stdout
    ex = subprocess.run([QUILTCTL, "icc", "exec", f"{name}-cli", "--", "wget", "-q", "-O-", "http://site/i"],
                        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert ex.returncode == 0 and ex.stdout.strip() == "via-cli", ex.stderr
    assert subprocess.run(["busybox", "wget", "-q", "-O-", f"http://{HOST_ADDRESS}:8200/i"], capture_output=True,
                          text=True, timeout=30).stdout.strip() == "via-cli"
    bad = quiltctl("run", "-d", "-p", "8200:80", str(busybox_tar), "true")
    assert bad.returncode == 125 and "8200" in bad.stderr
