"""Volume copy-up, run as an attacker would: images built here whose volume target is a symlink out of the image
(into /proc, /sys, /dev, up to the root, onto a path only the host has). A start either fails with a named
error that says which path, or runs with nothing of the host in the volume; the volume stays empty either way
and the host is unchanged. And the good case: an image directory's content, modes and owners in a new volume."""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError
from quilt_agent.filetree import MAX_DEPTH
from tests.integration.network.conftest import END
from tests.integration.volumes.conftest import ERR, VOLUMES
from tests.integration.volumes.test_cli import ok, quiltctl
from tests.integration.waiting import until

IMAGE = "evil-copyup:1"
# Root-only files of the host's kernel: what the copy-up used to read with the agent's capabilities.
FIRMWARE = next((d for d in ("/sys/firmware/acpi/tables", "/sys/firmware/dmi/tables", "/sys/firmware")
                 if os.path.isdir(d)), "/sys/firmware")
HOST_ONLY = "/srv/quilt-copyup-host-only"  # exists on the host, not in the image
MTIME = 1_234_567_890


@dataclass(frozen=True)
class Attack:
    link: str  # the volume's target: a symlink in the image (or a path through one)
    outcomes: frozenset[str]  # what the start may do: refused for 'proc', 'sys', 'dev' or 'root'; '' runs


def attack(link: str, *outcomes: str) -> Attack:
    return Attack(link, frozenset(outcomes))


# An image's symlink and where it points. The copy-up used to follow these out of the image with the agent's
# capabilities: /sys and /proc copied the host's root-only files, or failed at the first unreadable one and left
# what it had copied in the volume.
LINKS = {
    "v_firmware": FIRMWARE,
    "v_syskernel": "/sys/kernel",
    "v_proc": "/proc",
    "v_proc1": "/proc/1",
    "v_procsys": "/proc/sys/kernel",
    "v_rel": "../../proc/sys/kernel",
    "v_chain": "v_chain2/kernel",  # a chain of relative links: v_chain2 -> ../proc/sys
    "v_chain2": "../proc/sys",
    "deep/v_up": "../../../../proc/1/root",  # a '..' chain from below the root, past it
    "v_devfd": "/dev/fd",  # the container's own /dev/fd -> /proc/self/fd
    "v_dev": "/dev",
    "v_devshm": "/dev/shm",
    "v_root": "/root",  # the image's own empty /root, never the host's
    "v_etc": "/etc",  # the image's two files, never the host's
    "v_hostonly": HOST_ONLY,  # made inside the root, empty
    "v_dotdot": "..",
    "v_dotdots": "../../../..",
    "v_slash": "/",
    "swapme": "/nothing",  # a container points it at a tree of its own for its next start
}

ATTACKS = [
    attack("v_firmware", "sys"),
    attack("v_syskernel", "sys"),
    attack("v_proc", "proc"),
    attack("v_proc1", "proc"),
    attack("v_procsys", "proc"),
    attack("v_rel", "proc"),
    attack("v_chain", "proc"),
    attack("deep/v_up", "proc"),
    attack("v_proc1/x", "proc"),  # below a symlink, a path the image does not have
    attack("v_devfd", "proc", "dev"),  # /dev/fd -> /proc/self/fd: refused for one or the other
    attack("v_devshm", "", "dev"),  # another mount (the container's /dev/shm): nothing to copy
    attack("v_root", ""),
    attack("v_hostonly", ""),
]
# /dev and the root itself: refused too (a volume over /dev would break the start; over the root, it would copy the
# whole image into the volume).
ATTACKS_ROOT_DEV = [attack("v_dev", "dev"), attack("v_dotdot", "root"), attack("v_dotdots", "root"),
                    attack("v_slash", "root")]
WHERE = {"proc": "inside /proc", "sys": "inside /sys", "dev": "inside /dev", "root": "the container's root"}


def _add(dst: tarfile.TarFile, name: str, kind: bytes, data: bytes = b"", mode: int = 0o755, owner: int = 0,
         target: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime, info.linkname = kind, mode, owner, owner, MTIME, target
    info.size = len(data)
    dst.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.fixture(scope="session")
def evil_image(agent: None, busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox plus the LINKS, and /seed: a directory with files, a subdirectory, symlinks, modes and owners.
    Imported as an attacker's image would be, with quiltctl image import."""
    out = tmp_path_factory.mktemp("copyup") / "evil.tar"
    with tarfile.open(busybox_tar) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        _add(dst, "deep", tarfile.DIRTYPE)
        for link, target in LINKS.items():
            _add(dst, link, tarfile.SYMTYPE, target=target)
        _add(dst, "seed", tarfile.DIRTYPE, mode=0o751, owner=1000)
        _add(dst, "seed/a.txt", tarfile.REGTYPE, b"from the image\n", mode=0o640, owner=1000)
        _add(dst, "seed/tool", tarfile.REGTYPE, b"#!/bin/sh\n", mode=0o4755)
        _add(dst, "seed/sub", tarfile.DIRTYPE, mode=0o700, owner=65534)
        _add(dst, "seed/sub/b.txt", tarfile.REGTYPE, b"below\n", mode=0o600, owner=65534)
        _add(dst, "seed/link", tarfile.SYMTYPE, target="a.txt", owner=1000)
        _add(dst, "seed/passwd", tarfile.SYMTYPE, target="/etc/passwd")  # kept as a link, not followed
        _add(dst, "seed/locked", tarfile.REGTYPE, b"nobody's\n", mode=0o000, owner=65534)  # read all the same
    ok("image", "import", str(out), IMAGE)
    return IMAGE


@pytest.fixture
def host_state() -> Iterator[dict[str, object]]:
    """What the host has that an escaped copy-up could read or change: a directory only the host has, the host's
    /root, its mounts. Compared after the test."""
    shutil.rmtree(HOST_ONLY, ignore_errors=True)
    Path(HOST_ONLY).mkdir(parents=True)
    Path(HOST_ONLY, "secret").write_text("host only\n")
    Path("/root/quilt-copyup-marker").write_text("host's /root\n")
    state = _host()
    yield state
    try:
        assert _host() == state
    finally:
        shutil.rmtree(HOST_ONLY, ignore_errors=True)
        Path("/root/quilt-copyup-marker").unlink()


def _host() -> dict[str, object]:
    return {"host-only": sorted(os.listdir(HOST_ONLY)), "secret": Path(HOST_ONLY, "secret").read_text(),
            "root": sorted(os.listdir("/root")),
            # Containers' network namespaces come and go under /run/netns: not the host's tree.
            "mounts": [m for m in Path("/proc/self/mounts").read_text().splitlines() if " /run/netns" not in m],
            "staging": sorted(str(p) for p in VOLUMES.glob("*/.copyup-*"))}


def _volume(mountpoint: str) -> tuple[list[str], list[str]]:
    """The volume's content, and what its directory holds beside _data (a staging directory left behind)."""
    return sorted(os.listdir(mountpoint)), sorted(os.listdir(Path(mountpoint).parent))


async def _start(client: Client, path: str, run: int = 0) -> tuple[int, list[str], list[str]]:
    """Start the container, its exit code and the output of this run (its run-th since create)."""
    await client.start(path)
    code = await client.wait(path)
    streams: list[list[str]] = []

    async def ended() -> bool:
        nonlocal streams
        lines = await client.get_logs(path, {})
        streams = [[line.text for line in lines if line.stream == s] for s in ("stdout", "stderr")]
        return all(s.count(END) > run for s in streams)

    await until(ended, lambda: f"no {END} for run {run} in the logs: {streams}", 15)
    out, err = (_runs(s)[run] for s in streams)
    return code, out, err


def _runs(lines: list[str]) -> list[list[str]]:
    runs: list[list[str]] = [[]]
    for line in lines:
        if line == END:
            runs.append([])
        else:
            runs[-1].append(line)
    return runs


def _script(line: str) -> list[str]:
    return ["/bin/sh", "-c", f"{line}\nrc=$?; echo {END}; echo {END} >&2; exit $rc"]


def _ids(a: Attack) -> str:
    return f"{a.link}->{LINKS.get(a.link.split('/x')[0], '')}"


@pytest.mark.parametrize("anonymous", [False, True], ids=["named", "anonymous"])
@pytest.mark.parametrize("attack", ATTACKS + ATTACKS_ROOT_DEV, ids=_ids)
async def test_an_image_symlink_never_makes_copy_up_read_outside_the_image(
        vclient: Client, name: str, evil_image: str, host_state: dict, attack: Attack, anonymous: bool) -> None:
    spec = f"/{attack.link}" if anonymous else f"{name}-vol:/{attack.link}"
    path = await vclient.create_container(name, evil_image, _script(f"ls -A /{attack.link}"), {"volumes": [spec]})
    ((volume, mountpoint, _),) = await vclient.list_volumes()
    assert len(volume) == 64 if anonymous else volume == f"{name}-vol", volume
    try:
        code, out, err_lines = await _start(vclient, path)
    except ClientError as err:
        assert err.name == ERR + "ContainerFailed", err
        message = err.message
        assert f"'/{attack.link}'" in message and "not a mount target" in message, message
        assert any(WHERE[o] in message for o in attack.outcomes if o), message
        # A second start is refused the same way: nothing half done by the first.
        with pytest.raises(ClientError):
            await vclient.start(path)
    else:
        assert "" in attack.outcomes, f"ran, but should be refused for {set(attack.outcomes)}"
        assert (code, out) == (0, []), err_lines  # the container sees the empty volume there
    assert _volume(mountpoint) == ([], ["_data"])  # nothing copied, nothing left beside it
    await vclient.remove(path)
    if anonymous:
        assert not (VOLUMES / volume).exists()


async def test_quiltctl_run_with_a_volume_over_a_symlink_into_sys_fails_naming_the_path(
        vclient: Client, name: str, evil_image: str, host_state: dict) -> None:
    """The report's own commands: `run --rm -v vfw:/v_firmware evil -- true`, named and anonymous."""
    for spec in (f"{name}-vfw:/v_firmware", "/v_firmware"):
        result = quiltctl("run", "--rm", "-v", spec, evil_image, "--", "true")
        assert result.returncode == 125, result
        assert "'/v_firmware' is inside /sys: not a mount target" in result.stderr, result.stderr
    for _, mountpoint, _ in await vclient.list_volumes():
        assert _volume(mountpoint) == ([], ["_data"])


async def test_a_volume_over_a_host_bind_through_a_symlink_gets_nothing_of_it(
        vclient: Client, name: str, evil_image: str, host_state: dict) -> None:
    """/v_hostonly -> /srv/quilt-copyup-host-only, where the caller bound the host's directory of that name:
    the target is that bind mount, not the image's, so nothing is copied from it."""
    code, out, err = await _start(vclient, await vclient.create_container(
        name, evil_image, _script("cat /v_hostonly/secret; ls -A /srv/quilt-copyup-host-only"),
        # The host's ids: the test host's /srv is on its overlay, which takes no idmapped mount.
        {"volumes": [f"{HOST_ONLY}:{HOST_ONLY}:ro", f"{name}-vol:/v_hostonly"], "userns": "host"}))
    assert code == 0 and out == [], (out, err)  # the volume is mounted over the bind, empty
    ((_, mountpoint, _),) = await vclient.list_volumes()
    assert _volume(mountpoint) == ([], ["_data"])


async def test_copy_up_of_an_image_directory_through_a_symlink_copies_the_image_not_the_host(
        vclient: Client, name: str, evil_image: str) -> None:
    """/etc is both the image's and the host's: the image's two files, none of the host's."""
    path = await vclient.create_container(name, evil_image, _script("cat /v_etc/passwd"),
                                          {"volumes": [f"{name}-etc:/v_etc"]})
    code, out, err = await _start(vclient, path)
    assert code == 0 and "nobody:x:65534:65534:nobody:/:/bin/false" in out, (out, err)
    ((_, mountpoint, _),) = await vclient.list_volumes()
    content, beside = _volume(mountpoint)
    assert beside == ["_data"]
    # Not the files bound over the image's /etc/hosts and the like (other mounts: never copied).
    assert content == ["group", "passwd"], content
    assert Path(mountpoint, "passwd").read_text() != Path("/etc/passwd").read_text()
    assert "nobody:x:65534" in Path(mountpoint, "passwd").read_text()


async def test_copy_up_fills_a_new_volume_with_the_image_directory_and_a_second_container_sees_it(
        vclient: Client, name: str, evil_image: str) -> None:
    script = "cat /seed/a.txt /seed/link /seed/sub/b.txt; echo more > /seed/from-first"
    code, out, err = await _start(vclient, await vclient.create_container(
        name, evil_image, _script(script), {"volumes": [f"{name}-seed:/seed"]}))
    assert code == 0 and out == ["from the image", "from the image", "below"], (out, err)
    data = VOLUMES / f"{name}-seed" / "_data"
    assert sorted(os.listdir(data.parent)) == ["_data"]
    top = data.stat()
    assert (stat.S_IMODE(top.st_mode), top.st_uid, top.st_gid) == (0o751, 1000, 1000)  # the image dir's
    got = {}
    for p in sorted(data.rglob("*")):
        st = p.lstat()
        what = ("link:" + os.readlink(p)) if p.is_symlink() else "dir" if p.is_dir() else p.read_text()
        mode = None if p.is_symlink() else oct(stat.S_IMODE(st.st_mode))
        got[str(p.relative_to(data))] = (what, mode, st.st_uid, st.st_gid)
    assert got == {
        "a.txt": ("from the image\n", "0o640", 1000, 1000),
        "from-first": ("more\n", "0o644", 0, 0),
        "link": ("link:a.txt", None, 1000, 1000),
        "locked": ("nobody's\n", "0o0", 65534, 65534),
        "passwd": ("link:/etc/passwd", None, 0, 0),
        "sub": ("dir", "0o700", 65534, 65534),
        "sub/b.txt": ("below\n", "0o600", 65534, 65534),
        "tool": ("#!/bin/sh\n", "0o4755", 0, 0),
    }
    assert (data / "a.txt").stat().st_mtime == MTIME
    await vclient.remove(await vclient.get_container(name))
    # A second container: the volume as the first left it, not copied over again.
    (data / "a.txt").unlink()
    code, out, err = await _start(vclient, await vclient.create_container(
        name + "b", evil_image, _script("ls /seed; cat /seed/from-first"), {"volumes": [f"{name}-seed:/seed"]}))
    assert code == 0 and out == ["from-first", "link", "locked", "passwd", "sub", "tool", "more"], (out, err)


async def test_copy_up_into_an_anonymous_volume(vclient: Client, name: str, evil_image: str) -> None:
    path = await vclient.create_container(name, evil_image, _script("cat /seed/a.txt"), {"volumes": ["/seed"]})
    code, out, _ = await _start(vclient, path)
    assert code == 0 and out == ["from the image"]
    ((_, mountpoint, _),) = await vclient.list_volumes()
    assert sorted(os.listdir(mountpoint)) == ["a.txt", "link", "locked", "passwd", "sub", "tool"]
    assert stat.S_IMODE(os.stat(mountpoint).st_mode) == 0o751


async def test_a_volume_that_is_not_empty_is_never_copied_into(vclient: Client, name: str, evil_image: str) -> None:
    await vclient.create_volume(f"{name}-full")
    data = VOLUMES / f"{name}-full" / "_data"
    (data / "mine").write_text("the volume's own\n")
    os.chmod(data, 0o700)
    code, out, _ = await _start(vclient, await vclient.create_container(
        name, evil_image, _script("ls -A /seed"), {"volumes": [f"{name}-full:/seed"]}))
    assert code == 0 and out == ["mine"]
    assert sorted(os.listdir(data)) == ["mine"] and stat.S_IMODE(data.stat().st_mode) == 0o700
    assert sorted(os.listdir(data.parent)) == ["_data"]


async def test_a_copy_up_that_fails_midway_leaves_the_volume_empty(vclient: Client, name: str,
                                                                   evil_image: str) -> None:
    """The container itself points its volume's target at a tree of its own that the copy cannot finish (deeper
    than filetree.MAX_DEPTH, after files it has copied already): the next start fails and copies nothing."""
    swap = (f"rm /swapme && mkdir /other && echo first > /other/a && cd -P /other && "
            f"i=0; while [ $i -lt {MAX_DEPTH + 20} ]; do mkdir d && cd d || exit 1; i=$((i+1)); done; "
            f"echo leaf > leaf && ln -s /other /swapme")
    path = await vclient.create_container(name, evil_image, _script(f"[ -e /other ] || {{ {swap}; }}"),
                                          {"volumes": [f"{name}-part:/swapme"]})
    code, _, err = await _start(vclient, path)  # /swapme -> /nothing: made, empty, nothing to copy
    assert code == 0, err
    mountpoint = str(VOLUMES / f"{name}-part" / "_data")
    assert _volume(mountpoint) == ([], ["_data"])
    with pytest.raises(ClientError) as failed:
        await vclient.start(path)  # /swapme -> /other now
    assert failed.value.name == ERR + "ContainerFailed", failed.value
    assert "copying the image's files into the volume failed" in failed.value.message
    assert f"deeper than {MAX_DEPTH} levels" in failed.value.message
    assert _volume(mountpoint) == ([], ["_data"])


async def test_containers_starting_together_on_a_new_volume_all_start_and_it_holds_the_image_content(
        vclient: Client, name: str, evil_image: str) -> None:
    """Replicas sharing one new volume (as compose starts them): each start sees it empty and copies up."""
    for attempt in range(5):
        volume = f"{name}-shared{attempt}"
        paths = [await vclient.create_container(f"{name}-{attempt}-{i}", evil_image, _script("ls /seed"),
                                                {"volumes": [f"{volume}:/seed"]}) for i in range(3)]
        outcomes = await asyncio.gather(*(vclient.start(p) for p in paths), return_exceptions=True)
        data = VOLUMES / volume / "_data"
        assert [str(o) for o in outcomes if o is not None] == [], sorted(os.listdir(data))
        assert sorted(os.listdir(data)) == ["a.txt", "link", "locked", "passwd", "sub", "tool"]
        assert sorted(os.listdir(data.parent)) == ["_data"]
        for p in paths:
            assert await vclient.wait(p) == 0


async def test_a_fifo_in_the_copied_directory_is_left_out_and_never_blocks_the_start(
        vclient: Client, name: str, evil_image: str) -> None:
    """A container may make FIFOs (and, with CAP_MKNOD, device nodes) in its own tree, then point its volume's
    target there for the next start: the copy never opens them."""
    swap = "rm /swapme && mkdir /other && mkfifo /other/fifo && echo kept > /other/f && ln -s /other /swapme"
    path = await vclient.create_container(name, evil_image, _script(f"[ -e /other ] || {{ {swap}; }}; ls -A /swapme"),
                                          {"volumes": [f"{name}-fifo:/swapme"]})
    code, out, err = await _start(vclient, path)
    assert code == 0 and out == ["f", "fifo"], (out, err)  # the container's own /other: nothing copied yet
    assert _volume(str(VOLUMES / f"{name}-fifo" / "_data")) == ([], ["_data"])
    code, out, err = await _start(vclient, path, run=1)  # the volume over /other now: a copy without the FIFO
    assert code == 0 and out == ["f"], (out, err)
    assert (VOLUMES / f"{name}-fifo" / "_data" / "f").read_text() == "kept\n"
