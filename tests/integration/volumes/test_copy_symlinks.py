"""cp as an attacker inside the container would use it: symlinks planted for a later copy, and swapped between a
directory and a symlink while the host copies. Nothing outside the destination the caller named is ever written,
whichever side does the host's part (quiltctl with the caller's rights, or the agent for CopyTo/CopyFrom)."""
from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from quilt_agent.cli import hostfiles
from quilt_agent.client import Client, ClientError
from tests.integration.volumes.test_cli import ok, quiltctl

SLEEPER = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"]


def snapshot(top: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry below top with its mode and content: what an attack would change."""
    out = {str(top): (top.lstat().st_mode, b"")}
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            p = Path(d, n)
            st = p.lstat()
            out[str(p)] = (st.st_mode, p.read_bytes() if stat.S_ISREG(st.st_mode) else b"")
    return out


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A host directory standing for /etc: the planted symlinks point at it."""
    top = tmp_path / "victim"
    top.mkdir(mode=0o755)
    (top / "hostname").write_text("the host\n")
    return top


async def sh(client: Client, path: str, script: str) -> None:
    result = await client.exec(path, ["/bin/sh", "-c", script])
    assert result.exit_code == 0, result


@pytest.mark.parametrize("how", ["quiltctl", "CopyFrom"])
async def test_a_symlink_left_by_an_earlier_copy_out_is_replaced_not_followed(
        vclient: Client, name: str, busybox_tar: Path, tmp_path: Path, victim: Path, how: str) -> None:
    path = await vclient.run_container(name, str(busybox_tar), SLEEPER)
    await sh(vclient, path, f"mkdir -p /data && ln -s {victim} /data/x && echo a > /data/plain")
    backup = tmp_path / "backup"
    backup.mkdir()
    before = snapshot(victim)

    async def cp() -> None:
        if how == "quiltctl":
            ok("cp", f"{name}:/data", f"{backup}/")
        else:
            await vclient.copy_from(path, "/data", str(backup))

    await cp()
    assert os.readlink(backup / "data" / "x") == str(victim)  # a symlink is copied as one
    await sh(vclient, path, "rm /data/x && mkdir /data/x && echo owned > /data/x/quilt-pwned && "
                            "echo evil > /data/x/hostname && chmod 0777 /data/x && chmod 4755 /data/x/hostname")
    await cp()  # the same command again
    assert snapshot(victim) == before
    assert (backup / "data" / "x").is_dir() and not (backup / "data" / "x").is_symlink()
    assert (backup / "data" / "x" / "quilt-pwned").read_text() == "owned\n"
    assert stat.S_IMODE((backup / "data" / "x").stat().st_mode) == 0o777
    # What comes out of a container is never a setuid program on the host.
    assert stat.S_IMODE((backup / "data" / "x" / "hostname").stat().st_mode) == 0o755


async def test_a_symlink_planted_over_a_copy_in_target_stays_inside_the_container(
        vclient: Client, name: str, busybox_tar: Path, tmp_path: Path, victim: Path) -> None:
    path = await vclient.run_container(name, str(busybox_tar), SLEEPER)
    # Absolute and relative escapes: both resolve inside the container's root, never on the host.
    await sh(vclient, path, f"mkdir -p /in {victim.parent} && ln -s {victim} /in/abs && "
                            "ln -s ../../../../../../../.. /in/rel")
    src = tmp_path / "src"
    src.mkdir()
    (src / "hostname").write_text("from the host's cp\n")
    before = snapshot(victim)
    for target in ("/in/abs", "/in/rel", f"/in/rel{victim}"):
        ok("cp", str(src / "hostname"), f"{name}:{target}")
        await vclient.copy_to(path, str(src / "hostname"), target)
    assert snapshot(victim) == before


@pytest.mark.parametrize("direction", ["out", "in"])
async def test_a_path_swapped_between_a_directory_and_a_symlink_during_copies_never_reaches_the_host(
        vclient: Client, name: str, busybox_tar: Path, tmp_path: Path, victim: Path, direction: str) -> None:
    path = await vclient.run_container(name, str(busybox_tar), SLEEPER)
    # The container flips /data/x between a symlink to the victim (absolute, and by '..') and a directory with a
    # file, as fast as its shell can, counting the flips.
    flipper = (f"mkdir -p /data {victim.parent}; n=0; while [ ! -e /stop ]; do "
               f"rm -rf /data/x; ln -s {victim} /data/x; rm -f /data/x; ln -s ../../../../..{victim} /data/x; "
               "rm -f /data/x; mkdir /data/x; echo owned > /data/x/quilt-pwned; n=$((n+1)); echo $n > /flips; done")
    await vclient.exec(path, ["/bin/sh", "-c", f"({flipper}) >/dev/null 2>&1 &"])
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "x" / "quilt-pwned").write_text("from the host\n")
    before = snapshot(victim)
    backup = tmp_path / "backup"
    backup.mkdir()
    copies, failures, flips, i = 0, 0, 0, 0
    deadline = time.monotonic() + 120
    while (i < 200 or flips < 300) and time.monotonic() < deadline:
        i += 1
        if i % 25 == 0:
            flips = int((await vclient.exec(path, ["/bin/cat", "/flips"])).stdout or 0)
        try:
            if direction == "out":
                if i % 2:
                    await hostfiles.copy_out(vclient, path, "/data", str(backup))
                else:
                    await vclient.copy_from(path, "/data", str(backup))
            else:
                if i % 2:
                    await hostfiles.copy_in(vclient, path, str(src), "/data")
                else:
                    await vclient.copy_to(path, str(src / "x"), "/data/x")
            copies += 1
        except (ClientError, hostfiles.HostFileError):
            failures += 1  # a path changed under the copy: refused, never followed
        assert snapshot(victim) == before, i
    await sh(vclient, path, "touch /stop")
    print(f"\n{direction}: {copies} copies, {failures} refused, {flips} swaps in the container")
    assert flips >= 300 and copies >= 50
    for d, dirs, files in os.walk(backup):  # what came out: symlinks as symlinks, directories as directories
        for n in dirs:
            assert not Path(d, n).is_symlink()
