"""A caller with one polkit grant (manage, exec and read: every container verb) never has the agent open a host path
for it as root: quiltctl reads and writes the host's files itself, with the caller's rights, and what would have
the agent open a path (CopyTo/CopyFrom, an image path, a pull's auth_file) needs org.quilt.runtime.host, and what
would hand the host to a container (a bind mount, the host's namespaces, no seccomp filter)
org.quilt.runtime.manage-privileged, which the caller has not."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError
from tests.integration.bus.test_polkit import ACCESS_DENIED, BUS_NAME, CONTAINER, MANAGER, MANAGER_PATH, USERS, gdbus
from tests.integration.waiting import until

QUILTCTL = shutil.which("quiltctl") or "/usr/bin/quiltctl"
USER = USERS["passwd-user"]
GRANT = Path("/etc/polkit-1/rules.d/10-quilt-test-host-files.rules")


async def as_user(*cmd: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    proc = await asyncio.create_subprocess_exec(
        "setpriv", f"--reuid={USER[0]}", f"--regid={USER[1]}", "--clear-groups", *cmd,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": "/"}, cwd="/")
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(errors="replace"), err.decode())


def one_error_line(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 125, r
    (line,) = r.stderr.splitlines()
    assert line.startswith("quiltctl: ") and all(w in line for w in words), line


@pytest.fixture
async def granted(client: Client) -> AsyncIterator[None]:
    """The user may do everything to containers, images and volumes, but not org.quilt.runtime.host."""
    GRANT.write_text(
        "polkit.addRule(function(action, subject) {\n"
        f"    if (subject.user == {USER[0]} || subject.user == '{_user_name()}') {{\n"
        '        if (["org.quilt.runtime.manage", "org.quilt.runtime.exec", "org.quilt.runtime.read"]'
        ".indexOf(action.id) >= 0)\n"
        "            return polkit.Result.YES;\n"
        "    }\n"
        "    return polkit.Result.NOT_HANDLED;\n"
        "});\n")
    GRANT.chmod(0o644)
    try:
        async def granted() -> bool:  # polkitd reloads its rules on inotify: wait until it has this one
            probe = await as_user("busctl", "call", BUS_NAME, MANAGER_PATH, MANAGER, "RemoveVolume", "sb",
                                  "no-such-volume-here", "false")
            return "Access denied" not in probe.stderr

        await until(granted, "polkitd did not load the grant", interval=0.1)
        yield
    finally:
        GRANT.unlink()


def _user_name() -> str:
    import pwd
    return pwd.getpwuid(USER[0]).pw_name


@pytest.fixture
def root_only(busybox_tar: Path) -> Iterator[dict[str, Path]]:
    """Files only root may read or write, and a directory of the user's own (pytest's tmp_path is root's alone)."""
    tmp_path = Path(tempfile.mkdtemp(prefix="quilt-host-files-"))
    secret_dir = tmp_path / "root-only"
    secret_dir.mkdir(mode=0o700)
    private_tar = secret_dir / "private.tar"
    shutil.copy(busybox_tar, private_tar)
    secret = secret_dir / "secret"
    secret.write_text("root's secret\n")
    secret.chmod(0o600)
    mine = tmp_path / "mine"
    mine.mkdir()
    os.chown(mine, *USER)
    tmp_path.chmod(0o755)
    yield {"tar": private_tar, "secret": secret, "dir": secret_dir, "mine": mine}
    shutil.rmtree(tmp_path)


async def test_quiltctl_reads_an_image_path_with_the_callers_rights(
        client: Client, granted: None, root_only: dict[str, Path], busybox_tar: Path, name: str) -> None:
    tar = str(root_only["tar"])
    one_error_line(await as_user(QUILTCTL, "run", "--rm", tar, "--", "echo", "ran"), "cannot read the image", tar)
    one_error_line(await as_user(QUILTCTL, "image", "import", tar, f"{name}:x"), "cannot read the image", tar)
    assert f"{name}:x" not in {i.name for i in await client.list_images()}
    # A copy of its own is read by quiltctl and sent open: the user needs no more than manage.
    own = root_only["mine"] / "busybox.tar"
    shutil.copy(busybox_tar, own)
    os.chown(own, *USER)
    ran = await as_user(QUILTCTL, "run", "--rm", str(own), "--", "echo", "ran")
    assert ran.returncode == 0 and ran.stdout == "ran\n", ran


async def test_the_agent_opens_no_host_path_for_a_caller_without_the_host_action(
        client: Client, granted: None, root_only: dict[str, Path], busybox_tar: Path, name: str) -> None:
    running = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"])
    await client.exec(running, ["/bin/sh", "-c", "echo in-container > /tmp/f"])
    secret = str(root_only["secret"])
    host, privileged = "org.quilt.runtime.host", "org.quilt.runtime.manage-privileged"
    (image,) = {i.id for i in await client.list_images()}  # busybox, imported by the run above
    calls = [
        (gdbus(running, f"{CONTAINER}.CopyTo", secret, "/tmp/stolen"), host),
        (gdbus(running, f"{CONTAINER}.CopyFrom", "/tmp/f", "/etc/cron.d/quilt-test"), host),
        (gdbus(MANAGER_PATH, f"{MANAGER}.ImportImage", str(root_only["tar"]), f"{name}:y", "{}"), host),
        (gdbus(MANAGER_PATH, f"{MANAGER}.CreateContainer", f"{name}-img", str(root_only["tar"]), "['/bin/true']",
               "{}"), host),
        (gdbus(MANAGER_PATH, f"{MANAGER}.CreateContainer", f"{name}-bind", image, "['/bin/true']",
               "{'volumes': <['/:/host']>}"), privileged),
        # Whether a host path exists is not told before the bind is authorized.
        (gdbus(MANAGER_PATH, f"{MANAGER}.CreateContainer", f"{name}-probe", image, "['/bin/true']",
               "{'volumes': <['/root/no-such-path:/host']>}"), privileged),
        (gdbus(MANAGER_PATH, f"{MANAGER}.PullImage", "127.0.0.1:1/x", f"{{'auth_file': <'{secret}'>}}"), host),
    ]
    results = await asyncio.gather(*(as_user(*cmd) for cmd, _ in calls))
    for (cmd, action), r in zip(calls, results):
        assert r.returncode != 0 and f"GDBus.Error:{ACCESS_DENIED}: " in r.stderr and action in r.stderr, (cmd, r)
    assert not os.path.exists("/etc/cron.d/quilt-test")
    assert (await client.exec(running, ["/bin/cat", "/tmp/stolen"])).exit_code != 0
    assert {i.name for i in await client.list_images()}.isdisjoint({f"{name}:y"})
    assert [e.name for e in await client.list_containers()] == [name]


async def test_quiltctl_cp_reads_and_writes_with_the_callers_rights(
        client: Client, granted: None, root_only: dict[str, Path], busybox_tar: Path, name: str) -> None:
    await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"])
    secret = str(root_only["secret"])
    one_error_line(await as_user(QUILTCTL, "cp", secret, f"{name}:/tmp/"), "cannot read", secret)
    one_error_line(await as_user(QUILTCTL, "cp", str(root_only["dir"]), f"{name}:/tmp/"), "cannot read")
    one_error_line(await as_user(QUILTCTL, "cp", f"{name}:/etc/passwd", "/etc/cron.d/quilt-test"), "cannot write")
    one_error_line(await as_user(QUILTCTL, "cp", f"{name}:/etc/passwd", str(root_only["dir"])), "cannot write")
    assert not os.path.exists("/etc/cron.d/quilt-test") and not (root_only["dir"] / "passwd").exists()
    path = await client.get_container(name)
    assert (await client.exec(path, ["/bin/ls", "/tmp/secret"])).exit_code != 0
    # Its own files go both ways, and what it gets is its own.
    mine = root_only["mine"]
    (mine / "hello").write_text("hello\n")
    os.chown(mine / "hello", *USER)
    assert (await as_user(QUILTCTL, "cp", str(mine / "hello"), f"{name}:/tmp/hello")).returncode == 0
    back = await as_user(QUILTCTL, "cp", f"{name}:/bin/busybox", str(mine / "busybox"))
    assert back.returncode == 0, back
    st = (mine / "busybox").stat()
    assert (st.st_uid, st.st_gid) == USER and st.st_size > 0
    assert (await client.exec(path, ["/bin/cat", "/tmp/hello"])).stdout == b"hello\n"


async def test_a_regular_file_as_stdio_is_relayed_never_handed_to_the_container(
        client: Client, granted: None, root_only: dict[str, Path], busybox_tar: Path, name: str) -> None:
    """Held by the container's root, the caller's file could be opened again through /proc/self/fd with the
    container's rights: a file the caller may only read would be written."""
    await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"])
    readable = root_only["dir"].parent / "readable-by-all"
    readable.write_text("the host's\n")
    readable.chmod(0o644)
    attack = await as_user("sh", "-c", f"{QUILTCTL} exec -i {name} sh -c 'cat; echo pwned >> /proc/self/fd/0; "
                                       f"ls /proc/self/fd/0/ 2>&1' < {readable}")
    assert "the host's" in attack.stdout, attack
    assert readable.read_text() == "the host's\n"
    # Its output into its own regular file arrives whole, before quiltctl returns.
    out = root_only["mine"] / "out"
    wrote = await as_user("sh", "-c", f"{QUILTCTL} exec {name} sh -c 'seq 1 20000; echo err >&2' > {out} 2>&1")
    assert wrote.returncode == 0, wrote
    lines = out.read_text().splitlines()
    assert lines[:20000] == [str(i) for i in range(1, 20001)] and "err" in lines


async def test_stdio_that_could_open_the_host_is_refused(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"])
    root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    opath = os.open("/etc/hostname", os.O_PATH)
    write_only = os.open("/dev/null", os.O_WRONLY)
    try:
        for fds, words in (((root, 1, 2), "stdin descriptor must be a pipe"),
                           ((0, opath, 2), "stdout descriptor is an O_PATH one"),
                           ((write_only, 1, 2), "stdin descriptor is not open for reading")):
            with pytest.raises(ClientError) as refused:
                await client.exec_with_fds(path, ["/bin/true"], {}, *fds)
            assert refused.value.name == "org.quilt.Runtime.Error.InvalidArgument" and words in refused.value.message
        with pytest.raises(ClientError) as refused:
            await client.import_image_fd(opath, f"{name}:opath")
        assert "must be open for reading (not O_PATH)" in refused.value.message
    finally:
        for fd in (root, opath, write_only):
            os.close(fd)


@pytest.mark.parametrize("options", ["{'namespaces': <['mount', 'uts', 'ipc', 'net', 'cgroup']>}",
                                     "{'networks': <['host']>}", "{'seccomp': <'unconfined'>}"])
async def test_what_hands_the_host_to_a_container_needs_the_privileged_action(
        client: Client, granted: None, busybox_tar: Path, name: str, options: str) -> None:
    image = await client.import_image(str(busybox_tar), f"{name}-img:1")
    try:
        r = await as_user(*gdbus(MANAGER_PATH, f"{MANAGER}.CreateContainer", name, f"{name}-img:1", "['/bin/true']",
                                 options))
        assert r.returncode != 0 and f"GDBus.Error:{ACCESS_DENIED}: " in r.stderr, r
        assert "org.quilt.runtime.manage-privileged" in r.stderr and image
        assert [e.name for e in await client.list_containers()] == []
        ok = await as_user(*gdbus(MANAGER_PATH, f"{MANAGER}.CreateContainer", name, f"{name}-img:1", "['/bin/true']",
                                  "{}"))
        assert ok.returncode == 0, ok  # the same create, with the host's namespaces kept out, passes
    finally:
        for entry in await client.list_containers():
            await client.remove(entry.path, force=True)
        await client.remove_image(f"{name}-img:1", True)  # a second name of the suite's busybox image otherwise
