"""Containers in a user namespace of their own (create option userns "auto"): root inside is a range of host ids
of the container's, the image's layers are seen through idmapped mounts, exec enters the same namespace."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError
from quilt_agent.userns import RANGE_SIZE

ERR = "org.quilt.Runtime.Error."
SLEEPER = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"]


def host_ids(pid: int) -> tuple[int, int]:
    """The real uid and gid of a host process, as the host sees them."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


async def test_root_inside_is_the_containers_first_host_id(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), SLEEPER, {"userns": "auto"})
    props = await client.properties(path)
    inside, first, count = (int(x) for x in props["UserNamespace"].split(":"))
    assert inside == 0 and count == RANGE_SIZE and first >= 524288
    assert host_ids(props["MainPID"]) == (first, first)
    out = await client.exec(path, ["/bin/sh", "-c", "id -u; id -g; cat /proc/self/uid_map; ls -ln /bin/busybox"])
    assert out.exit_code == 0, out
    uid, gid, uid_map, busybox = out.stdout.decode().splitlines()
    assert (uid, gid) == ("0", "0") and uid_map.split() == ["0", str(first), str(RANGE_SIZE)]
    assert busybox.split()[2:4] == ["0", "0"]  # the image's root-owned files are root's inside
    # What root writes is its own, in the container's layer, under the range on the host.
    out = await client.exec(path, ["/bin/sh", "-c", "echo x > /new && mkdir -p /home/u && chown 1000:1000 /home/u"])
    assert out.exit_code == 0, out
    upper = Path("/var/lib/quilt/containers") / props["Id"] / "upper"
    assert (os.stat(upper / "new").st_uid, os.stat(upper / "home/u").st_uid) == (first, first + 1000)
    await client.remove(path, force=True)


async def test_two_containers_never_share_ids_and_a_host_container_keeps_the_hosts(
        client: Client, busybox_tar: Path, name: str) -> None:
    one = await client.run_container(f"{name}-1", str(busybox_tar), SLEEPER, {"userns": "auto"})
    two = await client.run_container(f"{name}-2", str(busybox_tar), SLEEPER, {"userns": "auto"})
    host = await client.run_container(f"{name}-h", str(busybox_tar), SLEEPER, {})
    firsts = [int((await client.properties(p))["UserNamespace"].split(":")[1]) for p in (one, two)]
    assert abs(firsts[0] - firsts[1]) >= RANGE_SIZE
    props = await client.properties(host)
    assert props["UserNamespace"] == "host" and host_ids(props["MainPID"]) == (0, 0)
    for p in (one, two, host):
        await client.remove(p, force=True)


async def test_root_inside_cannot_do_what_needs_the_hosts_root(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), SLEEPER, {"userns": "auto"})
    script = ("mount -t tmpfs x /mnt 2>/dev/null && echo mounted; hostname other 2>/dev/null && echo renamed; "
              "ip link set lo down 2>/dev/null && echo down; cat /proc/1/root/etc/shadow 2>/dev/null | head -1; "
              "echo done")
    out = await client.exec(path, ["/bin/sh", "-c", script])
    assert out.stdout.decode().split() == ["done"], out
    await client.remove(path, force=True)


@pytest.mark.parametrize("options, word", [
    ({"userns": "private"}, "userns"),
    ({"userns": "auto", "volumes": ["data:/data"]}, "volumes"),
    ({"userns": "auto", "setup": ["sh: true"]}, "setup"),
])
async def test_bad_userns_options_are_refused_by_name(client: Client, busybox_tar: Path, name: str,
                                                     options: dict, word: str) -> None:
    with pytest.raises(ClientError) as caught:
        await client.create_container(name, str(busybox_tar), ["/bin/true"], options)
    assert caught.value.name == ERR + "InvalidArgument" and word in caught.value.message, caught.value
    assert name not in [c.name for c in await client.list_containers()]
