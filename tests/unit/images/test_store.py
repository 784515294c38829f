"""The image store: content-addressed layers, idempotent imports, and nothing half-made left behind."""

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from quilt_agent.errors import ImageInvalid, InvalidArgument, NoSuchImage
from quilt_agent.images import ImageStore



def tarball(path: Path, files: dict[str, bytes], *, gzip: bool = False) -> Path:
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


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "var/lib/quilt/images")


def test_import_names_the_image_by_the_sha256_of_its_bytes(tmp_path: Path, store: ImageStore) -> None:
    path = tarball(tmp_path / "rootfs.tar.gz", GOOD, gzip=True)
    before = time.time_ns() // 1000
    image = store.import_tarball(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (image.id, image.digest, image.source) == (digest, f"sha256:{digest}", str(path))
    assert image.rootfs == store.root / "layers" / digest
    assert (image.rootfs / "bin/busybox").read_bytes() == GOOD["bin/busybox"]
    assert os.readlink(image.rootfs / "bin/sh") == "/bin/busybox"
    assert image.size == sum(map(len, GOOD.values()))
    assert before <= image.created_at <= time.time_ns() // 1000
    meta = json.loads((store.root / "layers" / f"{digest}.json").read_text())
    assert meta == {"source": str(path), "size": image.size, "created_at": image.created_at}
    assert list((store.root / "tmp").iterdir()) == []


def test_store_root_is_private_even_if_it_existed(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir(mode=0o755)
    ImageStore(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert sorted(p.name for p in root.iterdir()) == ["layers", "tmp"]


def test_second_import_of_the_same_bytes_unpacks_nothing(tmp_path: Path, store: ImageStore) -> None:
    first = store.import_tarball(tarball(tmp_path / "a.tar", GOOD))
    layer, busybox = first.rootfs.stat(), (first.rootfs / "bin/busybox").stat()
    copy = shutil.copy(tmp_path / "a.tar", tmp_path / "copy-of-a.tar")

    again = store.import_tarball(tmp_path / "a.tar")
    from_copy = store.import_tarball(Path(copy))

    assert again == from_copy == first  # same bytes, same image: the first source stays recorded
    for now, then in ((first.rootfs.stat(), layer), ((first.rootfs / "bin/busybox").stat(), busybox)):
        assert (now.st_ino, now.st_mtime_ns, now.st_ctime_ns) == (then.st_ino, then.st_mtime_ns, then.st_ctime_ns)


def test_different_bytes_make_different_images(tmp_path: Path, store: ImageStore) -> None:
    a = store.import_tarball(tarball(tmp_path / "a.tar", GOOD))
    b = store.import_tarball(tarball(tmp_path / "b.tar", {**GOOD, "etc/hostname": b"b\n"}))
    assert a.id != b.id
    assert store.list() == [a, b]


def test_concurrent_imports_of_the_same_file_make_one_layer(tmp_path: Path, store: ImageStore) -> None:
    path = tarball(tmp_path / "a.tar", {f"f{i}": bytes(2000) for i in range(200)})
    with ThreadPoolExecutor(6) as pool:
        images = list(pool.map(lambda _: store.import_tarball(path), range(6)))
    assert all(i == images[0] for i in images)
    assert sorted(p.name for p in (store.root / "layers").iterdir()) == [images[0].id, f"{images[0].id}.json"]
    assert len(list(images[0].rootfs.iterdir())) == 201
    assert list((store.root / "tmp").iterdir()) == []


def test_layer_left_without_metadata_by_a_crash_gets_it_without_unpacking_again(
        tmp_path: Path, store: ImageStore) -> None:
    image = store.import_tarball(tarball(tmp_path / "a.tar", GOOD))
    inode = image.rootfs.stat().st_ino
    (store.root / "layers" / f"{image.id}.json").unlink()  # as if the agent died right after the rename
    with pytest.raises(NoSuchImage):
        store.get(image.id)

    again = store.import_tarball(tmp_path / "a.tar")

    assert again.rootfs.stat().st_ino == inode
    assert store.get(image.id) == again


def test_work_of_dead_agents_is_removed_on_start_and_ours_is_kept(tmp_path: Path, store: ImageStore) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (store.root / "tmp" / f"{dead.pid}-abc" / "bin").mkdir(parents=True)
    (store.root / "tmp" / f"{dead.pid}-meta.json").write_text("{")
    (store.root / "tmp" / f"{os.getpid()}-busy").mkdir()

    ImageStore(store.root)

    assert [p.name for p in (store.root / "tmp").iterdir()] == [f"{os.getpid()}-busy"]


# --- lookups -------------------------------------------------------------------------------------


def test_get_finds_an_image_by_id_or_digest(tmp_path: Path, store: ImageStore) -> None:
    image = store.import_tarball(tarball(tmp_path / "a.tar", GOOD))
    assert store.get(image.id) == store.get(image.digest) == image
    assert ImageStore(store.root).get(image.id) == image  # it is all on disk


@pytest.mark.parametrize("image_id", ["0" * 64, "nope", "../../etc", "A" * 64, ""])
def test_get_of_an_unknown_or_malformed_id_is_no_such_image(store: ImageStore, image_id: str) -> None:
    with pytest.raises(NoSuchImage, match=f"^No image '{image_id}' known$"):
        store.get(image_id)


def test_list_of_an_empty_store_is_empty(store: ImageStore) -> None:
    assert store.list() == []


def test_remove_deletes_layer_and_metadata(tmp_path: Path, store: ImageStore) -> None:
    keep = store.import_tarball(tarball(tmp_path / "keep.tar", {"keep": b"1"}))
    gone = store.import_tarball(tarball(tmp_path / "gone.tar", GOOD))

    store.remove(gone.id)

    assert store.list() == [keep]
    assert not gone.rootfs.exists() and not (store.root / "layers" / f"{gone.id}.json").exists()
    assert list((store.root / "tmp").iterdir()) == []
    with pytest.raises(NoSuchImage):
        store.get(gone.id)
    with pytest.raises(NoSuchImage, match=f"No image '{gone.id}' known"):
        store.remove(gone.id)
    assert store.import_tarball(tmp_path / "gone.tar").rootfs.is_dir()  # and it can come back


# --- failures leave nothing behind ---------------------------------------------------------------


def bad_images(tmp_path: Path) -> dict[str, Path]:
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
    store.import_tarball(tarball(tmp_path / "good.tar", GOOD))
    before = tree(store.root)
    for name, path in bad_images(tmp_path).items():
        with pytest.raises(ImageInvalid, match=f"^Image '{path}' is invalid: "):
            store.import_tarball(path)
        assert tree(store.root) == before, name
    assert not (tmp_path / "escaped").exists()


def test_import_of_a_missing_file_is_no_such_image(tmp_path: Path, store: ImageStore) -> None:
    before = tree(store.root)
    with pytest.raises(NoSuchImage, match=f"^No image '{tmp_path}/nope.tar' \\(no such file\\)$"):
        store.import_tarball(tmp_path / "nope.tar")
    assert tree(store.root) == before


def test_import_of_a_directory_is_invalid_and_a_relative_path_an_invalid_argument(
        tmp_path: Path, store: ImageStore) -> None:
    before = tree(store.root)
    with pytest.raises(ImageInvalid, match="is a directory"):
        store.import_tarball(tmp_path)
    with pytest.raises(InvalidArgument, match="not absolute"):
        store.import_tarball(Path("rootfs.tar"))
    assert tree(store.root) == before

