"""CopyTo and CopyFrom (quiltctl cp): running and stopped containers, trees, and paths resolved inside the root."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError
from tests.integration.volumes.conftest import ERR, HOSTDIR
from tests.integration.volumes.test_cli import ok, quiltctl

SLEEPER = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"]


def tree(top: Path) -> dict[str, str]:
    out = {}
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            p = Path(d, n)
            rel = str(p.relative_to(top))
            out[rel] = ("link:" + os.readlink(p)) if p.is_symlink() else ("dir" if p.is_dir() else p.read_text())
    return out


@pytest.mark.parametrize("running", [True, False])
async def test_copy_a_tree_in_and_out(vclient: Client, name: str, busybox_tar: Path, tmp_path: Path,
                                      running: bool) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    (src / "sub" / "b.txt").write_text("b\n")
    os.chmod(src / "a.txt", 0o640)
    os.symlink("/etc/passwd", src / "link")
    path = await vclient.create_container(name, str(busybox_tar), SLEEPER if running else ["true"],
                                          {"volumes": [f"{name}-v:/vol"]})
    if running:
        await vclient.start(path)
    await vclient.copy_to(path, str(src), "/opt")  # /opt missing: the new name
    await vclient.copy_to(path, str(src / "a.txt"), "/tmp")  # an existing directory: into it
    if running:  # a FIFO in the tree is skipped (never opened: reading it would hang)
        assert (await vclient.exec(path, ["mkfifo", "/opt/fifo"])).exit_code == 0
    back = tmp_path / "back"
    back.mkdir()
    await vclient.copy_from(path, "/opt", str(back / "opt"))
    await vclient.copy_from(path, "/tmp/a.txt", str(back))
    assert tree(back / "opt") == tree(src)
    assert (back / "a.txt").read_text() == "a\n" and oct((back / "a.txt").stat().st_mode & 0o777) == oct(0o640)
    await vclient.copy_from(path, "/bin", str(back / "bin"))
    assert (back / "bin" / "busybox").stat().st_size > 0
    # The volume too, as `podman cp` sees it: through the init's mounts, or mounted for the copy when stopped.
    await vclient.copy_to(path, str(src / "a.txt"), "/vol/in-volume")
    volume = Path(f"/var/lib/quilt/volumes/{name}-v/_data")
    assert (volume / "in-volume").read_text() == "a\n"
    (volume / "from-host").write_text("host side\n")
    await vclient.copy_from(path, "/vol/from-host", str(back / "from-volume"))
    assert (back / "from-volume").read_text() == "host side\n"
    assert not list(Path("/var/lib/quilt/containers").glob("*/upper/vol/in-volume"))  # not under the volume
    # The stopped copy's mounts lived in a namespace of their own: none is left where the agent runs.
    assert "/var/lib/quilt/containers/" not in Path("/proc/1/mountinfo").read_text()
    if running:
        result = await vclient.exec(path, ["cat", "/opt/sub/b.txt"])
        assert result.stdout == b"b\n"
    else:
        await vclient.start(path)
        assert await vclient.wait(path) == 0
        await vclient.copy_from(path, "/opt/sub/b.txt", str(back / "b-again"))
        assert (back / "b-again").read_text() == "b\n"


async def test_copy_resolves_symlinks_inside_the_root(vclient: Client, name: str, volume_image: Path,
                                                      tmp_path: Path) -> None:
    hostdir = Path(HOSTDIR)
    shutil.rmtree(hostdir, ignore_errors=True)
    hostdir.mkdir()
    (hostdir / "secret").write_text("host secret\n")
    (tmp_path / "f").write_text("payload\n")
    try:
        path = await vclient.create_container(name, str(volume_image), ["true"], {})
        with pytest.raises(ClientError) as err:  # /evil -> /tmp/quilt-volume-hostdir, which the root lacks
            await vclient.copy_from(path, "/evil/secret", str(tmp_path / "stolen"))
        assert err.value.name == ERR + "NoSuchPath"
        assert not (tmp_path / "stolen").exists()
        with pytest.raises(ClientError) as err:
            await vclient.copy_to(path, str(tmp_path / "f"), "/evil/planted")
        assert err.value.name == ERR + "NoSuchPath"
        assert sorted(os.listdir(hostdir)) == ["secret"]
    finally:
        shutil.rmtree(hostdir, ignore_errors=True)


async def test_copy_bad_inputs(vclient: Client, name: str, busybox_tar: Path, tmp_path: Path) -> None:
    path = await vclient.create_container(name, str(busybox_tar), ["true"], {})
    cases = [
        (vclient.copy_to(path, "relative", "/x"), "InvalidArgument"),
        (vclient.copy_to(path, str(tmp_path), "x"), "InvalidArgument"),
        (vclient.copy_to(path, "/no/such/host/file", "/x"), "NoSuchPath"),
        (vclient.copy_to(path, str(tmp_path), "/no/such/dir/x"), "NoSuchPath"),
        (vclient.copy_from(path, "/no/such/file", str(tmp_path / "x")), "NoSuchPath"),
        (vclient.copy_from(path, "/bin", "/no/such/dir/x"), "NoSuchPath"),
    ]
    for call, error in cases:
        with pytest.raises(ClientError) as err:
            await call
        assert err.value.name == ERR + error, err.value


async def test_quiltctl_cp(vclient: Client, name: str, busybox_tar: Path, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("via cp\n")
    ok("create", "--name", name, str(busybox_tar), "true")
    ok("cp", "in.txt", f"{name}:/root.txt", cwd=tmp_path)
    ok("cp", f"{name}:/root.txt", "out.txt", cwd=tmp_path)
    assert (tmp_path / "out.txt").read_text() == "via cp\n"
    both = quiltctl("cp", "a", "b")
    assert both.returncode != 0 and "CONTAINER:PATH" in both.stderr
    missing = quiltctl("cp", f"{name}:/nope", str(tmp_path / "x"))
    assert missing.returncode == 125 and "/nope" in missing.stderr


async def test_copying_a_device_node_alone_is_refused_by_name(vclient: Client, name: str, busybox_tar: Path,
                                                              tmp_path: Path) -> None:
    await vclient.run_container(name, str(busybox_tar), ["sleep", "60"], {})
    refused = quiltctl("cp", f"{name}:/dev/null", str(tmp_path / "null"))
    assert refused.returncode == 125 and "device node" in refused.stderr, refused.stderr
    assert not (tmp_path / "null").exists()
