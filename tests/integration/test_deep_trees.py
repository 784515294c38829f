"""Trees deeper than Python's recursion limit, made by a container, an image or a crash: removed like any other,
and never a reason for the agent not to start.

Containers make their trees with busybox's sh; the agent's own leftovers are made here, by fd, while it is
stopped. Every level holds an absolute symlink to CANARY, a directory of the test host: a removal that followed
one would empty it. What cannot be removed (a tmpfs mounted inside) is logged and left, and the agent starts.
"""
from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import tarfile
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from quilt_agent.client import Client, ClientError
from tests.integration.test_recovery import STATE, agent_state, journal_of_agent, start_agent, stop_agent
from tests.integration.waiting import until

DEPTH = 1200  # past the ~990 levels shutil.rmtree and os.walk reach before a RecursionError
CONTAINERS = STATE / "containers"
IMAGES = STATE / "images"
VOLUMES = STATE / "volumes"
CANARY = Path("/tmp/quilt-deep-canary")
ERR = "org.quilt.Runtime.Error."


def deep_script(where: str) -> list[str]:
    return ["/bin/sh", "-c", f"cd {where} && i=0; while [ $i -lt {DEPTH} ]; do "
            f"mkdir d && ln -s {CANARY} canary && echo x > f && cd d || exit 1; i=$((i+1)); done"]


def make_deep(top: Path, depth: int = DEPTH) -> None:
    """top/d/d/.../d with a file and a symlink to CANARY at every level, made by fd."""
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for _ in range(depth):
            os.symlink(CANARY, "canary", dir_fd=fd)
            os.close(os.open("f", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=fd))
            os.mkdir("d", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = below
    finally:
        os.close(fd)


def dead_pid() -> int:
    """The pid of a process that has ended: what tmp/ work left by a killed agent is named after."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def mount_tmpfs(where: Path) -> None:
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    (where / "on-tmpfs").write_text("a mount the agent must not empty\n")


def umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], check=False, capture_output=True)


@pytest.fixture(autouse=True)
def canary() -> Iterator[Path]:
    CANARY.mkdir(exist_ok=True)
    (CANARY / "keep").write_text("kept\n")
    yield CANARY
    assert os.listdir(CANARY) == ["keep"] and (CANARY / "keep").read_text() == "kept\n"


@pytest.fixture(autouse=True)
async def agent_back(client: Client) -> AsyncIterator[None]:
    """Whatever a test did to the agent, it runs again before the client fixture cleans up."""
    yield
    if agent_state() != "active":
        start_agent()


async def gone(client: Client, name: str, timeout: float = 60.0) -> None:
    async def absent() -> bool:
        return not any(e.name == name for e in await client.list_containers())

    await until(absent, f"container {name} is still there", timeout, interval=0.05)


# --- containers ----------------------------------------------------------------------------------------------------


async def test_a_container_removed_on_exit_after_making_a_deep_tree_is_removed(
        client: Client, busybox_tar: Path, name: str) -> None:
    before = set(os.listdir(CONTAINERS)) if CONTAINERS.is_dir() else set()
    await client.run_container(name, str(busybox_tar), deep_script("/"), {"remove_on_exit": True})
    await gone(client, name)
    assert set(os.listdir(CONTAINERS)) <= before
    assert "RecursionError" not in journal_of_agent()


async def test_a_stopped_container_with_a_deep_tree_is_removed(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), deep_script("/tmp"), {})
    assert await client.wait(path) == 0
    directory = CONTAINERS / (await client.properties(path))["Id"]
    assert (directory / "upper" / "tmp" / "d" / "d").is_dir()
    await client.remove(path)
    assert not directory.exists()
    with pytest.raises(ClientError):
        await client.properties(path)


async def test_the_agent_starts_and_finishes_a_removal_of_a_deep_container_and_a_stray_directory(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), deep_script("/"), {})
    assert await client.wait(path) == 0
    cid = (await client.properties(path))["Id"]
    stray = CONTAINERS / ("cd" * 32)

    stop_agent()
    # As if the agent had died in the middle of the removal, and of a create.
    with sqlite3.connect(STATE / "quilt.db") as db:
        assert db.execute("UPDATE containers SET state = 'removing' WHERE id = ?", (cid,)).rowcount == 1
    db.close()
    make_deep(stray / "upper")
    start_agent()

    assert agent_state() == "active"
    assert [e.name for e in await client.list_containers()] == []
    assert not (CONTAINERS / cid).exists() and not stray.exists()


async def test_a_container_directory_that_cannot_be_removed_is_logged_and_the_agent_starts(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), deep_script("/"), {})
    assert await client.wait(path) == 0
    cid = (await client.properties(path))["Id"]
    directory = CONTAINERS / cid
    mount = directory / "upper" / "d" / "d" / "mnt"

    stop_agent()
    with sqlite3.connect(STATE / "quilt.db") as db:
        assert db.execute("UPDATE containers SET state = 'removing' WHERE id = ?", (cid,)).rowcount == 1
    db.close()
    mount_tmpfs(mount)
    try:
        start_agent()
        assert agent_state() == "active"
        assert await client.list_containers() == []  # the container is gone; what could not be removed is left
        assert (mount / "on-tmpfs").exists()  # never removed through the mount
        assert not (directory / "upper" / "d" / "d" / "d").exists()  # the rest of the tree is
        assert f"files left in {directory}" in journal_of_agent()
    finally:
        umount(mount)
    # The next start removes what is left.
    stop_agent()
    start_agent()
    assert not directory.exists()


# --- images --------------------------------------------------------------------------------------------------------


def deep_rootfs(out: Path, depth: int, busybox_tar: Path | None = None) -> Path:
    """A rootfs tarball of busybox (if given) and d/d/.../d, depth directories with a file at the bottom."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        if busybox_tar is not None:
            with tarfile.open(busybox_tar) as src:
                for member in src.getmembers():
                    dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        for level in range(1, depth + 1):
            info = tarfile.TarInfo("/".join(["d"] * level))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            dst.addfile(info)
        data = b"at the bottom\n"
        info = tarfile.TarInfo("/".join(["d"] * depth + ["bottom"]))
        info.size = len(data)
        dst.addfile(info, io.BytesIO(data))
    return out


def store_layers() -> set[str]:
    return set(os.listdir(IMAGES / "layers"))


async def test_an_image_deeper_than_the_bound_is_refused_cleanly_and_the_agent_restarts(
        client: Client, tmp_path: Path) -> None:
    tar = deep_rootfs(tmp_path / "deep.tar", 1100)
    tmp_before, layers_before = set(os.listdir(IMAGES / "tmp")), store_layers()
    with pytest.raises(ClientError) as info:
        await client.import_image(str(tar), "deep:too")
    assert info.value.name == ERR + "ImageInvalid", info.value
    assert "deeper than 1024 levels" in info.value.message
    assert set(os.listdir(IMAGES / "tmp")) == tmp_before and store_layers() == layers_before
    stop_agent()
    start_agent()
    assert agent_state() == "active"
    assert all(e.name != "deep:too" for e in await client.list_images())


async def test_an_image_deeper_than_os_walk_goes_imports_runs_and_is_removed(
        client: Client, busybox_tar: Path, tmp_path: Path, name: str) -> None:
    tar = deep_rootfs(tmp_path / "deep.tar", 1000, busybox_tar)
    tmp_before, layers_before = set(os.listdir(IMAGES / "tmp")), store_layers()
    await client.import_image(str(tar), "deep:ok")
    try:
        path = await client.run_container(name, "deep:ok", ["/bin/sh", "-c", "cd /d && ls d/d/d >/dev/null"], {})
        assert await client.wait(path) == 0
        await client.remove(path)
    finally:
        await client.remove_image("deep:ok", True)
    assert set(os.listdir(IMAGES / "tmp")) == tmp_before and store_layers() == layers_before


async def test_deep_work_left_in_the_image_store_is_removed_at_start_and_what_cannot_be_is_logged(
        client: Client) -> None:
    pid = dead_pid()
    left, stuck = IMAGES / "tmp" / f"{pid}-deep", IMAGES / "tmp" / f"{pid}-stuck"
    stop_agent()
    make_deep(left)
    make_deep(stuck, 10)
    mount_tmpfs(stuck / "mnt")
    try:
        start_agent()
        assert agent_state() == "active"
        await client.list_images()  # answers
        assert not left.exists()
        assert (stuck / "mnt" / "on-tmpfs").exists() and not (stuck / "d").exists()
        assert f"cannot remove {stuck}" in journal_of_agent()
    finally:
        umount(stuck / "mnt")
    stop_agent()
    start_agent()
    assert not stuck.exists()


# --- volumes -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["remove", "prune"])
async def test_a_volume_holding_a_deep_tree_is_removed_and_pruned(
        client: Client, busybox_tar: Path, name: str, how: str) -> None:
    volume = f"{name}-{how}"
    path = await client.run_container(name, str(busybox_tar), deep_script("/data"), {"volumes": [f"{volume}:/data"]})
    assert await client.wait(path) == 0
    await client.remove(path)
    assert (VOLUMES / volume / "_data" / "d" / "d").is_dir()
    if how == "remove":
        await client.remove_volume(volume)
    else:
        assert await client.prune_volumes() >= DEPTH * 512  # at least each level's file's blocks
    assert volume not in [n for n, _, _ in await client.list_volumes()]
    assert not (VOLUMES / volume).exists()
