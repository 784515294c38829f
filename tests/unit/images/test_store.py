"""The image store: content-addressed blobs and layers, images as manifest + config + layers, idempotent imports of
every format, names, removal and prune, and nothing half-made left behind. Real images from umoci and skopeo."""

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from quilt_agent.errors import ImageInvalid, InvalidArgument, NoSuchImage
from quilt_agent.images import oci, tarball
from quilt_agent.images.store import ImageStore, ImportOptions
from tests import imagetools


def rootfs_tar(path: Path, files: dict[str, bytes], *, gzip: bool = False) -> Path:
    """A rootfs tarball with these regular files (and /bin/sh -> /bin/busybox), made by tarfile."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "/bin/busybox"
        tar.addfile(link)
    raw = out.getvalue()
    if gzip:
        raw = subprocess.run(["gzip", "-n", "-c"], input=raw, capture_output=True, check=True).stdout
    path.write_bytes(raw)
    return path


GOOD = {"bin/busybox": b"b" * 1000, "etc/passwd": b"root:x:0:0::/root:/bin/sh\n"}


def raw_tar(*members: tarfile.TarInfo) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size))
    return out.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.linkname, m.size = kind, linkname, size
    return m


def tree(root: Path) -> list[tuple[str, int]]:
    """Every path under root with its mode, to compare the store before and after."""
    return sorted((str(p.relative_to(root)), p.lstat().st_mode) for p in [root, *root.rglob("*")])


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "var/lib/quilt/images")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A three-layer OCI layout made by umoci (a file deleted and a directory replaced in the top one), plus a
    raw layer that makes /srv opaque; and its oci-archive and docker-archive by skopeo."""
    root = tmp_path_factory.mktemp("oci")

    def srv(rootfs: Path) -> None:
        (rootfs / "srv").mkdir()
        (rootfs / "srv/old").write_text("hidden by the opaque layer\n")

    steps = [*imagetools.whiteout_steps(), srv]
    imagetools.oci_layout(root / "layout", "v1", steps, ["--config.cmd=/bin/sh", "--config.env=A=1",
                                                         "--config.stopsignal=SIGUSR1"], [imagetools.opaque_layer()])
    imagetools.copy(f"oci:{root}/layout:v1", f"oci-archive:{root}/oci.tar")
    imagetools.copy(f"oci:{root}/layout:v1", f"docker-archive:{root}/docker.tar:test/app:v1")
    return root


# --- rootfs tarballs -----------------------------------------------------------------------------


def test_a_rootfs_tarball_is_a_one_layer_image_named_by_its_config(tmp_path: Path, store: ImageStore) -> None:
    path = rootfs_tar(tmp_path / "rootfs.tar.gz", GOOD, gzip=True)
    before = time.time_ns() // 1000
    image = store.import_path(path)
    plain = subprocess.run(["gzip", "-dc", str(path)], capture_output=True, check=True).stdout
    diff_id = sha(plain)
    config = store.config_bytes(image)
    assert image.id == hashlib.sha256(config).hexdigest() == image.config_digest.removeprefix("sha256:")
    assert image.layers == (diff_id,)
    assert json.loads(config)["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}
    manifest = json.loads((store.root / "blobs/sha256" / image.digest.removeprefix("sha256:")).read_bytes())
    assert manifest["layers"] == [{"mediaType": oci.OCI_LAYER + "+gzip", "digest": sha(path.read_bytes()),
                                   "size": path.stat().st_size}]
    layer = store.root / "layers" / diff_id.removeprefix("sha256:")
    assert image.lower == str(layer)
    assert (layer / "bin/busybox").read_bytes() == GOOD["bin/busybox"]
    assert os.readlink(layer / "bin/sh") == "/bin/busybox"
    assert image.size == sum(map(len, GOOD.values()))
    assert before <= image.created_at <= time.time_ns() // 1000
    assert (image.source, image.names) == (str(path), ())
    assert list((store.root / "tmp").iterdir()) == []


def test_store_root_is_private_even_if_it_existed(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir(mode=0o755)
    ImageStore(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert sorted(p.name for p in root.iterdir()) == ["blobs", "images", "layers", "tmp"]


def test_second_import_of_the_same_bytes_unpacks_nothing(tmp_path: Path, store: ImageStore) -> None:
    first = store.import_path(rootfs_tar(tmp_path / "a.tar", GOOD))
    layer = first.layer_dirs[0]
    seen = layer.stat(), (layer / "bin/busybox").stat()
    copy = Path(shutil.copy(tmp_path / "a.tar", tmp_path / "copy-of-a.tar"))

    again = store.import_path(tmp_path / "a.tar")
    from_copy = ImageStore(store.root).import_path(copy)  # a new agent: nothing cached in memory

    assert again == from_copy == first  # same bytes, same image: the first source stays recorded
    for now, then in zip((layer.stat(), (layer / "bin/busybox").stat()), seen):
        assert (now.st_ino, now.st_mtime_ns, now.st_ctime_ns) == (then.st_ino, then.st_mtime_ns, then.st_ctime_ns)


def test_an_image_is_owned_by_the_uid_that_first_brought_its_content_in(tmp_path: Path, store: ImageStore) -> None:
    first = store.import_path(rootfs_tar(tmp_path / "a.tar", GOOD), "one", owner_uid=1000)
    again = store.import_path(tmp_path / "a.tar", "two", owner_uid=2000)  # a new name, the same content
    assert first.owner_uid == again.owner_uid == 1000
    assert ImageStore(store.root).get("two").owner_uid == 1000  # kept across agents
    cached = store.commit_layer(first.id, rootfs_tar(tmp_path / "layer.tar", {"etc/setup": b"ran"}), "key",
                                ("apt-get install x",), owner_uid=3000)
    assert cached.owner_uid == 3000
    # An image recorded before owners were kept is root's.
    record = store.root / "images" / f"{first.id}.json"
    data = json.loads(record.read_text())
    del data["owner_uid"]
    record.write_text(json.dumps(data))
    assert ImageStore(store.root).get("one").owner_uid == 0


def test_the_same_tar_compressed_otherwise_is_the_same_image(tmp_path: Path, store: ImageStore) -> None:
    plain = store.import_path(rootfs_tar(tmp_path / "a.tar", GOOD))
    gzipped = store.import_path(rootfs_tar(tmp_path / "a.tar.gz", GOOD, gzip=True))
    assert gzipped.id == plain.id and gzipped.layer_dirs == plain.layer_dirs
    assert len([p for p in (store.root / "layers").iterdir() if p.is_dir()]) == 1


def test_different_bytes_make_different_images(tmp_path: Path, store: ImageStore) -> None:
    a = store.import_path(rootfs_tar(tmp_path / "a.tar", GOOD))
    b = store.import_path(rootfs_tar(tmp_path / "b.tar", {**GOOD, "etc/hostname": b"b\n"}))
    assert a.id != b.id
    assert store.list() == [a, b]


def test_config_changes_of_a_rootfs_tarball_make_its_config(tmp_path: Path, store: ImageStore) -> None:
    path = rootfs_tar(tmp_path / "a.tar", GOOD)
    changes = {"cmd": ["/bin/sh", "-c", "echo hi"], "env": ["A=1"], "workdir": "/srv", "stop_signal": "SIGINT"}
    image = store.import_path(path, "app", ImportOptions(changes=changes))
    config = store.image_config(image)
    assert (config.cmd, config.env, config.workdir, config.stop_signal) == (
        ("/bin/sh", "-c", "echo hi"), ("A=1",), "/srv", "SIGINT")
    assert image.id != store.import_path(path).id  # the same layer, another config
    assert image.names == ("app:latest",)


def test_concurrent_imports_of_the_same_file_make_one_layer(tmp_path: Path, store: ImageStore) -> None:
    path = rootfs_tar(tmp_path / "a.tar", {f"f{i}": bytes(2000) for i in range(200)})
    unpacked = []

    def extract(*args: object, **kwargs: object) -> tarball.Extracted:
        unpacked.append(1)
        return tarball.extract(*args, **kwargs)  # type: ignore[arg-type]

    store._extract = extract
    with ThreadPoolExecutor(6) as pool:
        images = list(pool.map(lambda _: store.import_path(path), range(6)))
    assert all(i == images[0] for i in images)
    assert len(unpacked) == 1
    assert len(list(images[0].layer_dirs[0].iterdir())) == 201
    assert list((store.root / "tmp").iterdir()) == []


def test_work_of_dead_agents_is_removed_on_start_and_ours_is_kept(tmp_path: Path, store: ImageStore) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (store.root / "tmp" / f"{dead.pid}-abc" / "bin").mkdir(parents=True)
    (store.root / "tmp" / f"{dead.pid}-meta.json").write_text("{")
    (store.root / "tmp" / f"{os.getpid()}-busy").mkdir()

    ImageStore(store.root)

    assert [p.name for p in (store.root / "tmp").iterdir()] == [f"{os.getpid()}-busy"]


# --- OCI layouts and archives ---------------------------------------------------------------------


def test_oci_layout_oci_archive_and_docker_archive_are_one_image(layout: Path, store: ImageStore) -> None:
    from_dir = store.import_path(layout / "layout")
    layers = set((store.root / "layers").iterdir())
    from_oci = store.import_path(layout / "oci.tar")
    from_docker = store.import_path(layout / "docker.tar")
    assert from_dir.id == from_oci.id == from_docker.id
    assert set((store.root / "layers").iterdir()) == layers  # nothing unpacked again
    assert len(from_dir.layers) == 5
    assert from_docker.names == ("docker.io/test/app:v1",)  # skopeo writes the RepoTag with its registry
    config = store.image_config(from_docker)
    assert (config.cmd, config.env, config.stop_signal) == (("/bin/sh",), ("A=1",), "SIGUSR1")


def test_a_compressed_docker_archive_is_read_from_its_content(layout: Path, tmp_path: Path,
                                                             store: ImageStore) -> None:
    packed = tmp_path / "image"  # no extension: the content says what it is
    packed.write_bytes(subprocess.run(["zstd", "-q", "-c", str(layout / "docker.tar")], capture_output=True,
                                      check=True).stdout)
    assert store.import_path(packed).id == store.import_path(layout / "layout").id


def test_whiteouts_and_opaque_directories_land_as_overlayfs_wants(layout: Path, store: ImageStore) -> None:
    image = store.import_path(layout / "layout")
    top, opaque = image.layer_dirs[2], image.layer_dirs[4]
    deleted = os.lstat(top / "etc/deleted")
    assert stat.S_ISCHR(deleted.st_mode) and deleted.st_rdev == 0
    assert (top / "opt/dir").read_text() == "now a file\n"
    assert os.getxattr(opaque / "srv", "trusted.overlay.opaque") == b"y"
    assert image.lower.split(":") == [str(d) for d in reversed(image.layer_dirs)]


def test_a_layout_holding_several_images_needs_a_ref(layout: Path, tmp_path: Path, store: ImageStore) -> None:
    two = tmp_path / "two"
    shutil.copytree(layout / "layout", two)
    imagetools.oci_layout(two, "v2", [imagetools.busybox])
    with pytest.raises(ImageInvalid, match="holds 2 images: choose one with the 'ref' option"):
        store.import_path(two)
    assert store.import_path(two, options=ImportOptions(ref="v1")).id == store.import_path(layout / "layout").id
    with pytest.raises(NoSuchImage, match="No image 'v3'"):
        store.import_path(two, options=ImportOptions(ref="v3"))


def test_an_index_picks_this_platform_and_refuses_when_there_is_none(layout: Path, tmp_path: Path,
                                                                     store: ImageStore) -> None:
    multi = tmp_path / "multi"
    shutil.copytree(layout / "layout", multi)
    digest, manifest = imagetools.manifest_of(multi, "v1")
    size = imagetools.blob(multi, digest).stat().st_size
    here = oci.host_platform()
    entries = [{"mediaType": oci.OCI_MANIFEST, "digest": digest, "size": size,
                "platform": {"os": "linux", "architecture": arch}} for arch in ("s390x", here.architecture)]
    index = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": entries}).encode()
    imagetools.blob(multi, sha(index)).write_bytes(index)
    (multi / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": oci.OCI_INDEX, "digest": sha(index), "size": len(index)}]}))
    assert store.import_path(multi).digest == digest

    other = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": entries[:1]}).encode()
    imagetools.blob(multi, sha(other)).write_bytes(other)
    (multi / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": oci.OCI_INDEX, "digest": sha(other), "size": len(other)}]}))
    with pytest.raises(NoSuchImage, match=f"No image for {here} in .*: it has linux/s390x"):
        store.import_path(multi)


# --- what is wrong with an image is named, and the store stays as it was ---------------------------


def _broken_layouts(layout: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Copies of the layout, each broken in one way, with the words its error must have."""
    out = {}

    def copy(name: str) -> tuple[Path, str, dict]:
        d = tmp_path / name
        shutil.copytree(layout / "layout", d)
        digest, manifest = imagetools.manifest_of(d, "v1")
        return d, digest, manifest

    d, digest, manifest = copy("layer-digest")  # a layer whose bytes changed
    top = imagetools.blob(d, manifest["layers"][-1]["digest"])
    top.write_bytes(subprocess.run(["gzip", "-n", "-c"], input=imagetools.tar_layer(("srv/", None), ("srv/x", b"y")),
                                   capture_output=True, check=True).stdout[:top.stat().st_size].ljust(
        top.stat().st_size, b"\0"))
    out["layer-digest"] = (d, "")

    d, digest, manifest = copy("truncated-layer")
    blob = imagetools.blob(d, manifest["layers"][-1]["digest"])
    blob.write_bytes(blob.read_bytes()[:-10])
    out["truncated-layer"] = (d, "bytes, the manifest says")

    d, digest, manifest = copy("missing-layer")
    imagetools.blob(d, manifest["layers"][-1]["digest"]).unlink()
    out["missing-layer"] = (d, "is missing")

    d, digest, manifest = copy("manifest-digest")  # the manifest edited, its name not
    manifest["annotations"] = {"edited": "yes"}
    imagetools.blob(d, digest).write_text(json.dumps(manifest))
    out["manifest-digest"] = (d, f"does not match its digest: expected {digest}")

    d, digest, manifest = copy("diff-id")  # the config lies about a layer's content
    config_path = imagetools.blob(d, manifest["config"]["digest"])
    config = json.loads(config_path.read_text())
    config["rootfs"]["diff_ids"][-1] = "sha256:" + "0" * 64
    new_config = json.dumps(config).encode()
    imagetools.blob(d, sha(new_config)).write_bytes(new_config)
    manifest["config"].update(digest=sha(new_config), size=len(new_config))
    new_manifest = json.dumps(manifest).encode()
    imagetools.blob(d, sha(new_manifest)).write_bytes(new_manifest)
    index = imagetools.index_of(d)
    index["manifests"][0].update(digest=sha(new_manifest), size=len(new_manifest))
    (d / "index.json").write_text(json.dumps(index))
    out["diff-id"] = (d, "does not match the config's DiffID")

    d, digest, manifest = copy("escaping-layer")  # a layer whose member climbs out
    evil = subprocess.run(["gzip", "-n", "-c"], input=raw_tar(info("../../escaped", size=5)), capture_output=True,
                          check=True).stdout
    layer_digest = manifest["layers"][-1]["digest"]
    imagetools.blob(d, layer_digest).unlink()
    imagetools.blob(d, sha(evil)).write_bytes(evil)
    manifest["layers"][-1].update(digest=sha(evil), size=len(evil))
    config_path = imagetools.blob(d, manifest["config"]["digest"])
    config = json.loads(config_path.read_text())
    config["rootfs"]["diff_ids"][-1] = sha(raw_tar(info("../../escaped", size=5)))
    new_config = json.dumps(config).encode()
    imagetools.blob(d, sha(new_config)).write_bytes(new_config)
    manifest["config"].update(digest=sha(new_config), size=len(new_config))
    new_manifest = json.dumps(manifest).encode()
    imagetools.blob(d, sha(new_manifest)).write_bytes(new_manifest)
    index = imagetools.index_of(d)
    index["manifests"][0].update(digest=sha(new_manifest), size=len(new_manifest))
    (d / "index.json").write_text(json.dumps(index))
    out["escaping-layer"] = (d, "is outside the image root")

    d, _, _ = copy("no-index")
    (d / "index.json").write_text("{garbage")
    out["no-index"] = (d, "not valid JSON")
    return out


def test_broken_layouts_are_image_invalid_and_leave_the_store_as_it_was(layout: Path, tmp_path: Path,
                                                                        store: ImageStore) -> None:
    store.import_path(rootfs_tar(tmp_path / "good.tar", GOOD))
    before = tree(store.root)
    for name, (path, words) in _broken_layouts(layout, tmp_path).items():
        with pytest.raises(ImageInvalid, match=f"^Image '{path}.*' is invalid: ") as err:
            store.import_path(path)
        assert words in str(err.value), (name, err.value)
        # An invalid image takes the layers it unpacked with it, the good ones too.
        assert tree(store.root) == before, name
    assert not (tmp_path / "escaped").exists()


def bad_tarballs(tmp_path: Path) -> dict[str, Path]:
    whole = raw_tar(info("big", size=50_000), info("etc/passwd", size=10))
    gz = bytearray(subprocess.run(["gzip", "-n", "-c"], input=whole, capture_output=True, check=True).stdout)
    gz[10] = 0xFF
    made = {
        "escape": raw_tar(info("ok", size=10), info("a/../../escaped", size=10)),
        "truncated": whole[:20_000],
        "not-a-tar": b"not a tarball\n" * 100,
        "empty": b"",
        "missing-hardlink": raw_tar(info("bin/su", tarfile.LNKTYPE, linkname="bin/busybox")),
        "corrupt-gzip": bytes(gz),
    }
    for name, data in made.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in made}


def test_failed_imports_leave_the_store_as_it_was(tmp_path: Path, store: ImageStore) -> None:
    store.import_path(rootfs_tar(tmp_path / "good.tar", GOOD))
    before = tree(store.root)
    for name, path in bad_tarballs(tmp_path).items():
        with pytest.raises(ImageInvalid, match=f"^Image '{path}' is invalid: "):
            store.import_path(path)
        assert tree(store.root) == before, name
    assert not (tmp_path / "escaped").exists()


def test_import_of_a_missing_file_is_no_such_image(tmp_path: Path, store: ImageStore) -> None:
    before = tree(store.root)
    with pytest.raises(NoSuchImage, match=f"^No image '{tmp_path}/nope.tar' \\(no such file\\)$"):
        store.import_path(tmp_path / "nope.tar")
    assert tree(store.root) == before


def test_a_directory_that_is_no_layout_is_invalid_and_a_relative_path_an_invalid_argument(
        tmp_path: Path, store: ImageStore) -> None:
    before = tree(store.root)
    with pytest.raises(ImageInvalid, match="is a directory, but not an OCI image layout"):
        store.import_path(tmp_path)
    with pytest.raises(InvalidArgument, match="not absolute"):
        store.import_path(Path("rootfs.tar"))
    assert tree(store.root) == before


def test_an_import_cut_short_leaves_no_image_and_its_retry_reuses_the_layers(layout: Path,
                                                                             store: ImageStore) -> None:
    def dying(*args: object, **kwargs: object) -> tarball.Extracted:
        if ", layer 3 " in str(kwargs["label"]):
            raise OSError(28, "No space left on device")
        return tarball.extract(*args, **kwargs)  # type: ignore[arg-type]

    store._extract = dying
    with pytest.raises(OSError):
        store.import_path(layout / "layout")
    assert store.list() == [] and not list((store.root / "images").iterdir())
    # The disk, not the image, failed: the layers unpacked are kept, verified, for the retry.
    kept = {p.name: p.stat().st_ino for p in (store.root / "layers").iterdir() if p.is_dir()}
    assert len(kept) >= 2
    store._extract = tarball.extract
    image = store.import_path(layout / "layout")
    assert {d.name: d.stat().st_ino for d in image.layer_dirs if d.name in kept} == kept


# --- lookups, names ------------------------------------------------------------------------------


def test_get_finds_an_image_by_id_digest_prefix_or_name(tmp_path: Path, store: ImageStore) -> None:
    image = store.import_path(rootfs_tar(tmp_path / "a.tar", GOOD), "registry.lan:5000/team/app:v1")
    for ref in (image.id, f"sha256:{image.id}", image.id[:12], "registry.lan:5000/team/app:v1"):
        assert store.get(ref).id == image.id, ref
    assert ImageStore(store.root).get(image.id) == store.get(image.id)  # it is all on disk
    with pytest.raises(NoSuchImage):
        store.get("registry.lan:5000/team/app:v2")


def test_a_name_without_tag_means_latest_and_a_bare_name_finds_docker_hub_ones(tmp_path: Path,
                                                                               store: ImageStore) -> None:
    local = store.import_path(rootfs_tar(tmp_path / "a.tar", GOOD), "app")
    hub = store.import_path(rootfs_tar(tmp_path / "b.tar", {"x": b"1"}), "docker.io/library/busybox:latest")
    assert local.names == ("app:latest",)
    assert store.get("app").id == store.get("app:latest").id == local.id
    assert store.get("busybox").id == store.get("busybox:latest").id == hub.id


@pytest.mark.parametrize("image_id", ["0" * 64, "nope", "../../etc", "A" * 64, ""])
def test_get_of_an_unknown_or_malformed_id_is_no_such_image(store: ImageStore, image_id: str) -> None:
    with pytest.raises(NoSuchImage, match=f"^No image '{image_id}' known$"):
        store.get(image_id)


def test_a_name_moves_to_the_image_imported_last(tmp_path: Path, store: ImageStore) -> None:
    old = store.import_path(rootfs_tar(tmp_path / "a.tar", GOOD), "app:v1")
    new = store.import_path(rootfs_tar(tmp_path / "b.tar", {"x": b"2"}), "app:v1")
    assert store.get(old.id).names == () and store.get("app:v1").id == new.id


def test_list_of_an_empty_store_is_empty(store: ImageStore) -> None:
    assert store.list() == []


def test_reads_answer_while_a_change_holds_the_lock_in_its_fsync(tmp_path: Path, store: ImageStore,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The event loop reads the store while worker threads change it: a read must not wait for their disk."""
    image = store.import_path(rootfs_tar(tmp_path / "a.tar", GOOD), "app:v1")
    config = store.config_bytes(image)
    in_fsync, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        if threading.current_thread().name.startswith("tagging"):
            in_fsync.set()
            release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    with ThreadPoolExecutor(1, thread_name_prefix="tagging") as tagging, ThreadPoolExecutor(1) as reader:
        tagged = tagging.submit(store.tag, image.id, "app:v2")
        try:
            assert in_fsync.wait(10)

            def reads() -> tuple:
                return (store.get("app:v1"), store.find("app:v2"), store.list(), store.is_name("app:v1"),
                        store.config_bytes(image), store.setup_image("no such key"))

            # What the store held before the change, whole: the new name is not there until its file is.
            assert reader.submit(reads).result(timeout=5) == (image, None, [image], True, config, None)
        finally:
            release.set()
        assert tagged.result(timeout=10).names == ("app:v1", "app:v2")
    assert store.get("app:v2") == store.get(image.id) and store.get(image.id).names == ("app:v1", "app:v2")


# --- removal and prune ---------------------------------------------------------------------------


def test_remove_deletes_the_image_its_names_blobs_and_layers(layout: Path, tmp_path: Path,
                                                            store: ImageStore) -> None:
    keep = store.import_path(rootfs_tar(tmp_path / "keep.tar", {"keep": b"1"}), "keep")
    gone = store.import_path(layout / "layout", "gone")

    freed = store.remove(gone.id)

    assert freed >= gone.size
    assert store.list() == [store.get(keep.id)]
    assert not any(d.exists() for d in gone.layer_dirs)
    assert not (store.root / "images" / f"{gone.id}.json").exists()
    assert not (store.root / "blobs/sha256" / gone.id).exists()
    assert not (store.root / "blobs/sha256" / gone.digest.removeprefix("sha256:")).exists()
    assert list((store.root / "tmp").iterdir()) == []
    with pytest.raises(NoSuchImage):
        store.get("gone")
    with pytest.raises(NoSuchImage, match=f"No image '{gone.id}' known"):
        store.remove(gone.id)
    assert store.import_path(layout / "layout").layer_dirs[-1].is_dir()  # and it can come back


def test_remove_keeps_a_layer_another_image_shares(layout: Path, tmp_path: Path, store: ImageStore) -> None:
    first = store.import_path(layout / "layout")
    two = tmp_path / "two"
    shutil.copytree(layout / "layout", two)
    imagetools.oci_layout(two, "v2", [imagetools.busybox])
    second = store.import_path(two, options=ImportOptions(ref="v2"))
    store.remove(first.id)
    assert all(d.is_dir() for d in second.layer_dirs)


def test_prune_removes_unnamed_unused_images_and_orphan_layers_and_counts_the_bytes(
        tmp_path: Path, store: ImageStore) -> None:
    named = store.import_path(rootfs_tar(tmp_path / "named.tar", GOOD), "named")
    used = store.import_path(rootfs_tar(tmp_path / "used.tar", {"u": b"u" * 100}))
    dangling = store.import_path(rootfs_tar(tmp_path / "dangling.tar", {"d": b"d" * 5000}))
    orphan = store.root / "layers" / ("f" * 64)  # as a crash could leave one
    orphan.mkdir()
    (orphan / "file").write_bytes(b"o" * 700)

    freed, removed = store.prune(keep={used.id})

    assert removed == [dangling.id]
    assert {i.id for i in store.list()} == {named.id, used.id}
    assert not orphan.exists() and not dangling.layer_dirs[0].exists()
    assert freed >= 5000 + 700
    assert store.prune(keep={used.id}) == (0, [])


# --- the store before manifests ------------------------------------------------------------------


def test_images_of_the_previous_layout_are_taken_over_under_their_ids(tmp_path: Path) -> None:
    root = tmp_path / "images"
    old_id = "ab" * 32
    (root / "layers" / old_id / "bin").mkdir(parents=True)
    (root / "layers" / old_id / "bin/busybox").write_bytes(b"x" * 10)
    (root / "layers" / f"{old_id}.json").write_text(json.dumps({"source": "/srv/busybox.tar", "size": 10,
                                                                "created_at": 123}))
    (root / "tmp").mkdir()

    store = ImageStore(root)
    image = store.get(old_id)
    assert (image.source, image.size, image.created_at) == ("/srv/busybox.tar", 10, 123)
    assert image.lower == str(root / "layers" / old_id)
    assert store.image_config(image).diff_ids == (f"sha256:{old_id}",)
    assert ImageStore(root).get(old_id) == image  # taken over once, for good
    store.prune(keep=set())
    assert store.list() == [] and not (root / "layers" / old_id).exists()
