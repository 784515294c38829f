"""Unpacking rootfs tarballs: compression by content, a busybox-like tree kept intact, and nothing ever
written or linked outside the destination. Real tarballs built here with tarfile and the real compressors."""

import hashlib
import io
import os
import re
import stat
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from quilt_agent.errors import ImageInvalid, InvalidArgument, NoSuchImage
from quilt_agent.images.tarball import detect_compression, extract


MTIME = 1_600_000_000
COMPRESSORS = {"gzip": ["gzip", "-n", "-c"], "xz": ["xz", "-c"], "zstd": ["zstd", "-q", "-c"],
               "bzip2": ["bzip2", "-c"]}
KINDS = ["none", *COMPRESSORS]


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
           linkname: str = "", uid: int = 0, gid: int = 0, uname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = kind, mode, linkname, MTIME
    info.uid, info.gid, info.uname = uid, gid, uname
    info.size = len(data)
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, data


def directory(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, tarfile.DIRTYPE, mode=mode)


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write(path: Path, raw: bytes, compression: str = "none") -> Path:
    """Write raw tar bytes to path, compressed by the real tool; the name never says how."""
    if compression != "none":
        raw = subprocess.run(COMPRESSORS[compression], input=raw, capture_output=True, check=True).stdout
    path.write_bytes(raw)
    return path


def busybox_tree() -> list[tuple[tarfile.TarInfo, bytes]]:
    return [
        directory("./"),
        directory("./bin/"),
        member("./bin/busybox", data=b"\x7fELF not really busybox", mode=0o4755),
        member("./bin/sh", tarfile.SYMTYPE, linkname="/bin/busybox"),
        member("./bin/ls", tarfile.SYMTYPE, linkname="busybox"),
        member("./bin/su", tarfile.LNKTYPE, linkname="./bin/busybox"),  # its header's mode must not win
        member("./bin/ping", data=b"ping", mode=0o2755, gid=50),
        directory("./etc/"),
        member("./etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
        # Owned by "root" by name, 1234 by number: the number wins, names mean nothing on the host.
        member("./etc/owned", data=b"x", uid=1234, gid=4321, uname="root"),
        directory("./tmp/", mode=0o1777),
        directory("./usr/"),
        directory("./usr/bin/", mode=0o555),  # read-only, yet gets a child, and keeps its mtime
        member("./usr/bin/env", tarfile.SYMTYPE, linkname="/bin/busybox"),
    ]


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "dest"
    d.mkdir()
    return d


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory of the host, outside dest, that an evil image aims at."""
    d = Path(tempfile.mkdtemp(prefix="quilt-outside-", dir="/tmp"))
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


def children() -> str:
    """Processes this test process has not reaped (zombies included)."""
    return "".join(p.read_text() for p in Path("/proc/self/task").glob("*/children"))


# --- compression ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_compression_is_detected_from_content_not_from_the_name(tmp_path: Path, kind: str) -> None:
    path = write(tmp_path / "x.tar", tar_bytes(busybox_tree()), kind)
    assert detect_compression(path) == kind


def test_pre_posix_tar_without_ustar_magic_is_detected_by_its_header(tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(*member("a"))
    raw = bytearray(out.getvalue())
    raw[257:265] = bytes(8)  # v7 tar: no magic; the checksum covers the field as spaces
    raw[148:156] = b"%06o\0 " % (sum(raw[:148]) + 8 * 32 + sum(raw[156:512]))
    assert detect_compression(write(tmp_path / "v7", bytes(raw))) == "none"


def test_plain_tar_whose_first_member_starts_like_a_compression_magic_is_plain(tmp_path: Path) -> None:
    path = write(tmp_path / "x.tar", tar_bytes([member("BZh91AY&SY", data=b"x")]))
    assert detect_compression(path) == "none"


def test_file_that_is_neither_tar_nor_compressed_is_invalid(tmp_path: Path) -> None:
    path = write(tmp_path / "x.tar.gz", b"just some text, " * 100)
    with pytest.raises(ImageInvalid, match=r"^Image '.*/x\.tar\.gz' is invalid: not a tar archive"):
        detect_compression(path)


@pytest.mark.parametrize("kind", KINDS)
def test_each_compression_is_unpacked(tmp_path: Path, dest: Path, kind: str) -> None:
    extract(write(tmp_path / "x.tar", tar_bytes(busybox_tree()), kind), dest)
    assert (dest / "bin/busybox").read_bytes() == b"\x7fELF not really busybox"


# --- a good image is kept as it is -------------------------------------------------------------


def test_busybox_like_tree_keeps_absolute_symlinks_setuid_hardlinks_owners_and_mtimes(
        tmp_path: Path, dest: Path) -> None:
    extract(write(tmp_path / "x.tar", tar_bytes(busybox_tree())), dest)

    assert os.readlink(dest / "bin/sh") == "/bin/busybox"
    assert os.readlink(dest / "bin/ls") == "busybox"
    assert os.readlink(dest / "usr/bin/env") == "/bin/busybox"
    busybox = os.stat(dest / "bin/busybox")
    assert stat.S_IMODE(busybox.st_mode) == 0o4755
    assert os.stat(dest / "bin/su").st_ino == busybox.st_ino
    ping = os.stat(dest / "bin/ping")
    assert (stat.S_IMODE(ping.st_mode), ping.st_gid) == (0o2755, 50)
    owned = os.stat(dest / "etc/owned")
    assert (owned.st_uid, owned.st_gid) == (1234, 4321)
    assert stat.S_IMODE(os.stat(dest / "tmp").st_mode) == 0o1777
    usr_bin = os.stat(dest / "usr/bin")
    assert (stat.S_IMODE(usr_bin.st_mode), usr_bin.st_mtime) == (0o555, MTIME)
    assert os.stat(dest).st_mtime == MTIME  # "./" is the layer's root
    assert busybox.st_mtime == MTIME


def test_absolute_member_names_are_made_relative(tmp_path: Path, dest: Path) -> None:
    extract(write(tmp_path / "x.tar", tar_bytes([member("/etc/hostname", data=b"inside")])), dest)
    assert (dest / "etc/hostname").read_bytes() == b"inside"


def test_later_member_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path, dest: Path) -> None:
    raw = tar_bytes([member("bin/busybox", data=b"busybox"), member("bin/sh", tarfile.SYMTYPE, linkname="busybox"),
                     member("bin/sh", data=b"dash")])
    extract(write(tmp_path / "x.tar", raw), dest)
    assert (dest / "bin/busybox").read_bytes() == b"busybox"
    assert not (dest / "bin/sh").is_symlink() and (dest / "bin/sh").read_bytes() == b"dash"


def test_device_nodes_and_fifos_are_skipped_and_named(tmp_path: Path, dest: Path) -> None:
    raw = tar_bytes([directory("dev/"), member("dev/null", tarfile.CHRTYPE), member("dev/sda", tarfile.BLKTYPE),
                     member("run/fifo", tarfile.FIFOTYPE), member("etc/kept", data=b"x")])
    done = extract(write(tmp_path / "x.tar", raw), dest)
    assert sorted(p.name for p in dest.rglob("*")) == ["dev", "etc", "kept"]
    assert done.skipped == (("dev/null", "character device"), ("dev/sda", "block device"), ("run/fifo", "FIFO"))
    assert done.skipped_count == 3


# --- nothing outside dest -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escaped", "a/../../escaped", "/../escaped"])
def test_member_escaping_the_root_is_refused(tmp_path: Path, dest: Path, name: str) -> None:
    path = write(tmp_path / "x.tar", tar_bytes([member("a/", tarfile.DIRTYPE), member(name, data=b"x")]))
    with pytest.raises(ImageInvalid, match=re.escape(f"is invalid: member '{name}' is outside the image root")):
        extract(path, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "x.tar"]


def test_write_through_a_symlink_to_the_host_lands_inside_dest(tmp_path: Path, dest: Path, outside: Path) -> None:
    inner = str(outside).lstrip("/")
    raw = tar_bytes([member("evil", tarfile.SYMTYPE, linkname=str(outside)), directory(inner + "/"),
                     member("evil/pwned", data=b"gotcha")])
    extract(write(tmp_path / "x.tar", raw), dest)
    assert list(outside.iterdir()) == []
    assert (dest / inner / "pwned").read_bytes() == b"gotcha"
    assert os.readlink(dest / "evil") == str(outside)


def test_write_through_a_symlink_to_an_existing_host_dir_never_reaches_it(
        tmp_path: Path, dest: Path, outside: Path) -> None:
    # Without the chroot, the link would resolve on the host, where this directory exists.
    raw = tar_bytes([member("evil", tarfile.SYMTYPE, linkname=str(outside)), member("evil/pwned", data=b"x")])
    with pytest.raises(ImageInvalid):
        extract(write(tmp_path / "x.tar", raw), dest)
    assert list(outside.iterdir()) == []


def test_hardlink_to_a_missing_target_is_refused(tmp_path: Path, dest: Path) -> None:
    path = write(tmp_path / "x.tar", tar_bytes([member("bin/su", tarfile.LNKTYPE, linkname="bin/nothing")]))
    with pytest.raises(ImageInvalid, match="hardlink 'bin/su' points to 'bin/nothing', which is not in the image"):
        extract(path, dest)


@pytest.mark.parametrize("target", ["../secret", "a/../../secret"])
def test_hardlink_escaping_the_root_is_refused(tmp_path: Path, dest: Path, target: str) -> None:
    (tmp_path / "secret").write_bytes(b"host")
    raw = tar_bytes([directory("a/"), member("stolen", tarfile.LNKTYPE, linkname=target)])
    with pytest.raises(ImageInvalid, match="hardlink 'stolen' points to"):
        extract(write(tmp_path / "x.tar", raw), dest)
    assert os.stat(tmp_path / "secret").st_nlink == 1


def test_hardlink_through_a_symlink_to_a_host_file_is_refused(tmp_path: Path, dest: Path, outside: Path) -> None:
    (outside / "secret").write_bytes(b"host")
    raw = tar_bytes([member("evil", tarfile.SYMTYPE, linkname=str(outside)),
                     member("stolen", tarfile.LNKTYPE, linkname="evil/secret")])
    with pytest.raises(ImageInvalid, match="which is not in the image"):
        extract(write(tmp_path / "x.tar", raw), dest)
    assert os.stat(outside / "secret").st_nlink == 1


# --- broken input -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cut", ["in file data", "in a header", "before the end marker"])
def test_truncated_tarball_is_invalid(tmp_path: Path, dest: Path, kind: str, cut: str) -> None:
    raw = tar_bytes([member("big", data=os.urandom(20_000)), member("small", data=b"x")])
    keep = {"in file data": 10_000, "in a header": 512 + 20_480 + 100, "before the end marker": 512 * 43}[cut]
    path = write(tmp_path / "x.tar", raw[:keep], kind)
    with pytest.raises(ImageInvalid, match=r"^Image '.*/x\.tar' is invalid: (unexpected end of data|truncated)"):
        extract(path, dest)


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_compressed_stream_cut_short_is_invalid(tmp_path: Path, dest: Path, kind: str) -> None:
    whole = write(tmp_path / "whole", tar_bytes([member("big", data=os.urandom(50_000))]), kind).read_bytes()
    with pytest.raises(ImageInvalid):
        extract(write(tmp_path / "x.tar", whole[: len(whole) // 2]), dest)


def test_empty_file_is_invalid(tmp_path: Path, dest: Path) -> None:
    with pytest.raises(ImageInvalid, match=r"^Image '.*/empty' is invalid: empty file$"):
        extract(write(tmp_path / "empty", b""), dest)


def test_non_tar_file_is_invalid(tmp_path: Path, dest: Path) -> None:
    with pytest.raises(ImageInvalid, match="not a tar archive"):
        extract(write(tmp_path / "x.tar", b"#!/bin/sh\necho not an image\n" * 50), dest)


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_compressed_non_tar_is_invalid(tmp_path: Path, dest: Path, kind: str) -> None:
    with pytest.raises(ImageInvalid, match="is invalid: "):
        extract(write(tmp_path / "x.tar", b"hello, not a tar\n" * 10, kind), dest)


def test_corrupt_gzip_is_invalid(tmp_path: Path, dest: Path) -> None:
    raw = bytearray(write(tmp_path / "x.tar", tar_bytes(busybox_tree()), "gzip").read_bytes())
    raw[10] = 0xFF  # the first deflate block header: type 3 does not exist
    with pytest.raises(ImageInvalid, match="invalid compressed data"):
        extract(write(tmp_path / "x.tar", bytes(raw)), dest)


@pytest.mark.parametrize("kind", ["xz", "zstd"])
def test_corruption_after_the_tar_end_is_still_caught(tmp_path: Path, dest: Path, kind: str) -> None:
    # The last bytes are xz's stream footer and zstd's content checksum, read only after tarfile is done.
    raw = bytearray(write(tmp_path / "x.tar", tar_bytes(busybox_tree()), kind).read_bytes())
    raw[-1] ^= 0xFF
    with pytest.raises(ImageInvalid, match="invalid compressed data|doesn't match checksum"):
        extract(write(tmp_path / "x.tar", bytes(raw)), dest)


def test_zstd_decompressor_is_reaped_on_success_and_failure(tmp_path: Path, dest: Path) -> None:
    before = children()
    good = write(tmp_path / "good", tar_bytes(busybox_tree()), "zstd")
    extract(good, dest)
    assert children() == before
    bad = write(tmp_path / "bad", tar_bytes([member("../x", data=b"x" * 200_000)]), "zstd")
    for attempt in range(3):
        empty = tmp_path / f"d{attempt}"
        empty.mkdir()
        with pytest.raises(ImageInvalid, match="outside the image root"):
            extract(bad, empty)
    assert children() == before


# --- bad paths ----------------------------------------------------------------------------------


def test_missing_path_is_no_such_image(tmp_path: Path, dest: Path) -> None:
    with pytest.raises(NoSuchImage, match=rf"^No image '{tmp_path}/nope\.tar' \(no such file\)$"):
        extract(tmp_path / "nope.tar", dest)


def test_relative_path_is_invalid_argument(dest: Path) -> None:
    with pytest.raises(InvalidArgument, match="not absolute"):
        extract(Path("x.tar"), dest)


def test_directory_given_as_image_is_invalid(tmp_path: Path, dest: Path) -> None:
    with pytest.raises(ImageInvalid, match=rf"^Image '{tmp_path}' is invalid: is a directory$"):
        extract(tmp_path, dest)


def test_fifo_given_as_image_is_refused_without_blocking(tmp_path: Path, dest: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ImageInvalid, match="is invalid: not a regular file$"):
        extract(tmp_path / "fifo", dest)


def test_destination_must_be_an_empty_directory(tmp_path: Path, dest: Path) -> None:
    path = write(tmp_path / "x.tar", tar_bytes(busybox_tree()))
    (dest / "already").touch()
    with pytest.raises(InvalidArgument, match="not an empty directory"):
        extract(path, dest)


# --- digests, ranges, whiteouts -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_result_has_the_digest_of_the_bytes_read_and_of_the_tar(tmp_path: Path, dest: Path, kind: str) -> None:
    raw = tar_bytes(busybox_tree())
    path = write(tmp_path / "x", raw, kind)
    done = extract(path, dest)
    assert done.digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert done.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert (done.size, done.compression) == (path.stat().st_size, kind)


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_a_range_of_a_file_is_unpacked_as_a_member_of_an_archive(tmp_path: Path, dest: Path, kind: str) -> None:
    layer = write(tmp_path / "layer", tar_bytes([member("etc/hostname", data=b"inner")]), kind).read_bytes()
    path = write(tmp_path / "outer", b"A" * 1000 + layer + b"B" * 777)
    seen: list[int] = []
    done = extract(path, dest, offset=1000, size=len(layer), label="outer:layer", progress=seen.append)
    assert (dest / "etc/hostname").read_bytes() == b"inner"
    assert done.digest == "sha256:" + hashlib.sha256(layer).hexdigest()
    assert seen[-1] == len(layer)


def test_a_range_past_the_end_of_the_file_is_truncated(tmp_path: Path, dest: Path) -> None:
    path = write(tmp_path / "outer", tar_bytes([member("a", data=b"x")]))
    with pytest.raises(ImageInvalid, match=r"^Image 'outer:layer' is invalid: truncated"):
        extract(path, dest, offset=512, size=path.stat().st_size, label="outer:layer")


def test_whiteouts_become_overlayfs_whiteouts_and_opaque_directories(tmp_path: Path, dest: Path) -> None:
    raw = tar_bytes([directory("etc/"), member("etc/.wh.passwd"), directory("usr/"), member("usr/.wh..wh..opq"),
                     member("usr/kept", data=b"new"), member("var/lib/.wh.gone"),
                     member(".wh..wh.plnk/123", data=b"aufs"), member("etc/shadow", data=b"s")])
    extract(write(tmp_path / "x.tar", raw), dest)
    whiteout = os.lstat(dest / "etc/passwd")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == os.makedev(0, 0)
    assert stat.S_ISCHR(os.lstat(dest / "var/lib/gone").st_mode)
    assert os.getxattr(dest / "usr", "trusted.overlay.opaque") == b"y"
    assert (dest / "usr/kept").read_bytes() == b"new"
    assert not any(p.name.startswith(".wh.") for p in dest.rglob("*"))


def test_a_whiteout_replaces_what_the_same_layer_had(tmp_path: Path, dest: Path) -> None:
    raw = tar_bytes([directory("d/"), member("d/f", data=b"x"), member(".wh.d")])
    extract(write(tmp_path / "x.tar", raw), dest)
    assert stat.S_ISCHR(os.lstat(dest / "d").st_mode)


@pytest.mark.parametrize("name", ["etc/.wh.", "etc/.wh..", "etc/.wh..wh.x"])
def test_a_whiteout_that_names_no_file_is_invalid(tmp_path: Path, dest: Path, name: str) -> None:
    with pytest.raises(ImageInvalid, match="names no file"):
        extract(write(tmp_path / "x.tar", tar_bytes([member(name)])), dest)


def test_a_whiteout_through_a_symlink_to_the_host_stays_inside(tmp_path: Path, dest: Path, outside: Path) -> None:
    (outside / "victim").write_bytes(b"host")
    inner = str(outside).lstrip("/")
    raw = tar_bytes([member("evil", tarfile.SYMTYPE, linkname=str(outside)), directory(inner + "/"),
                     member("evil/.wh.victim")])
    extract(write(tmp_path / "x.tar", raw), dest)
    assert (outside / "victim").read_bytes() == b"host"
    assert stat.S_ISCHR(os.lstat(dest / inner / "victim").st_mode)
    # Where the link leads nowhere inside the layer, the whiteout has no directory: nothing to hide.
    again = tmp_path / "again"
    again.mkdir()
    extract(write(tmp_path / "y.tar", tar_bytes([member("evil", tarfile.SYMTYPE, linkname=str(outside)),
                                                 member("evil/.wh.victim")])), again)
    assert (outside / "victim").read_bytes() == b"host"
    assert sorted(p.name for p in again.iterdir()) == ["evil"]


def test_a_whiteout_under_what_this_layer_made_a_file_is_moot(tmp_path: Path, dest: Path) -> None:
    # As umoci writes it when a directory became a file: the file hides the lower directory already.
    raw = tar_bytes([directory("opt/"), member("opt/dir", data=b"now a file\n"), member("opt/dir/.wh.inner")])
    extract(write(tmp_path / "x.tar", raw), dest)
    assert (dest / "opt/dir").read_bytes() == b"now a file\n"


NET_RAW_EP = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # vfs_cap_data v2: cap_net_raw+ep


def with_xattrs(entry: tuple[tarfile.TarInfo, bytes], xattrs: dict[str, bytes]) -> tuple[tarfile.TarInfo, bytes]:
    """A member with extended attributes, as GNU tar --xattrs writes them (binary values as PAX allows)."""
    info, _ = entry
    for name, value in xattrs.items():
        info.pax_headers["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    return entry


def test_file_capabilities_and_user_xattrs_are_applied_and_overlay_ones_never(tmp_path: Path, dest: Path) -> None:
    members = [
        directory("bin"),
        with_xattrs(member("bin/ping", data=b"#!/bin/true\n", mode=0o755), {"security.capability": NET_RAW_EP}),
        directory("etc"),
        with_xattrs(member("etc/tagged", data=b"x"), {"user.origin": b"debian"}),
        with_xattrs(directory("opt"), {"trusted.overlay.opaque": b"y"}),
        with_xattrs(member("etc/link", tarfile.SYMTYPE, linkname="tagged"), {"user.x": b"1"}),
    ]
    extract(write(tmp_path / "layer.tar", tar_bytes(members)), dest)
    assert os.getxattr(dest / "bin/ping", "security.capability") == NET_RAW_EP
    assert os.getxattr(dest / "etc/tagged", "user.origin") == b"debian"
    assert "trusted.overlay.opaque" not in os.listxattr(dest / "opt")
