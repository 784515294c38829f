"""Published ports answer on the host's 127.0.0.1 and its own addresses, from the host and from another machine
(the upstream namespace); the container sees the real client; a port published twice is PortInUse."""
from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError
from tests.integration.network.conftest import ERR, HOST_ADDRESS, UPSTREAM_NS, address, run, sh, start
from tests.integration.waiting import until

# busybox httpd answers /cgi-bin/ip with the address the request came from.
WEB = ["/bin/sh", "-c",
       "mkdir -p /www/cgi-bin; echo published > /www/index.html; "
       "printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip; "
       "chmod +x /www/cgi-bin/ip; exec httpd -f -p 80 -h /www"]


def http_get(host: str, port: int, path: str = "/index.html", timeout: float = 5.0) -> str:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    text = data.decode().replace("\r\n", "\n")
    body = text.split("\n\n", 1)[1].strip() if "\n\n" in text else ""
    # busybox httpd listens on :: and gives a CGI "[::ffff:192.0.2.2]" for an IPv4 client.
    return body.removeprefix("[::ffff:").removesuffix("]")


async def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    async def answers() -> bool:
        try:
            await asyncio.to_thread(http_get, host, port)
            return True
        except OSError:
            return False

    await until(answers, f"nothing answers on {host}:{port}", timeout, interval=0.05)


async def test_a_published_port_answers_on_loopback_and_the_hosts_address(client: Client, busybox_tar: Path,
                                                                          name: str, upstream: str) -> None:
    web = await start(client, name, busybox_tar, WEB, {"ports": ["8080:80"]})
    assert (await client.properties(web))["Ports"] == ["8080:80/tcp"]
    await wait_listening("127.0.0.1", 8080)
    assert await asyncio.to_thread(http_get, "127.0.0.1", 8080) == "published"
    assert await asyncio.to_thread(http_get, HOST_ADDRESS, 8080) == "published"
    # From the host itself, the container sees the host's address; from 127.0.0.1 the gateway (masqueraded:
    # a 127.0.0.1 source cannot leave the host).
    assert await asyncio.to_thread(http_get, HOST_ADDRESS, 8080, "/cgi-bin/ip") == HOST_ADDRESS
    assert await asyncio.to_thread(http_get, "127.0.0.1", 8080, "/cgi-bin/ip") == "10.89.0.1"


async def test_another_machine_reaches_the_port_and_is_seen_as_itself(client: Client, busybox_tar: Path, name: str,
                                                                      upstream: str) -> None:
    await start(client, name, busybox_tar, WEB, {"ports": ["8081:80"]})
    await wait_listening("127.0.0.1", 8081)
    out = sh("ip", "netns", "exec", UPSTREAM_NS, "busybox", "wget", "-q", "-O-",
             f"http://{HOST_ADDRESS}:8081/cgi-bin/ip")
    seen = out.stdout.strip().removeprefix("[::ffff:").removesuffix("]")
    assert seen == upstream  # not masqueraded: the container sees the real client


async def test_a_port_bound_to_one_host_address(client: Client, busybox_tar: Path, name: str, upstream: str) -> None:
    await start(client, name, busybox_tar, WEB, {"ports": ["127.0.0.1:8082:80"]})
    await wait_listening("127.0.0.1", 8082)
    with pytest.raises(OSError):
        http_get(HOST_ADDRESS, 8082, timeout=1.0)


async def test_hairpin_a_container_reaches_a_published_port_of_its_own_network(client: Client, busybox_tar: Path,
                                                                               name: str, upstream: str) -> None:
    await start(client, f"{name}-web", busybox_tar, WEB, {"ports": ["8083:80"]})
    await wait_listening("127.0.0.1", 8083)
    out = await run(client, f"{name}-cli", busybox_tar, f"wget -q -O- http://{HOST_ADDRESS}:8083/index.html")
    assert out.stdout == ["published"], out


async def test_udp_port_rule(client: Client, busybox_tar: Path, name: str) -> None:
    # The test image has no UDP server (busybox's nc speaks TCP only): the rule is checked, not the traffic.
    path = await start(client, name, busybox_tar, options={"ports": ["5353:53/udp"]})
    rules = sh("nft", "list", "chain", "inet", "quilt", "published").stdout
    assert f"udp dport 5353 dnat ip to {await address(client, path)}:53" in rules


async def test_a_published_host_port_is_port_in_use_for_the_next(client: Client, busybox_tar: Path,
                                                                 name: str) -> None:
    await client.create_container(f"{name}-a", str(busybox_tar), ["/bin/true"], {"ports": ["8090:80"]})
    for spec in ("8090:81", "127.0.0.1:8090:80", "8090:80/tcp"):
        with pytest.raises(ClientError) as caught:
            await client.create_container(f"{name}-b", str(busybox_tar), ["/bin/true"], {"ports": [spec]})
        assert caught.value.name == ERR + "PortInUse", spec
        assert "8090" in caught.value.message
    # Another protocol, or another port, is free.
    await client.create_container(f"{name}-c", str(busybox_tar), ["/bin/true"], {"ports": ["8090:80/udp"]})
    # Removing the first frees the port.
    await client.remove(await client.get_container(f"{name}-a"))
    await client.create_container(f"{name}-d", str(busybox_tar), ["/bin/true"], {"ports": ["8090:80"]})


@pytest.mark.parametrize("kind, proto", [(socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")])
async def test_a_host_process_on_the_port_is_port_in_use_and_a_published_port_is_held(
        client: Client, busybox_tar: Path, name: str, kind: int, proto: str) -> None:
    with socket.socket(socket.AF_INET, kind) as squatter:
        squatter.bind(("0.0.0.0", 8091))
        if kind == socket.SOCK_STREAM:
            squatter.listen()
        with pytest.raises(ClientError) as caught:
            await client.create_container(name, str(busybox_tar), ["/bin/true"], {"ports": [f"8091:80/{proto}"]})
        assert caught.value.name == ERR + "PortInUse" and "a process of the host" in caught.value.message
    assert await client.list_containers() == []  # nothing half-made
    # Published, the port is the container's: a host process cannot take it until the container is removed.
    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {"ports": [f"8091:80/{proto}"]})
    with socket.socket(socket.AF_INET, kind) as late, pytest.raises(OSError):
        late.bind(("127.0.0.1", 8091))
    await client.remove(path)
    with socket.socket(socket.AF_INET, kind) as late:
        late.bind(("127.0.0.1", 8091))


async def test_the_rules_name_the_port_and_go_with_the_container(client: Client, busybox_tar: Path,
                                                                 name: str) -> None:
    path = await start(client, name, busybox_tar, options={"ports": ["8095:80"]})
    ip = await address(client, path)
    rules = sh("nft", "list", "chain", "inet", "quilt", "published").stdout
    assert f"tcp dport 8095 dnat ip to {ip}:80" in rules
    await client.remove(path, True)
    rules = sh("nft", "list", "chain", "inet", "quilt", "published", check=False).stdout
    assert "8095" not in rules
    tables = sh("nft", "list", "tables").stdout.split("\n")
    assert all(t in ("table inet quilt", "") for t in tables), tables  # never another table
