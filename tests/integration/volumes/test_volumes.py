"""Volumes, bind mounts, tmpfs and a read-only root, through the real bus in the test host."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from dbus_fast import Variant

from quilt_agent.client import Client, ClientError
from tests.integration.volumes.conftest import ERR, HOSTDIR, VOLUMES, run


async def test_named_volume_outlives_its_container(vclient: Client, name: str, busybox_tar: Path) -> None:
    out = await run(vclient, name, busybox_tar, "echo kept > /data/f", {"volumes": ["keep:/data"]})
    assert out.exit_code == 0, out
    assert [n for n, _, _ in await vclient.list_volumes()] == ["keep"]  # made on first use
    out = await run(vclient, name, busybox_tar, "cat /data/f", {"volumes": ["keep:/data"]})
    assert out.stdout == ["kept"]
    (_, mountpoint, path), = await vclient.list_volumes()
    assert mountpoint == str(VOLUMES / "keep" / "_data")
    assert Path(mountpoint, "f").read_text() == "kept\n"
    props = await vclient.volume_properties(path)
    assert props["Name"] == "keep" and props["Mountpoint"] == mountpoint and props["UsedBy"] == []
    assert props["CreatedAt"] > 0 and props["Labels"] == {}


async def test_host_path_bind_read_write_and_read_only(vclient: Client, name: str, busybox_tar: Path,
                                                       tmp_path: Path) -> None:
    (tmp_path / "in").write_text("host\n")
    out = await run(vclient, name, busybox_tar, "cat /h/in; echo back > /h/out",
                    {"volumes": [f"{tmp_path}:/h"]})
    assert out.exit_code == 0 and out.stdout == ["host"], out
    assert (tmp_path / "out").read_text() == "back\n"
    out = await run(vclient, name, busybox_tar, "cat /h/in; echo no > /h/out2",
                    {"volumes": [f"{tmp_path}:/h:ro,nosuid,nodev,noexec"]})
    assert out.exit_code != 0 and out.stdout == ["host"], out
    assert any("Read-only file system" in line for line in out.stderr), out
    assert not (tmp_path / "out2").exists()
    # A named volume read-only too.
    out = await run(vclient, name, busybox_tar, "touch /v/x", {"volumes": ["rov:/v:ro"]})
    assert out.exit_code != 0 and any("Read-only file system" in line for line in out.stderr), out
    # A single file bound.
    out = await run(vclient, name, busybox_tar, "cat /etc/from-host", {"volumes": [f"{tmp_path}/in:/etc/from-host:ro"]})
    assert out.stdout == ["host"], out


async def test_bind_mount_does_not_propagate_to_host(vclient: Client, name: str, busybox_tar: Path,
                                                      tmp_path: Path) -> None:
    await run(vclient, name, busybox_tar, "mkdir -p /h/sub && mount -t tmpfs none /h/sub; grep -c ' /h/sub ' "
                    "/proc/self/mounts", {"volumes": [f"{tmp_path}:/h"]})
    # Whether or not the container may mount (capabilities), nothing appears on the host's side.
    host_mounts = Path("/proc/self/mounts").read_text()
    assert f"{tmp_path}/sub " not in host_mounts


async def test_tmpfs_is_empty_at_each_start_and_sized(vclient: Client, name: str, busybox_tar: Path) -> None:
    path = await vclient.create_container(name, str(busybox_tar), ["/bin/sh", "-c",
                                          "ls -A /scratch; echo x > /scratch/f; df -k /scratch | tail -1; "
                                          "stat -c %a /scratch"], {"tmpfs": ["/scratch:size=2m,mode=0700"]})
    for _ in range(2):
        await vclient.start(path)
        assert await vclient.wait(path) == 0
    lines = [line.text for line in await vclient.get_logs(path, {}) if line.stream == "stdout"]
    assert len(lines) == 4, lines  # ls printed nothing either time: empty at each start
    for df, mode in (lines[0:2], lines[2:4]):
        assert df.split()[1] == "2048", df
        assert mode == "700"


async def test_read_only_root(vclient: Client, name: str, busybox_tar: Path) -> None:
    out = await run(vclient, name, busybox_tar,
                    "touch /tmp/ok && touch /run/ok && touch /v/ok && echo writable; touch /etc/nope",
                    {"read_only": True, "volumes": ["rw:/v"]})
    assert out.stdout == ["writable"], out
    assert out.exit_code != 0 and any("Read-only file system" in line for line in out.stderr), out


@pytest.mark.parametrize("link", ["/evil", "/relevil"])
async def test_symlink_in_image_cannot_redirect_a_mount_to_the_host(vclient: Client, name: str, volume_image: Path,
                                                                    tmp_path: Path, link: str) -> None:
    hostdir = Path(HOSTDIR)
    shutil.rmtree(hostdir, ignore_errors=True)
    hostdir.mkdir()
    (hostdir / "marker").write_text("host\n")
    (tmp_path / "f").write_text("bound\n")
    before = Path("/proc/self/mounts").read_text()
    try:
        out = await run(vclient, name, volume_image, f"cat {link}/x/f; ls {link}; readlink -f {link}/x",
                        {"volumes": [f"{tmp_path}:{link}/x"], "tmpfs": [f"{link}/t"]})
        assert out.exit_code == 0, out
        assert out.stdout[0] == "bound"  # mounted, inside the container's root
        assert "marker" not in out.stdout  # the container's /tmp/quilt-volume-hostdir, not the host's
        assert sorted(os.listdir(hostdir)) == ["marker"]  # nothing made on the host's side
        assert Path("/proc/self/mounts").read_text() == before
    finally:
        shutil.rmtree(hostdir, ignore_errors=True)


async def test_copy_up_of_image_content_into_a_new_volume(vclient: Client, name: str, volume_image: Path) -> None:
    out = await run(vclient, name, volume_image, "cat /seed/hello.txt; echo more > /seed/more",
                    {"volumes": ["seeded:/seed"]})
    assert out.stdout == ["from the image"], out
    data = VOLUMES / "seeded" / "_data"
    assert (data / "hello.txt").read_text() == "from the image\n"
    assert oct(data.stat().st_mode & 0o777) == oct(0o750)
    # Not a new volume any more: its content is kept as it is, not copied over again.
    (data / "hello.txt").unlink()
    out = await run(vclient, name, volume_image, "ls /seed", {"volumes": ["seeded:/seed"]})
    assert out.stdout == ["more"], out


async def test_anonymous_volume_is_kept_across_restarts_and_goes_with_its_container(
        vclient: Client, name: str, volume_image: Path) -> None:
    path = await vclient.create_container(name, str(volume_image), ["/bin/sh", "-c", "cat /seed/*; date >> /seed/runs"],
                                          {"volumes": ["/seed"]})
    ((anon, mountpoint, vpath),) = await vclient.list_volumes()
    props = await vclient.volume_properties(vpath)
    assert len(anon) == 64 and props["UsedBy"] == [name] and props["Id"] == anon  # one string, as Podman shows
    for _ in range(2):
        await vclient.start(path)
        assert await vclient.wait(path) == 0
    assert (Path(mountpoint) / "hello.txt").read_text() == "from the image\n"  # copied up, as a named one
    assert len((Path(mountpoint) / "runs").read_text().splitlines()) == 2  # the same volume at each start
    await vclient.remove(path)
    assert await vclient.list_volumes() == [] and not (VOLUMES / anon).exists()


async def test_a_refused_create_leaves_no_anonymous_volume(vclient: Client, name: str, busybox_tar: Path) -> None:
    first = await vclient.create_container(name, str(busybox_tar), ["true"], {"ports": ["18080:80"]})
    with pytest.raises(ClientError) as err:
        await vclient.create_container(name + "b", str(busybox_tar), ["true"],
                                       {"volumes": ["/data"], "ports": ["18080:80"]})
    assert err.value.name == ERR + "PortInUse"
    assert await vclient.list_volumes() == [] and list(VOLUMES.iterdir()) == []
    await vclient.remove(first)


async def test_volume_in_use_is_refused_unless_forced(vclient: Client, name: str, busybox_tar: Path) -> None:
    path = await vclient.create_container(name, str(busybox_tar), ["true"], {"volumes": ["busy:/b"]})
    vpath = await vclient.get_volume("busy")
    assert (await vclient.volume_properties(vpath))["UsedBy"] == [name]
    with pytest.raises(ClientError) as err:
        await vclient.remove_volume("busy")
    assert err.value.name == ERR + "VolumeInUse" and name in err.value.message
    assert await vclient.prune_volumes() == 0  # in use: prune keeps it
    await vclient.remove_volume("busy", force=True)  # removes the container first, as podman volume rm -f
    assert [c for c in await vclient.list_containers() if c.path == path] == []
    assert not (VOLUMES / "busy").exists()


async def test_nothing_left_after_volume_rm_and_prune(vclient: Client, name: str, busybox_tar: Path) -> None:
    vpath = await vclient.create_volume("gone", {"labels": {"a": "b"}})
    assert (await vclient.volume_properties(vpath))["Labels"] == {"a": "b"}
    out = await run(vclient, name, busybox_tar, "head -c 100000 /dev/zero > /g/f", {"volumes": ["gone:/g"]})
    assert out.exit_code == 0
    await vclient.remove_volume("gone")
    assert not (VOLUMES / "gone").exists()
    assert await vclient.list_volumes() == []
    with pytest.raises(ClientError) as err:
        await vclient.volume_properties(vpath)
    assert err.value.name == ERR + "NoSuchVolume"
    await vclient.create_volume("p1")
    out = await run(vclient, name, busybox_tar, "head -c 100000 /dev/zero > /g/f", {"volumes": ["p1:/g"]})
    assert await vclient.prune_volumes() >= 100000
    assert await vclient.list_volumes() == [] and list(VOLUMES.iterdir()) == []


async def test_volume_survives_agent_restart(vclient: Client, name: str, busybox_tar: Path) -> None:
    await vclient.create_volume("durable", {"labels": {"k": "v"}})
    await run(vclient, name, busybox_tar, "echo still > /d/f", {"volumes": ["durable:/d"]})
    subprocess.run(["systemctl", "restart", "quilt-agent"], check=True)
    async with Client() as c2:
        vpath = await c2.get_volume("durable")
        assert (await c2.volume_properties(vpath))["Labels"] == {"k": "v"}
        out = await run(c2, name, busybox_tar, "cat /d/f", {"volumes": ["durable:/d"]})
        assert out.stdout == ["still"]
        await c2.remove_volume("durable")


BAD = [
    ({"volumes": ["relative:data"]}, "InvalidArgument", "absolute"),
    ({"volumes": ["v:/a/../etc"]}, "InvalidArgument", ".."),
    ({"volumes": ["v:/proc/x"]}, "InvalidArgument", "/proc"),
    ({"volumes": ["v:/sys"]}, "InvalidArgument", "/sys"),
    ({"volumes": ["v:/dev"]}, "InvalidArgument", "/dev"),
    ({"volumes": ["v:/"]}, "InvalidArgument", "root"),
    ({"volumes": ["v"]}, "InvalidArgument", "SOURCE:DEST"),
    ({"volumes": ["v:/a:exec"]}, "InvalidArgument", "exec"),
    ({"volumes": ["v:/a:ro,rw"]}, "InvalidArgument", "ro and rw"),
    ({"volumes": ["-bad:/a"]}, "InvalidArgument", "-bad"),
    ({"volumes": ["v:/a", "w:/a"]}, "InvalidArgument", "same destination"),
    ({"volumes": ["/no/such/quilt/path:/a"]}, "NoSuchPath", "/no/such/quilt/path"),
    ({"tmpfs": ["/t:size=lots"]}, "InvalidArgument", "lots"),
    ({"tmpfs": ["/t:mode=999"]}, "InvalidArgument", "mode=999"),
    ({"tmpfs": ["t"]}, "InvalidArgument", "absolute"),
    ({"tmpfs": ["/dev/shm"]}, "InvalidArgument", "/dev"),
]


@pytest.mark.parametrize("options,error,mentions", BAD)
async def test_bad_inputs_are_named_errors(vclient: Client, name: str, busybox_tar: Path, options: dict,
                                           error: str, mentions: str) -> None:
    with pytest.raises(ClientError) as err:
        await vclient.create_container(name, str(busybox_tar), ["true"], options)
    assert err.value.name == ERR + error and mentions in err.value.message, err.value
    assert await vclient.list_containers() == [] and await vclient.list_volumes() == []


async def test_bad_volume_calls(vclient: Client) -> None:
    for call, error in ((vclient.create_volume("bad/name"), "InvalidArgument"),
                        (vclient.create_volume("x", {"size": Variant("t", 1)}), "InvalidArgument"),
                        (vclient.get_volume("nope"), "NoSuchVolume"),
                        (vclient.remove_volume("nope"), "NoSuchVolume")):
        with pytest.raises(ClientError) as err:
            await call
        assert err.value.name == ERR + error, err.value
    await vclient.create_volume("twice")
    with pytest.raises(ClientError) as err:
        await vclient.create_volume("twice")
    assert err.value.name == ERR + "NameInUse"


async def test_prune_never_takes_a_volume_a_create_is_making(vclient: Client, name: str, busybox_tar: Path) -> None:
    creates = [asyncio.ensure_future(vclient.create_container(f"{name}-{i}", str(busybox_tar), ["true"],
                                                              {"volumes": [f"{name}-race{i}:/r"]}))
               for i in range(10)]
    while not all(c.done() for c in creates):
        await vclient.prune_volumes()
    for create in creates:
        path = await create
        await vclient.start(path)
        assert await vclient.wait(path) == 0
    assert len(await vclient.list_volumes()) == 10
