"""ImportImage through the real bus, and containers of the images: every kind of source is one image, its layers
are stacked with their whiteouts, its config is the containers' default, names, objects, removal and prune."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError
from tests import imagetools
from tests.integration.conftest import systemctl
from tests.integration.images.conftest import ERR, IMAGES
from tests.integration.waiting import until


APP_LAST = "srv="  # the app image's last line


async def run_logs(client: Client, name: str, image: str, command: list[str], options: dict | None = None, *,
                   last: str = APP_LAST) -> list[str]:
    """Run the container to its end; its log lines once journald has the last one (the one starting with last)."""
    path = await client.run_container(name, image, command, options or {})
    assert await asyncio.wait_for(client.wait(path), 20) == 0

    async def complete() -> list[str] | None:
        lines = [line.text for line in await client.get_logs(path, {})]
        return lines if any(line.startswith(last) for line in lines) else None

    return await until(complete, f"no line starting with {last!r} in the log of {name}")


async def _has_line(client: Client, path: str, start: str) -> bool:
    return any(line.text.startswith(start) for line in await client.get_logs(path, {}))


def fields(lines: list[str]) -> dict[str, str]:
    """'cwd=/work uid=1000 A=x ... args=a b' lines -> {cwd: /work, ..., args: "a b"}."""
    out = {}
    for line in lines:
        if line.startswith("cwd="):
            head, _, args = line.partition(" args=")
            out["args"] = args
            out.update(kv.split("=", 1) for kv in head.split())
        elif "=" in line:
            key, _, value = line.partition("=")
            out[key] = value.strip()
    return out


@pytest.mark.parametrize("kind", ["oci-dir", "oci-archive", "docker-archive", "docker-archive.zst"])
async def test_each_kind_of_source_is_the_same_image(images_client: Client, app_archives: dict[str, Path],
                                                     tmp_path: Path, kind: str) -> None:
    if kind == "docker-archive.zst":
        source = tmp_path / "image-without-a-telling-name"
        source.write_bytes(subprocess.run(["zstd", "-q", "-c", str(app_archives["docker-archive"])],
                                          capture_output=True, check=True).stdout)
    else:
        source = app_archives[kind]
    path = await images_client.import_image(str(source), "")
    props = await images_client.image_properties(path)
    config = json.loads(props["Config"])
    assert config["config"]["Entrypoint"] == ["/bin/app"] and config["config"]["Cmd"] == ["from-cmd"]
    assert len(props["Layers"]) == 5 and all(d.startswith("sha256:") for d in props["Layers"])
    assert props["Layers"] == config["rootfs"]["diff_ids"]
    assert path == f"/org/quilt/Runtime/image/{props['Id']}"
    # The id is the config's digest, as in Docker and Podman: the same whatever the source.
    reference = await images_client.import_image(str(app_archives["oci-dir"]), "")
    assert reference == path
    assert props["Size"] > 1_000_000 and props["CreatedAt"] > 0
    assert props["Names"] == (["docker.io/test/app:v1"] if kind.startswith("docker") else [])


async def test_a_container_sees_the_layers_whiteouts_and_the_configs_defaults(
        images_client: Client, app_layout: Path, name: str) -> None:
    await images_client.import_image(str(app_layout), "test/app:v1")
    seen = fields(await run_logs(images_client, name, "test/app:v1", []))
    # Entrypoint + Cmd, WorkingDir, User, Env of the config; a file deleted, a directory replaced by a file, a
    # directory made opaque by upper layers.
    assert seen == {"cwd": "/work", "uid": "1000", "A": "from-image", "B": "image-b", "args": "from-cmd",
                    "deleted": "absent", "opt": "now a file", "srv": "new"}, seen
    props = await images_client.properties(await images_client.get_container(name))
    assert props["Command"] == ["/bin/app", "from-cmd"]
    assert props["Labels"] == {"org.example.role": "test"}
    assert (props["WorkingDirectory"], props["User"]) == ("/work", "1000")


async def test_a_command_given_replaces_cmd_and_what_the_caller_gives_wins(
        images_client: Client, app_layout: Path, name: str) -> None:
    await images_client.import_image(str(app_layout), "test/app:v1")
    seen = fields(await run_logs(images_client, name, "test/app:v1", ["given", "two"],
                                 {"env": ["A=caller"], "workdir": "/tmp", "user": "0",
                                  "labels": {"org.example.role": "mine"}}))
    assert (seen["args"], seen["A"], seen["B"], seen["cwd"], seen["uid"]) == ("given two", "caller", "image-b",
                                                                              "/tmp", "0")
    props = await images_client.properties(await images_client.get_container(name))
    assert props["Command"] == ["/bin/app", "given", "two"]  # Entrypoint kept, as in Docker
    assert props["Labels"] == {"org.example.role": "mine"}


async def test_stop_sends_the_images_stop_signal(images_client: Client, app_layout: Path, name: str) -> None:
    await images_client.import_image(str(app_layout), "test/app:v1")
    path = await images_client.run_container(name, "test/app:v1", ["wait"], {})
    assert (await images_client.properties(path))["StopSignal"] == signal.SIGUSR1
    await until(lambda: _has_line(images_client, path, APP_LAST), "the app never started waiting")  # trap set
    await images_client.stop(path, 10)
    props = await images_client.properties(path)
    assert props["ExitCode"] == 7, props  # the trap for SIGUSR1 ran: SIGTERM would have killed it (143)
    assert "got-usr1" in [line.text for line in await images_client.get_logs(path, {})]


async def test_the_container_root_is_an_overlay_of_every_layer_top_first(images_client: Client, app_layout: Path,
                                                                         name: str) -> None:
    image = await images_client.import_image(str(app_layout), "test/app:v1")
    layers = (await images_client.image_properties(image))["Layers"]
    path = await images_client.run_container(name, "test/app:v1", ["wait"], {})
    pid = (await images_client.properties(path))["MainPID"]
    mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    root = next(line for line in mounts if line.split()[4] == "/")
    lower = next(o for o in root.split(" - ")[1].split()[2].split(",") if o.startswith("lowerdir="))
    dirs = lower.removeprefix("lowerdir=").split(":")
    assert dirs == [str(IMAGES / "layers" / d.removeprefix("sha256:")) for d in reversed(layers)]


async def test_create_takes_a_name_an_id_an_id_prefix_or_a_path(images_client: Client, app_archives: dict[str, Path],
                                                               name: str) -> None:
    image = await images_client.import_image(str(app_archives["oci-dir"]), "test/app:v1")
    image_id = (await images_client.image_properties(image))["Id"]
    for i, ref in enumerate(["test/app:v1", image_id, image_id[:12], str(app_archives["oci-archive"])]):
        seen = fields(await run_logs(images_client, f"{name}-{i}", ref, ["x"]))
        assert seen["args"] == "x", ref
    with pytest.raises(ClientError) as err:
        await images_client.create_container(name, "test/nothing:v1", ["x"], {})
    assert err.value.name == ERR + "NoSuchImage" and "test/nothing:v1" in err.value.message


async def test_an_empty_command_with_an_image_without_one_is_invalid_argument(images_client: Client,
                                                                              busybox_tar: Path) -> None:
    await images_client.import_image(str(busybox_tar), "bb:v1")
    with pytest.raises(ClientError) as err:
        await images_client.create_container("", "bb:v1", [], {})
    assert err.value.name == ERR + "InvalidArgument" and "'bb:v1' has no Entrypoint or Cmd" in err.value.message


async def test_a_rootfs_tarball_imports_with_config_changes(images_client: Client, busybox_tar: Path,
                                                            name: str) -> None:
    path = await images_client.import_image(str(busybox_tar), "bb:changed", {
        "cmd": ["/bin/sh", "-c", "echo $GREETING from $(pwd)"], "env": ["GREETING=hello"], "workdir": "/tmp"})
    props = await images_client.image_properties(path)
    assert len(props["Layers"]) == 1
    assert await run_logs(images_client, name, "bb:changed", [], last="hello") == ["hello from /tmp"]


async def test_a_second_import_unpacks_nothing_and_takes_next_to_no_time(images_client: Client,
                                                                         app_archives: dict[str, Path]) -> None:
    first = time.monotonic()
    path = await images_client.import_image(str(app_archives["oci-archive"]), "")
    first = time.monotonic() - first
    layers = [IMAGES / "layers" / d.removeprefix("sha256:") for d in
              (await images_client.image_properties(path))["Layers"]]
    inodes = [d.stat().st_ino for d in layers]
    again = time.monotonic()
    for kind in ("oci-dir", "oci-archive", "docker-archive"):
        assert await images_client.import_image(str(app_archives[kind]), "") == path
    again = (time.monotonic() - again) / 3
    assert [d.stat().st_ino for d in layers] == inodes
    assert again < 0.5, (first, again)


async def test_import_reports_its_progress_as_signals(images_client: Client, app_archives: dict[str, Path],
                                                      tmp_path: Path) -> None:
    # A copy under a new name still has the same content; a new layer on top makes a new image to unpack.
    layout = tmp_path / "layout"
    shutil.copytree(app_archives["oci-dir"], layout)
    imagetools.oci_layout(layout, "v2", [lambda root: (root / "new-file").write_text("x" * 300_000)], base="v1")
    await images_client.import_image(str(layout), "", {"ref": "v1"})
    progress = await images_client.watch_image_progress("test-job-1")
    path = await images_client.import_image(str(layout), "", {"job": "test-job-1", "ref": "v2"})
    props = await images_client.image_properties(path)
    seen = []
    while not progress.empty():
        seen.append(progress.get_nowait())
    phases = [p.phase.split()[0] for p in seen]
    assert "unpacking" in phases and "unpacked" in phases and "exists" in phases, phases
    assert seen[-1].phase == f"done {props['Id']}" and seen[-1].done == props["Size"]
    unpacking = [p for p in seen if p.phase.startswith("unpacking")]
    assert all(p.done <= p.total for p in unpacking) and unpacking[-1].total > 0


async def test_two_running_imports_cannot_share_a_job(images_client: Client, busybox_tar: Path) -> None:
    """A job's progress goes to its caller: a second call with the job of one still running is refused, and the
    first goes on."""
    reader, writer = os.pipe()
    try:
        first = asyncio.ensure_future(images_client.import_image_fd(reader, "", {"job": "shared-job"}))

        async def refused() -> ClientError | None:
            with open(os.devnull, "rb") as empty:
                try:
                    await images_client.import_image_fd(empty.fileno(), "", {"job": "shared-job"})
                except ClientError as err:
                    return err if "shared-job" in err.message else None
            return None

        err = await until(refused, "the second call with a running call's job was not refused")
        assert err.name == ERR + "InvalidArgument" and "still running" in err.message, err
        with open(writer, "wb", closefd=False) as out:
            out.write(busybox_tar.read_bytes())
        os.close(writer)
        writer = -1
        path = await asyncio.wait_for(first, 30)
        assert (await images_client.image_properties(path))["Id"]
    finally:
        os.close(reader)
        if writer != -1:
            os.close(writer)


async def test_image_objects_names_and_list(images_client: Client, app_layout: Path, tmp_path: Path) -> None:
    app = await images_client.import_image(str(app_layout), "test/app:v1")
    await images_client.import_image(str(app_layout), "test/app:also")
    unnamed = tmp_path / "unnamed.tar"
    (tmp_path / "hello").write_text("a one-file rootfs\n")
    subprocess.run(["tar", "-C", str(tmp_path), "-cf", str(unnamed), "hello"], check=True)
    bb = await images_client.import_image(str(unnamed), "")
    rows = {(e.name, e.path) for e in await images_client.list_images()}
    assert {("test/app:v1", app), ("test/app:also", app), ("", bb)} <= rows
    assert await images_client.get_image("test/app:also") == app
    assert (await images_client.image_properties(app))["Names"] == ["test/app:also", "test/app:v1"]
    # Removing one of two names only takes that name.
    await images_client.remove_image("test/app:also")
    assert (await images_client.image_properties(app))["Names"] == ["test/app:v1"]
    await images_client.remove_image("test/app:v1")
    for call in (images_client.get_image("test/app:v1"), images_client.image_properties(app)):
        with pytest.raises(ClientError) as err:
            await call
        assert err.value.name == ERR + "NoSuchImage", err.value


async def test_removing_an_image_in_use_is_refused_unless_forced(images_client: Client, busybox_tar: Path,
                                                                 name: str) -> None:
    await images_client.import_image(str(busybox_tar), "bb:v1")
    container = await images_client.create_container(name, "bb:v1", ["/bin/true"], {})
    with pytest.raises(ClientError) as err:
        await images_client.remove_image("bb:v1")
    assert err.value.name == ERR + "ImageInUse" and name in err.value.message
    assert await images_client.get_image("bb:v1")
    await images_client.remove_image("bb:v1", True)
    assert container not in {e.path for e in await images_client.list_containers()}
    with pytest.raises(ClientError):
        await images_client.get_image("bb:v1")


async def test_prune_removes_unnamed_unused_images_and_reports_the_bytes(images_client: Client, tmp_path: Path,
                                                                         app_layout: Path, name: str) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(app_layout, layout)
    imagetools.oci_layout(layout, "dangling", [lambda root: (root / "big").write_bytes(os.urandom(500_000))])
    imagetools.oci_layout(layout, "used", [lambda root: (root / "used").write_bytes(os.urandom(1000))])
    dangling = await images_client.import_image(str(layout), "", {"ref": "dangling"})
    used = await images_client.import_image(str(layout), "", {"ref": "used"})
    await images_client.create_container(name, (await images_client.image_properties(used))["Id"], ["/bin/true"], {})
    named = await images_client.import_image(str(layout), "test/app:v1", {"ref": "v1"})

    freed = await images_client.prune_images()

    assert freed >= 500_000
    paths = {e.path for e in await images_client.list_images()}
    assert dangling not in paths and {used, named} <= paths
    assert await images_client.prune_images() == 0


async def test_images_of_the_previous_store_layout_are_taken_over(images_client: Client, busybox_tar: Path,
                                                                  name: str) -> None:
    old_id = "0123456789abcdef" * 4
    systemctl("stop", "quilt-agent")
    try:
        layer = IMAGES / "layers" / old_id
        layer.mkdir()
        subprocess.run(["tar", "-xf", str(busybox_tar), "-C", str(layer)], check=True)
        (IMAGES / "layers" / f"{old_id}.json").write_text(json.dumps({"source": str(busybox_tar), "size": 1,
                                                                      "created_at": 1}))
    finally:
        systemctl("start", "quilt-agent")
    async with Client() as fresh:
        assert (await fresh.image_properties(await fresh.get_image(old_id)))["Layers"] == [f"sha256:{old_id}"]
        assert await run_logs(fresh, name, old_id, ["/bin/echo", "old"], last="old") == ["old"]
        await fresh.remove(await fresh.get_container(name), True)
        await fresh.remove_image(old_id)


async def test_podman_save_archives_import_as_the_image_podman_has(images_client: Client, busybox_tar: Path,
                                                                   tmp_path: Path, name: str) -> None:
    short = Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp"))  # podman wants a runroot under 50 characters
    podman = ["podman", "--root", str(short / "root"), "--runroot", str(short / "run"), "--storage-driver",
              "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
    try:
        await _podman_save_and_import(images_client, busybox_tar, tmp_path, name, podman)
    finally:
        shutil.rmtree(short, ignore_errors=True)


async def _podman_save_and_import(images_client: Client, busybox_tar: Path, tmp_path: Path, name: str,
                                  podman: list[str]) -> None:
    subprocess.run([*podman, "import", "--change", 'CMD ["/bin/echo", "from podman"]', str(busybox_tar),
                    "localhost/podman-made:v1"], check=True, capture_output=True)
    podman_id = subprocess.run([*podman, "image", "inspect", "--format", "{{.Id}}", "localhost/podman-made:v1"],
                               check=True, capture_output=True, text=True).stdout.strip()
    paths = []
    for fmt in ("docker-archive", "oci-archive"):
        out = tmp_path / f"{fmt}.tar"
        subprocess.run([*podman, "save", "--format", fmt, "-o", str(out), "localhost/podman-made:v1"], check=True,
                       capture_output=True)
        paths.append(await images_client.import_image(str(out), "" if fmt == "docker-archive" else "podman:oci"))
    assert paths[0] == paths[1] == f"/org/quilt/Runtime/image/{podman_id}"  # podman's id is the config's too
    props = await images_client.image_properties(paths[0])
    assert props["Names"] == ["localhost/podman-made:v1", "podman:oci"]  # the archive's RepoTag, and one given
    assert await run_logs(images_client, name, "localhost/podman-made:v1", [], last="from podman") == ["from podman"]
