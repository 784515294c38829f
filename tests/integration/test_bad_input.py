"""Bad input through the real bus: each gets a named error that names the bad value, and leaves nothing behind.

"Nothing behind": no container listed, nothing under /var/lib/quilt/containers, no quilt-*.scope unit
loaded, and no new entry in the image store except the layers of images that were legitimately imported.
"""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import math
import os
import subprocess
import tarfile
import time
import uuid
from pathlib import Path
from typing import Awaitable, Callable

import pytest
from dbus_fast import Variant

from quilt_agent.client import Client, ClientError
from tests.integration.waiting import until

ERR = "org.quilt.Runtime.Error."
STATE = Path("/var/lib/quilt")
IMAGES = STATE / "images"
CONTAINERS = STATE / "containers"
MANAGER = ("org.quilt.Runtime", "/org/quilt/Runtime", "org.quilt.Runtime.Manager")

Check = Callable[..., Awaitable[None]]


# --- helpers ---------------------------------------------------------------------------------------


def tree(top: Path) -> set[str]:
    """Every path under top (directories, files, symlinks), relative to it."""
    found: set[str] = set()
    for directory, dirs, files in os.walk(top):
        for entry in (*dirs, *files):
            found.add(os.path.relpath(os.path.join(directory, entry), top))
    return found


def image_id(tarball: Path) -> str:
    return hashlib.sha256(tarball.read_bytes()).hexdigest()


def quilt_scopes() -> list[str]:
    out = subprocess.run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "--type=scope", "quilt-*"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@pytest.fixture
def nothing_left(client: Client) -> Check:
    """Snapshot of the image store now; the returned check compares against it at the end of a test."""
    before = tree(IMAGES)

    async def check(*imported: Path) -> None:
        assert await client.list_containers() == []
        assert not CONTAINERS.exists() or os.listdir(CONTAINERS) == []
        # a failed container's scope goes once its monitor has exited
        await until(lambda: not quilt_scopes(), lambda: f"scopes left: {quilt_scopes()}", 5)
        after = tree(IMAGES)
        assert before - after == set(), "entries of the image store disappeared"
        # An imported tarball (uncompressed here) is a layer named by its sha256, and an image of that one
        # layer: its record, its config and manifest blobs, maybe a name.
        layers = {image_id(t) for t in imported}
        allowed = {f"layers/{i}" for i in layers} | {f"layers/{i}.json" for i in layers} | {"names.json"}
        for entry in await client.list_images():
            props = await client.image_properties(entry.path)
            if {d.removeprefix("sha256:") for d in props["Layers"]} <= layers:
                allowed |= {f"images/{entry.id}.json", f"blobs/sha256/{entry.id}",
                            f"blobs/sha256/{props['Digest'].removeprefix('sha256:')}"}
        unexpected = {p for p in after - before
                      if p not in allowed and not any(p.startswith(f"layers/{i}/") for i in layers)}
        assert unexpected == set(), "the image store has new entries"
        assert os.listdir(IMAGES / "tmp") == []

    return check


async def refused(call: Awaitable[object], error: str, *needles: str) -> ClientError:
    """Await call, expect the named error; the message must contain every needle."""
    with pytest.raises(ClientError) as info:
        await call
    assert info.value.name == (error if "." in error else ERR + error), info.value
    for needle in needles:
        assert needle in info.value.message, info.value
    return info.value


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, data: bytes = b"x\n", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def directory(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, None


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def write_tar(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    # A unique member makes each tarball new bytes, so the agent unpacks it rather than finding it imported.
    path.write_bytes(tar_bytes(member(f"unique-{uuid.uuid4().hex}"), *members))
    return path


# --- names -----------------------------------------------------------------------------------------

BAD_NAMES = [
    "a" * 64, "x" * 200, "bad/name", "..", ".", "../x", "a/../b", "has space", " lead", "trail ", "tab\there",
    "new\nline", "a@b", "template@", "back\\slash", "co:lon", "per%cent", "dollar$", "star*", "semi;colon",
    "quo'te", "-lead", ".hidden", "_under", "é", "snow☃",
]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
async def test_bad_container_names_are_invalid_argument_naming_the_name(
        client: Client, busybox_tar: Path, nothing_left: Check, bad: str) -> None:
    await refused(client.create_container(bad, str(busybox_tar), ["/bin/true"], {}), "InvalidArgument", f"'{bad}'")
    await refused(client.run_container(bad, str(busybox_tar), ["/bin/true"], {}), "InvalidArgument", f"'{bad}'")
    await nothing_left()


async def test_a_name_of_63_characters_is_the_longest_accepted(client: Client, busybox_tar: Path,
                                                              nothing_left: Check) -> None:
    name = "n" * 63
    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {})
    assert (await client.properties(path))["Unit"] == f"quilt-{name}.scope"
    await client.remove(path)
    await nothing_left(busybox_tar)


async def test_duplicate_name_is_name_in_use(client: Client, busybox_tar: Path, name: str,
                                             nothing_left: Check) -> None:
    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {})
    await refused(client.create_container(name, str(busybox_tar), ["/bin/true"], {}), "NameInUse", f"'{name}'")
    await refused(client.run_container(name, str(busybox_tar), ["/bin/true"], {}), "NameInUse", f"'{name}'")
    assert [e.path for e in await client.list_containers()] == [path]
    assert len(os.listdir(CONTAINERS)) == 1
    await client.remove(path)
    await nothing_left(busybox_tar)


@pytest.mark.parametrize("fresh", [False, True], ids=["imported-image", "fresh-image"])
async def test_concurrent_creates_of_one_name_give_one_container_and_name_in_use_for_the_rest(
        client: Client, busybox_tar: Path, tmp_path: Path, name: str, nothing_left: Check, fresh: bool) -> None:
    # From separate connections, so that the agent has all of them in flight at once; with a fresh image each
    # waits on the import, with an imported one they all reach the store together.
    image = write_tar(tmp_path / "fresh.tar", directory("bin")) if fresh else busybox_tar
    await client.create_container("", str(busybox_tar), ["/bin/true"], {})  # busybox imported before
    await client.remove((await client.list_containers())[0].path)
    callers = [Client() for _ in range(12)]
    try:
        for caller in callers:
            await caller.connect()
        results = await asyncio.gather(*(c.create_container(name, str(image), ["/bin/true"], {}) for c in callers),
                                       return_exceptions=True)
    finally:
        for caller in callers:
            caller.close()
    created = [r for r in results if isinstance(r, str)]
    errors = [r for r in results if not isinstance(r, str)]
    assert len(created) == 1, results
    assert all(isinstance(e, ClientError) and e.name == ERR + "NameInUse" and f"'{name}'" in e.message
               for e in errors), errors
    assert [e.path for e in await client.list_containers()] == created
    assert len(os.listdir(CONTAINERS)) == 1
    await client.remove(created[0])
    await nothing_left(busybox_tar, image)


# --- images: paths and files that are not images --------------------------------------------------


async def test_missing_image_file_is_no_such_image(client: Client, tmp_path: Path, nothing_left: Check) -> None:
    missing = tmp_path / "no-such-image.tar"
    await refused(client.create_container("", str(missing), ["/bin/true"], {}), "NoSuchImage", str(missing))
    await refused(client.run_container("", str(missing), ["/bin/true"], {}), "NoSuchImage", str(missing))
    under_a_file = tmp_path / "file"
    under_a_file.write_text("x")
    await refused(client.create_container("", f"{under_a_file}/x.tar", ["/bin/true"], {}), "NoSuchImage",
                  f"{under_a_file}/x.tar")
    await nothing_left()


@pytest.mark.parametrize("relative", ["busybox.tar", "images/busybox.tar", "./busybox.tar", "../x.tar"])
async def test_relative_image_path_is_no_such_image_asking_for_an_absolute_path(
        client: Client, nothing_left: Check, relative: str) -> None:
    await refused(client.create_container("", relative, ["/bin/true"], {}), "NoSuchImage", f"'{relative}'",
                  "absolute path")
    await nothing_left()


async def test_empty_image_argument_is_invalid_argument(client: Client, nothing_left: Check) -> None:
    await refused(client.create_container("", "", ["/bin/true"], {}), "InvalidArgument", "No image given")
    await nothing_left()


def _truncations(tmp: Path) -> dict[str, Path]:
    whole = tar_bytes(member("a", b"A" * 3000), member("b", b"B" * 100))
    cases = {
        "mid-data": whole[:512 + 1000],  # a's header, then part of its data
        "after-a-member": whole[:512 + 3072],  # a complete, then nothing: no end-of-archive marker
        "mid-header": whole[:512 + 3072 + 100],  # cut inside b's header
        "gzip-cut": gzip.compress(whole)[:-20],  # the deflate stream ends early, the trailer is gone
    }
    out = {}
    for label, data in cases.items():
        out[label] = tmp / f"truncated-{label}.tar"
        out[label].write_bytes(data)
    return out


@pytest.mark.parametrize("label", ["mid-data", "after-a-member", "mid-header", "gzip-cut"])
async def test_truncated_tarball_is_image_invalid(client: Client, tmp_path: Path, nothing_left: Check,
                                                  label: str) -> None:
    image = _truncations(tmp_path)[label]
    await refused(client.create_container("", str(image), ["/bin/true"], {}), "ImageInvalid", str(image))
    await nothing_left()


async def test_files_that_are_not_tarballs_are_image_invalid(client: Client, tmp_path: Path,
                                                             nothing_left: Check) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a tar archive\n" * 100)
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    zeros = tmp_path / "zeros.tar"
    zeros.write_bytes(bytes(10240))
    fifo = tmp_path / "fifo.tar"
    os.mkfifo(fifo)  # opening it to read would block: the agent must not
    for bad, words in ((text, "not a tar archive"), (empty, "empty"), (zeros, "empty tar archive"),
                       (fifo, "not a regular file"), (tmp_path, "is a directory")):
        await refused(asyncio.wait_for(client.create_container("", str(bad), ["/bin/true"], {}), 10),
                      "ImageInvalid", str(bad), words)
    await refused(client.create_container("", "/dev/null", ["/bin/true"], {}), "ImageInvalid", "/dev/null")
    await nothing_left()


# --- images: members that try to get out of the layer ---------------------------------------------


def _no_evil_outside(token: str) -> None:
    for place in (Path("/"), STATE, IMAGES, IMAGES / "tmp", IMAGES / "layers", Path("/tmp")):
        assert not [p for p in os.listdir(place) if token in p], f"a member escaped into {place}"


@pytest.mark.parametrize("escape", ["../{t}", "../../../../{t}", "a/../../{t}", "./../{t}", "..", "../"])
async def test_member_climbing_out_of_the_root_is_image_invalid(client: Client, tmp_path: Path,
                                                                nothing_left: Check, escape: str) -> None:
    token = f"evil-{uuid.uuid4().hex[:8]}"
    bad = escape.format(t=token)
    image = write_tar(tmp_path / "climb.tar", member("etc/ok"), member(bad, b"pwned\n"))
    await refused(client.create_container("", str(image), ["/bin/true"], {}), "ImageInvalid", str(image), f"'{bad}'")
    _no_evil_outside(token)
    await nothing_left()


async def test_absolute_member_lands_inside_the_layer_not_on_the_host(client: Client, tmp_path: Path,
                                                                     nothing_left: Check) -> None:
    token = f"evilfile-{uuid.uuid4().hex[:8]}"
    image = write_tar(tmp_path / "absolute.tar", member(f"/etc/{token}", b"inside\n"))
    path = await client.create_container("", str(image), ["/bin/true"], {})
    assert not os.path.lexists(f"/etc/{token}")
    assert (IMAGES / "layers" / image_id(image) / "etc" / token).read_bytes() == b"inside\n"
    await client.remove(path)
    await nothing_left(image)


def _symlink_escapes(target: str) -> dict[str, tuple]:
    return {
        "absolute": (link("link", target), member("link/pwned", b"pwned\n")),
        "relative": (link("link", "../../../../../.." + target), member("link/pwned", b"pwned\n")),
        # The target exists inside the image too: the write then succeeds, inside the layer.
        "target-in-image": (directory(target.lstrip("/")), link("link", target), member("link/pwned", b"pwned\n")),
        "chained": (link("a", "/tmp"), link("link", "a/" + os.path.basename(target)),
                    member("link/pwned", b"pwned\n")),
    }


@pytest.mark.parametrize("kind", ["absolute", "relative", "target-in-image", "chained"])
async def test_write_through_a_symlink_pointing_outside_stays_in_the_layer(
        client: Client, tmp_path: Path, nothing_left: Check, kind: str) -> None:
    outside = Path(f"/tmp/outside-{uuid.uuid4().hex[:8]}")
    outside.mkdir()  # exists on the test host: a write that followed the link there would succeed
    try:
        image = write_tar(tmp_path / "symlink.tar", *_symlink_escapes(str(outside))[kind])
        try:
            path = await client.create_container("", str(image), ["/bin/true"], {})
        except ClientError as err:
            assert err.name == ERR + "ImageInvalid" and str(image) in err.message, err
            imported = ()
        else:
            layer = IMAGES / "layers" / image_id(image)
            if kind == "target-in-image":
                assert (layer / outside.relative_to("/") / "pwned").read_bytes() == b"pwned\n"
            await client.remove(path)
            imported = (image,)
        assert os.listdir(outside) == [], "a member was written through the symlink onto the host"
        await nothing_left(*imported)
    finally:
        for entry in outside.iterdir():
            entry.unlink()
        outside.rmdir()


@pytest.mark.parametrize("target", ["/etc/passwd", "../../etc/passwd", "../../../../../../etc/passwd", "etc/passwd",
                                    "hostetc/passwd"])
async def test_hardlink_to_a_file_outside_the_image_is_image_invalid(client: Client, tmp_path: Path,
                                                                    nothing_left: Check, target: str) -> None:
    links_before = os.stat("/etc/passwd").st_nlink
    image = write_tar(tmp_path / "hardlink.tar", link("hostetc", "/etc"), link("hl", target, tarfile.LNKTYPE))
    await refused(client.create_container("", str(image), ["/bin/true"], {}), "ImageInvalid", str(image), "'hl'")
    assert os.stat("/etc/passwd").st_nlink == links_before
    await nothing_left()


async def test_hardlink_to_an_absolute_name_links_to_the_images_own_file(client: Client, tmp_path: Path,
                                                                         nothing_left: Check) -> None:
    host = os.stat("/etc/passwd")
    image = write_tar(tmp_path / "hardlink-inside.tar", directory("etc"),
                      member("etc/passwd", b"root:x:0:0::/:/bin/sh\n"), link("hl", "/etc/passwd", tarfile.LNKTYPE))
    path = await client.create_container("", str(image), ["/bin/true"], {})
    layer = IMAGES / "layers" / image_id(image)
    hl, own = os.stat(layer / "hl"), os.stat(layer / "etc/passwd")
    assert (hl.st_dev, hl.st_ino) == (own.st_dev, own.st_ino) != (host.st_dev, host.st_ino)
    assert os.stat("/etc/passwd").st_nlink == host.st_nlink
    await client.remove(path)
    await nothing_left(image)


# --- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,value,shown", [
    ("memory_max", 0, "0"),
    ("memory_max", 1, "1"),
    ("memory_max", 2**63, str(2**63)),
    ("memory_max", 2**64 - 1, str(2**64 - 1)),
    ("pids_max", 0, "0"),
    ("cpu_quota", -1.0, "-1.0"),
    ("cpu_quota", 0.0, "0.0"),
    ("cpu_quota", math.nan, "nan"),
    ("cpu_quota", math.inf, "inf"),
    ("cpu_quota", -math.inf, "-inf"),
    ("cpu_quota", 1e9, "1000000000.0"),
    ("stop_timeout", 2**32 - 1, str(2**32 - 1)),
    ("stop_timeout", 86401, "86401"),
], ids=lambda v: repr(v) if not isinstance(v, str) else v)
async def test_absurd_limits_are_invalid_argument_naming_the_option_and_value(
        client: Client, busybox_tar: Path, nothing_left: Check, key: str, value: object, shown: str) -> None:
    await refused(client.create_container("", str(busybox_tar), ["/bin/true"], {key: value}),
                  "InvalidArgument", key, shown)
    await nothing_left(busybox_tar)


@pytest.mark.parametrize("key,variant,shown", [
    ("memory_max", Variant("s", "1G"), "'1G'"),
    ("memory_max", Variant("d", 1e9), "1000000000.0"),
    ("memory_max", Variant("x", -4096), "memory_max -4096"),
    ("memory_max", Variant("b", True), "True"),
    ("pids_max", Variant("as", ["5"]), "['5']"),
    ("cpu_quota", Variant("s", "50%"), "'50%'"),
    ("env", Variant("s", "A=B"), "'A=B'"),
    ("env", Variant("a{ss}", {"A": "B"}), "'A'"),
    ("env", Variant("ai", [1]), "1"),
    ("workdir", Variant("as", ["/"]), "['/']"),
    ("namespaces", Variant("s", "pid"), "'pid'"),
    ("remove_on_exit", Variant("s", "yes"), "'yes'"),
    ("stop_timeout", Variant("s", "10"), "'10'"),
    ("labels", Variant("as", ["a=b"]), "['a=b']"),
    ("labels", Variant("a{sv}", {"a": Variant("s", "b")}), "Invalid label 'a'"),
    ("user", Variant("u", 0), "0"),
    ("hostname", Variant("i", 1), "1"),
], ids=lambda v: v if isinstance(v, str) else v.signature)
async def test_wrong_option_types_are_invalid_argument_naming_the_option(
        client: Client, busybox_tar: Path, nothing_left: Check, key: str, variant: Variant, shown: str) -> None:
    await refused(client.create_container("", str(busybox_tar), ["/bin/true"], {key: variant}),
                  "InvalidArgument", key.rstrip("s"), shown)
    await nothing_left(busybox_tar)


@pytest.mark.parametrize("key", ["bogus", "Memory_Max", "memorymax", "", "env ", "image"])
async def test_unknown_option_key_is_invalid_argument_naming_the_key(client: Client, busybox_tar: Path,
                                                                     nothing_left: Check, key: str) -> None:
    await refused(client.create_container("", str(busybox_tar), ["/bin/true"], {key: Variant("s", "x")}),
                  "InvalidArgument", f"Unknown option '{key}'")
    await refused(client.run_container("", str(busybox_tar), ["/bin/true"],
                                       {"env": ["A=1"], key: Variant("t", 1)}), "InvalidArgument", f"'{key}'")
    await nothing_left(busybox_tar)


@pytest.mark.parametrize("entry", ["NOEQUALS", "=x", "=", "A B=c", "1A=x", "A-B=c", "A.B=c", " A=x", "\u00c4=x", ""])
async def test_bad_env_entries_are_invalid_argument_naming_the_entry(client: Client, busybox_tar: Path,
                                                                     nothing_left: Check, entry: str) -> None:
    await refused(client.create_container("", str(busybox_tar), ["/bin/true"], {"env": ["GOOD=1", entry]}),
                  "InvalidArgument", f"'{entry}'")
    await nothing_left(busybox_tar)


@pytest.mark.parametrize("key,value,needle", [
    ("workdir", "tmp", "'tmp'"),
    ("workdir", "", "''"),
    ("workdir", "./x", "'./x'"),
    ("namespaces", ["bogus"], "'bogus'"),
    ("namespaces", ["mount", "PID"], "'PID'"),
    ("namespaces", ["mount", "user"], "'user'"),
    ("namespaces", ["pid", "net"], "mount"),
    ("namespaces", [], "mount"),
    ("hostname", "bad_host!", "'bad_host!'"),
    ("hostname", "h" * 65, "'" + "h" * 65 + "'"),
    ("user", "root;id", "'root;id'"),
    ("user", "a:b:c", "'a:b:c'"),
    ("labels", {"": "x"}, "''"),
])
async def test_bad_option_values_are_invalid_argument_naming_the_value(
        client: Client, busybox_tar: Path, nothing_left: Check, key: str, value: object, needle: str) -> None:
    await refused(client.create_container("", str(busybox_tar), ["/bin/true"], {key: value}),
                  "InvalidArgument", needle)
    await nothing_left(busybox_tar)


# --- commands --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], [""], ["", "arg"]], ids=repr)
async def test_empty_command_is_invalid_argument_and_imports_nothing(client: Client, tmp_path: Path,
                                                                     nothing_left: Check, command: list[str]) -> None:
    image = write_tar(tmp_path / "fresh.tar", directory("bin"))  # never imported before: it must not be now
    await refused(client.create_container("", str(image), command, {}), "InvalidArgument", "command is empty")
    await refused(client.run_container("", str(image), command, {}), "InvalidArgument", "command is empty")
    await nothing_left()


@pytest.mark.parametrize("command,code,needle", [
    (["/no/such/command-x"], 127, "'/no/such/command-x'"),
    (["no-such-command-x", "arg"], 127, "'no-such-command-x'"),
    (["/etc/passwd"], 126, "'/etc/passwd'"),  # a file, not executable
    (["/etc"], 126, "'/etc'"),  # a directory
])
async def test_command_that_cannot_be_executed_fails_the_start_and_leaves_a_failed_container(
        client: Client, busybox_tar: Path, name: str, nothing_left: Check, command: list[str], code: int,
        needle: str) -> None:
    error = "CommandNotFound" if code == 127 else "CommandNotExecutable"
    await refused(asyncio.wait_for(client.run_container(name, str(busybox_tar), command, {}), 10),
                  error, needle, f"'{name}'")
    path = await client.get_container(name)
    props = await client.properties(path)
    assert props["State"] == "failed", props
    assert needle in props["FailureReason"] and props["ExitCode"] == code, props
    assert await asyncio.wait_for(client.wait(path), 10) == code
    # Starting it again fails the same way, and does not hang either.
    await refused(asyncio.wait_for(client.start(path), 10), error, needle)
    props = await client.properties(path)
    assert (props["State"], props["ExitCode"]) == ("failed", code), props
    await client.remove(path)
    await nothing_left(busybox_tar)


async def test_create_then_start_of_a_missing_command_is_command_not_found(client: Client, busybox_tar: Path,
                                                                           name: str, nothing_left: Check) -> None:
    path = await client.create_container(name, str(busybox_tar), ["/nope"], {})
    await refused(asyncio.wait_for(client.start(path), 10), "CommandNotFound", "'/nope'")
    props = await client.properties(path)
    assert (props["State"], props["ExitCode"]) == ("failed", 127) and "'/nope'" in props["FailureReason"]
    await client.remove(path)
    await nothing_left(busybox_tar)


def _agent_usage() -> tuple[int, int]:
    """The agent's CPU time in clock ticks, and how many pidfds it holds."""
    pid = subprocess.run(["systemctl", "show", "-P", "MainPID", "quilt-agent"], capture_output=True, text=True,
                         check=True).stdout.strip()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    pidfds = sum(1 for fd in os.listdir(f"/proc/{pid}/fd") if "pidfd" in os.readlink(f"/proc/{pid}/fd/{fd}"))
    return int(fields[11]) + int(fields[12]), pidfds


@pytest.mark.starves_cpu  # busy loops on every core: the loop may wait for a CPU, not for I/O
async def test_a_failed_start_removed_at_once_leaves_the_agent_idle(client: Client, busybox_tar: Path, name: str,
                                                                    nothing_left: Check) -> None:
    # The remove may come before the failed container's monitor has exited; the agent must then stop watching
    # the monitor's pidfd, or the readable pidfd spins its event loop for ever. Busy loops beside it slow the
    # monitor down enough that the remove often wins.
    await client.create_container(name, str(busybox_tar), ["/bin/true"], {})  # the image is imported
    await client.remove(await client.get_container(name))
    _, pidfds_before = _agent_usage()
    started = int(time.time())
    burners = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        async with Client() as remover:
            for i in range(30):
                run = asyncio.ensure_future(client.run_container(f"{name}-{i}", str(busybox_tar), ["/nope"], {}))
                # The remove is sent as soon as the state says failed, before the start's reply.
                while not (listed := [e for e in await remover.list_containers() if e.name == f"{name}-{i}"]):
                    pass
                while (await remover.properties(listed[0].path))["State"] != "failed":
                    pass
                await remover.remove(listed[0].path)
                with pytest.raises(ClientError) as err:
                    await run
                assert err.value.name == ERR + "CommandNotFound"
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    # The monitors exit a moment after their containers failed: the agent then closes their pidfds.
    await until(lambda: _agent_usage()[1] == pidfds_before,
                lambda: f"the agent holds {_agent_usage()[1]} pidfds, {pidfds_before} before")
    ticks, _ = _agent_usage()
    # Held on purpose: an agent left with nothing to do must use (almost) no CPU over half a second.
    await asyncio.sleep(0.5)
    ticks_after, _ = _agent_usage()
    assert ticks_after - ticks < 10, "the agent keeps busy with nothing to do"
    errors = subprocess.run(["journalctl", "-u", "quilt-agent", "-p", "err", "-o", "cat", "--no-pager",
                             f"--since=@{started}"], capture_output=True, text=True, check=True).stdout
    assert errors == "", "the agent logged errors"
    await nothing_left(busybox_tar)


# --- other calls -----------------------------------------------------------------------------------


async def test_get_logs_with_a_bad_option_is_invalid_argument_naming_it(client: Client, busybox_tar: Path,
                                                                        name: str, nothing_left: Check) -> None:
    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {})
    await refused(client.get_logs(path, {"bogus": Variant("u", 1)}), "InvalidArgument", "'bogus'")
    await refused(client.get_logs(path, {"lines": Variant("s", "5")}), "InvalidArgument", "'lines'", "'5'")
    await refused(client.get_logs(path, {"since": Variant("x", -1)}), "InvalidArgument", "'since'", "-1")
    await client.remove(path)
    await nothing_left(busybox_tar)


@pytest.mark.parametrize("sig", [0, -1, 65, 1000])
async def test_kill_with_an_invalid_signal_is_invalid_argument(client: Client, busybox_tar: Path, name: str,
                                                               nothing_left: Check, sig: int) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "30"], {})
    await refused(client.kill(path, sig), "InvalidArgument", str(sig))
    assert (await client.properties(path))["State"] == "running"
    await client.remove(path, force=True)
    await nothing_left(busybox_tar)


async def test_operations_on_a_removed_container_are_no_such_container(client: Client, busybox_tar: Path,
                                                                       name: str, nothing_left: Check) -> None:
    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {})
    cid = (await client.properties(path))["Id"]
    await client.remove(path)
    calls = {
        "Start": lambda: client.start(path), "Stop": lambda: client.stop(path, 1),
        "Kill": lambda: client.kill(path, 15), "Remove": lambda: client.remove(path, force=True),
        "Wait": lambda: client.wait(path), "GetLogs": lambda: client.get_logs(path, {}),
        "GetEnvironment": lambda: client.get_environment(path), "Properties.GetAll": lambda: client.properties(path),
    }
    for label, call in calls.items():
        with pytest.raises(ClientError) as info:
            await call()
        assert (info.value.name, label) == (ERR + "NoSuchContainer", label), info.value
        assert cid in info.value.message, info.value
    await refused(client.get_container(name), "NoSuchContainer", f"'{name}'")
    await refused(client.get_container(cid), "NoSuchContainer", f"'{cid}'")
    await nothing_left(busybox_tar)


async def test_get_container_of_an_unknown_name_is_no_such_container(client: Client, nothing_left: Check) -> None:
    for unknown in ("nobody-here", "", "ab", "/org/quilt/Runtime"):
        await refused(client.get_container(unknown), "NoSuchContainer", f"'{unknown}'")
    await nothing_left()


# --- the same through plain tools ------------------------------------------------------------------


def busctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["busctl", "call", *MANAGER, "--", *args], capture_output=True, text=True, timeout=30)


def gdbus(method: str, *args: str, path: str = MANAGER[1], interface: str = MANAGER[2]) -> subprocess.CompletedProcess:
    return subprocess.run(["gdbus", "call", "--system", "--dest", MANAGER[0], "--object-path", path,
                           "--method", f"{interface}.{method}", *args], capture_output=True, text=True, timeout=30)


async def test_busctl_prints_the_message_of_the_error_and_fails(client: Client, busybox_tar: Path,
                                                                nothing_left: Check) -> None:
    r = busctl("CreateContainer", "ssasa{sv}", "bad/name", "/x", "1", "/bin/true", "0")
    assert r.returncode != 0 and "Invalid container name 'bad/name'" in r.stderr, r
    r = busctl("CreateContainer", "ssasa{sv}", "", "/no/such.tar", "1", "/bin/true", "0")
    assert r.returncode != 0 and "'/no/such.tar'" in r.stderr, r
    r = busctl("CreateContainer", "ssasa{sv}", "", str(busybox_tar), "1", "/bin/true", "1", "bogus", "s", "x")
    assert r.returncode != 0 and "Unknown option 'bogus'" in r.stderr, r
    r = busctl("CreateContainer", "ssasa{sv}", "", str(busybox_tar), "1", "/bin/true", "1", "memory_max", "s", "1G")
    assert r.returncode != 0 and "'memory_max'" in r.stderr and "'1G'" in r.stderr, r
    r = busctl("CreateContainer", "ssasa{sv}", "", str(busybox_tar), "0", "0")
    assert r.returncode != 0 and "command is empty" in r.stderr, r
    r = busctl("GetContainer", "s", "nobody-here")
    assert r.returncode != 0 and "'nobody-here'" in r.stderr, r
    assert r.stdout == ""
    await nothing_left(busybox_tar)


async def test_gdbus_prints_the_error_name_and_message(client: Client, busybox_tar: Path, name: str,
                                                       nothing_left: Check) -> None:
    r = gdbus("CreateContainer", "bad/name", "/x", "['/bin/true']", "{}")
    assert r.returncode != 0, r
    assert "org.quilt.Runtime.Error.InvalidArgument: Invalid container name 'bad/name'" in r.stderr, r
    r = gdbus("CreateContainer", "", "/no/such.tar", "['/bin/true']", "{}")
    assert r.returncode != 0 and "org.quilt.Runtime.Error.NoSuchImage" in r.stderr and "/no/such.tar" in r.stderr, r
    r = gdbus("CreateContainer", "", str(busybox_tar), "['/bin/true']", "{'memory_max': <uint64 1>}")
    assert r.returncode != 0 and "org.quilt.Runtime.Error.InvalidArgument" in r.stderr and "memory_max" in r.stderr, r
    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {})
    r = gdbus("CreateContainer", name, str(busybox_tar), "['/bin/true']", "{}")
    assert r.returncode != 0 and f"org.quilt.Runtime.Error.NameInUse: The name '{name}'" in r.stderr, r
    await client.remove(path)
    r = gdbus("Start", path=path, interface="org.quilt.Runtime.Container")
    assert r.returncode != 0 and "org.quilt.Runtime.Error.NoSuchContainer" in r.stderr, r
    await nothing_left(busybox_tar)
