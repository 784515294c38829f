"""Containers in a user namespace of their own (create option userns "auto"): root inside is a range of host ids
of the container's, the image's layers are seen through idmapped mounts, exec enters the same namespace."""
from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError
from quilt_agent.userns import RANGE_SIZE
from tests.integration.terminal import exec_on_a_terminal

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
    host = await client.run_container(f"{name}-h", str(busybox_tar), SLEEPER, {"userns": "host"})
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
              "unshare -U true 2>/dev/null && echo unshared; unshare -m true 2>/dev/null && echo unshared; "
              "echo done")
    out = await client.exec(path, ["/bin/sh", "-c", script])
    assert out.stdout.decode().split() == ["done"], out
    await client.remove(path, force=True)


@pytest.mark.parametrize("options, word", [
    ({"userns": "private"}, "userns"),
])
async def test_bad_userns_options_are_refused_by_name(client: Client, busybox_tar: Path, name: str,
                                                     options: dict, word: str) -> None:
    with pytest.raises(ClientError) as caught:
        await client.create_container(name, str(busybox_tar), ["/bin/true"], options)
    assert caught.value.name == ERR + "InvalidArgument" and word in caught.value.message, caught.value
    assert name not in [c.name for c in await client.list_containers()]


async def test_a_named_volume_keeps_the_ids_the_container_sees(client: Client, busybox_tar: Path, name: str) -> None:
    volume = f"{name}-vol"
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "echo x > /data/f; chown 1000 /data"],
                                      {"userns": "auto", "volumes": [f"{volume}:/data"]})
    assert await client.wait(path) == 0
    mountpoint = Path((await client.volume_properties(await client.get_volume(volume)))["Mountpoint"])
    # On the volume's side, the container's root is root: another container, with another range, reads it so.
    assert (os.stat(mountpoint / "f").st_uid, os.stat(mountpoint).st_uid) == (0, 1000)
    other = await client.run_container(f"{name}-2", str(busybox_tar), ["/bin/sh", "-c", "ls -ln /data"],
                                       {"userns": "auto", "volumes": [f"{volume}:/data"]})
    assert await client.wait(other) == 0
    await client.remove(path)
    await client.remove(other)
    await client.remove_volume(volume)


async def test_a_bound_host_directory_shows_its_real_owners(client: Client, busybox_tar: Path, name: str,
                                                           tmp_path: Path) -> None:
    (tmp_path / "mine").write_text("x")
    os.chown(tmp_path / "mine", 1000, 1000)
    path = await client.run_container(name, str(busybox_tar), SLEEPER,
                                      {"userns": "auto", "volumes": [f"{tmp_path}:/host"]})
    out = await client.exec(path, ["/bin/sh", "-c", "stat -c '%u %g' /host/mine /host"])
    assert out.stdout.decode().split("\n")[:2] == ["1000 1000", "0 0"], out
    await client.remove(path, force=True)


@pytest.mark.parametrize("running", [True, False], ids=["running", "stopped"])
async def test_cp_in_and_out_keeps_the_owners_the_container_sees(client: Client, busybox_tar: Path, name: str,
                                                                 tmp_path: Path, running: bool) -> None:
    path = await client.run_container(name, str(busybox_tar), SLEEPER if running else ["/bin/true"],
                                      {"userns": "auto"})
    first = int((await client.properties(path))["UserNamespace"].split(":")[1])
    if not running:
        assert await client.wait(path) == 0
    (tmp_path / "in").write_text("in")
    os.chown(tmp_path / "in", 1000, 1000)
    await client.copy_to(path, str(tmp_path / "in"), "/in")
    await client.copy_from(path, "/bin/busybox", str(tmp_path / "busybox"))
    upper = Path("/var/lib/quilt/containers") / (await client.properties(path))["Id"] / "upper"
    assert os.stat(upper / "in").st_uid == first + 1000  # the container's uid 1000
    assert os.stat(tmp_path / "busybox").st_uid == 0  # the image's root-owned file, as the container sees it
    await client.remove(path, force=True)


async def test_a_terminal_exec_and_a_low_published_port_work_inside(client: Client, busybox_tar: Path,
                                                                   name: str) -> None:
    path = await client.run_container(name, str(busybox_tar),
                                      ["/bin/sh", "-c", "echo hi > /i; exec httpd -f -p 80 -h /"],
                                      {"userns": "auto", "ports": ["8089:80/tcp"]})
    code, out = await exec_on_a_terminal(client, path, "test -t 0 && echo tty")
    assert code == 0 and out.replace("\r", "").split() == ["tty"], out
    # The terminals made inside belong to its tty group (5): the mount's option, in host ids.
    props = await client.properties(path)
    first = int(props["UserNamespace"].split(":")[1])
    with open(f"/proc/{props['MainPID']}/mounts") as f:
        devpts = next(line for line in f if line.startswith("devpts "))
    assert f"gid={first + 5}," in devpts, devpts
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", 8089), 5)
    writer.write(b"GET /i HTTP/1.0\r\n\r\n")
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert reply.endswith(b"hi\n"), reply
    await client.remove(path, force=True)


async def test_setup_steps_run_as_root_inside_and_their_cache_serves_a_host_container(
        client: Client, busybox_tar: Path, name: str) -> None:
    step = f"sh: echo {name} > /etc/made && chown 1000 /etc/made"
    first = await client.run_container(f"{name}-1", str(busybox_tar), ["/bin/true"],
                                       {"userns": "auto", "setup": [step]})
    assert await client.wait(first) == 0
    second = await client.run_container(f"{name}-2", str(busybox_tar), ["/bin/sh", "-c", "stat -c %u /etc/made"],
                                        {"setup": [step]})
    assert await client.wait(second) == 0
    props = await client.properties(second)
    assert props["SetupImage"], props  # from the cache the first one filled
    lines = [line.text for line in await client.get_logs(second, {})]
    assert "1000" in lines, lines
    await client.remove(first)
    await client.remove(second)
    await client.remove_image(props["SetupImage"])  # the cache it made: the next tests count images


async def test_a_setuid_binary_made_inside_is_harmless_on_the_host(client: Client, busybox_tar: Path,
                                                                  name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), SLEEPER, {"userns": "auto"})
    props = await client.properties(path)
    first = int(props["UserNamespace"].split(":")[1])
    out = await client.exec(path, ["/bin/sh", "-c", "cp /bin/busybox /suid && chmod 4755 /suid && ls -ln /suid"])
    assert out.exit_code == 0 and out.stdout.decode().split()[2] == "0", out  # root's setuid program, inside
    st = os.stat(Path("/var/lib/quilt/containers") / props["Id"] / "upper/suid")
    assert st.st_uid == first and st.st_mode & 0o4000  # on the host: setuid to an id no host user has
    await client.remove(path, force=True)


async def test_fifty_creates_at_once_get_fifty_ranges(client: Client, busybox_tar: Path, name: str) -> None:
    paths = await asyncio.gather(*(client.create_container(f"{name}-{i}", str(busybox_tar), ["/bin/true"],
                                                           {"userns": "auto"}) for i in range(50)))
    firsts = sorted([int((await client.properties(p))["UserNamespace"].split(":")[1]) for p in paths])
    assert all(b - a >= RANGE_SIZE for a, b in zip(firsts, firsts[1:])), firsts
    await asyncio.gather(*(client.remove(p) for p in paths))


async def test_host_tools_name_a_containers_root_until_its_removal(client: Client, busybox_tar: Path,
                                                                   name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), SLEEPER, {})  # a user namespace by default
    props = await client.properties(path)
    first = int(props["UserNamespace"].split(":")[1])
    record = f"quilt-{name}-0"
    assert subprocess.run(["getent", "passwd", record], capture_output=True, text=True).stdout.split(":")[2] == str(first)
    # By id: Quilt's userdb record, or nss-mymachines' name for the machine's shifted ids when that comes first in
    # nsswitch.conf (libnss-mymachines puts it there): both name this container.
    group = subprocess.run(["getent", "group", str(first)], capture_output=True, text=True).stdout
    assert group.split(":")[0] in (record, f"vg-{props['MachineName']}-0"), group
    ps = subprocess.run(["ps", "-o", "user:64=", "-p", str(props["MainPID"])], capture_output=True, text=True)
    assert ps.stdout.strip() in (record, f"vu-{props['MachineName']}-0")
    await client.remove(path, force=True)
    assert subprocess.run(["getent", "passwd", record], capture_output=True).returncode == 2  # not found


async def test_a_host_directory_whose_filesystem_refuses_idmapped_mounts_fails_the_start_by_name(
        client: Client, busybox_tar: Path, name: str) -> None:
    """The test host's root is an overlayfs (tests/testhost.py), which takes no idmapped mount: the container
    does not start, rather than run with the directory's files unmapped."""
    source = Path(f"/srv/quilt-userns-{name}")
    source.mkdir()
    try:
        with pytest.raises(ClientError) as caught:
            await client.run_container(name, str(busybox_tar), ["/bin/true"], {"volumes": [f"{source}:/data"]})
        assert caught.value.name == ERR + "ContainerFailed", caught.value
        assert f"refused an idmapped mount of {source}" in caught.value.message, caught.value
        assert "--userns host" in caught.value.message
        path = await client.run_container(f"{name}-h", str(busybox_tar), ["/bin/true"],
                                          {"volumes": [f"{source}:/data"], "userns": "host"})
        assert await client.wait(path) == 0
    finally:
        source.rmdir()
