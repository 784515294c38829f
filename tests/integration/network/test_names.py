"""Containers on the default network find each other by name, through the name server on the gateway."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dnslib import RCODE, DNSRecord

from quilt_agent.client import Client
from tests.integration.network.conftest import address, ping_command, run, sh, start
from tests.integration.waiting import until_now

GATEWAY = "10.89.0.1"


def query(container_path: str, name: str, qtype: str = "A", server: str = GATEWAY) -> DNSRecord:
    """Ask the name server from a container's network namespace (it answers its own subnet only)."""
    netns = f"/run/netns/quilt-{container_path.rsplit('/', 1)[1]}"
    code = ("import socket, sys\nfrom dnslib import DNSRecord\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n"
            f"s.sendto(DNSRecord.question({name!r}, {qtype!r}).pack(), ({server!r}, 53))\n"
            "sys.stdout.write(s.recv(4096).hex())\n")
    out = subprocess.run(["nsenter", f"--net={netns}", sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=20).stdout
    return DNSRecord.parse(bytes.fromhex(out))


async def test_two_containers_ping_each_other_by_name(client: Client, ping_image: Path, name: str) -> None:
    await start(client, f"{name}-a", ping_image)
    out = await run(client, f"{name}-b", ping_image, ping_command(f"{name}-a", 2))
    assert out.exit_code == 0, out
    assert any("2 received" in line for line in out.stdout), out.stdout


async def test_http_between_containers_by_name_and_alias(client: Client, busybox_tar: Path, name: str) -> None:
    web = await start(client, f"{name}-web", busybox_tar,
                      ["/bin/sh", "-c", "echo hello from web > /index.html; exec httpd -f -p 80 -h /"],
                      {"aliases": ["www.example"]})
    script = (f"wget -q -O- http://{name}-web/index.html; "
              "wget -q -O- http://www.example/index.html; "
              f"wget -q -O- http://{name}-web.dns.quilt/index.html")
    out = await run(client, f"{name}-cli", busybox_tar, script)
    assert out.exit_code == 0, out
    assert out.stdout == ["hello from web"] * 3
    assert [tuple(a) for a in (await client.properties(web))["Addresses"]] == [("quilt", await address(client, web))]


async def test_a_name_resolves_right_after_start_and_not_after_removal(client: Client, busybox_tar: Path,
                                                                       name: str) -> None:
    asker = await start(client, f"{name}-asker", busybox_tar)
    asker_ip = await address(client, asker)
    target = await start(client, f"{name}-target", busybox_tar)
    target_ip = await address(client, target)
    answer = query(asker, f"{name}-target")
    assert [str(rr.rdata) for rr in answer.rr] == [target_ip]
    await client.remove(target, True)
    answer = query(asker, f"{name}-target.dns.quilt")
    assert answer.header.rcode == RCODE.NXDOMAIN and not answer.rr
    # The same from inside a container, with busybox's own resolver.
    out = await run(client, f"{name}-check", busybox_tar, f"nslookup {name}-target; nslookup {name}-asker")
    assert any(asker_ip in line for line in out.stdout), out
    assert not any(target_ip in line for line in out.stdout), out


async def test_reverse_lookup_and_other_types(client: Client, busybox_tar: Path, name: str) -> None:
    one = await start(client, f"{name}-one", busybox_tar)
    ip = await address(client, one)
    reverse = ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
    answer = query(one, reverse, "PTR")
    assert [str(rr.rdata) for rr in answer.rr] == [f"{name}-one.dns.quilt."]
    aaaa = query(one, f"{name}-one", "AAAA")
    assert aaaa.header.rcode == RCODE.NOERROR and not aaaa.rr  # known, but no IPv6 address
    assert [str(rr.rdata) for rr in query(one, one.rsplit("/", 1)[1][:12]).rr] == [ip]  # the short id too
    unknown = query(one, "nobody.dns.quilt")
    assert unknown.header.rcode == RCODE.NXDOMAIN and unknown.header.aa


async def test_resolv_conf_hosts_and_hostname_are_bound_with_the_containers_names(client: Client, busybox_tar: Path,
                                                                                  name: str) -> None:
    out = await run(client, name, busybox_tar, "cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; "
                    "cat /etc/hostname; grep -c . /proc/mounts >/dev/null; mount | grep -c ' /etc/'",
                    {"aliases": ["alias1"], "hostname": "box"})
    resolv, hosts, rest = "\n".join(out.stdout).split("\n---\n")
    assert resolv.splitlines() == ["search dns.quilt", f"nameserver {GATEWAY}"]
    lines = hosts.splitlines()
    assert "127.0.0.1\tlocalhost" in lines
    mine = [line for line in lines if "box" in line]
    assert len(mine) == 1 and mine[0].split("\t")[1].split() == ["box", name, "alias1"]
    assert f"{GATEWAY}\thost.quilt.internal" in lines
    assert rest.splitlines() == ["box", "3"]  # three files bound over the image's


async def test_the_network_files_are_bound_not_written_into_the_containers_layer(client: Client, busybox_tar: Path,
                                                                                 name: str) -> None:
    # The files are bound, not written: the container's own layer does not even hold them.
    path = await client.run_container(name, str(busybox_tar), ["/bin/true"], {})
    await client.wait(path)
    cid = (await client.properties(path))["Id"]
    upper = Path("/var/lib/quilt/containers") / cid / "upper" / "etc"
    assert not (upper / "resolv.conf").exists() or (upper / "resolv.conf").stat().st_size == 0
    assert (Path("/var/lib/quilt/containers") / cid / "resolv.conf").read_text().startswith("search dns.quilt")


async def test_names_are_forwarded_to_the_host_resolvers(client: Client, busybox_tar: Path, name: str,
                                                         upstream: str) -> None:
    """A name the network does not know goes to the host's resolv.conf servers: here a dnslib server in the
    upstream namespace."""
    code = ("import socketserver\nfrom dnslib import DNSRecord, RR, A\n"
            "class H(socketserver.BaseRequestHandler):\n"
            "    def handle(self):\n"
            "        data, sock = self.request\n"
            "        q = DNSRecord.parse(data); r = q.reply()\n"
            "        r.add_answer(RR(q.q.qname, rdata=A('192.0.2.77'), ttl=5)); sock.sendto(r.pack(), self.client_address)\n"
            f"socketserver.UDPServer(('{upstream}', 53), H).serve_forever()\n")
    server = subprocess.Popen(["ip", "netns", "exec", "qtest-upstream", sys.executable, "-c", code])
    until_now(lambda: sh("ip", "netns", "exec", "qtest-upstream", "ss", "-Hlun", "sport = :53").stdout.strip(),
              "the upstream name server did not start")
    resolv = Path("/etc/resolv.conf")
    saved = resolv.read_bytes() if resolv.exists() else None
    try:
        if resolv.is_symlink():
            resolv.unlink()
        resolv.write_text(f"nameserver {upstream}\n")
        out = await run(client, name, busybox_tar, "nslookup upstream.example.org")
        assert out.exit_code == 0, out
        assert any("192.0.2.77" in line for line in out.stdout), out
    finally:
        server.kill()
        server.wait()
        if saved is not None:
            resolv.write_bytes(saved)
