"""What an import source is, read from its content, and reading the blobs of image layouts and archives.

A source is one of: a rootfs tarball (any compression), an OCI image layout directory, an `oci-archive`
(that layout in a tar) or a `docker save` archive. Archive members are never written anywhere by name:
they are located by offset in the tar, hashed, and only layers are unpacked (by tarball.extract, chrooted).
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import posixpath
import re
import stat
import subprocess
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from quilt_agent.errors import ImageInvalid, NoSuchImage
from quilt_agent.images import oci, tarball

ROOTFS = "rootfs"
OCI_DIR = "oci-dir"
OCI_ARCHIVE = "oci-archive"
DOCKER_ARCHIVE = "docker-archive"
COMPRESSED_ARCHIVE = "compressed-archive"  # probably an archive: decompress it, then look again

_HEX_NAME = re.compile(r"[0-9a-f]{64}(?:\.json|\.tar|/.*)?\Z")
# First members that only image archives start with (docker save, podman save, skopeo's oci-archive).
_ARCHIVE_FIRST = ("oci-layout", "index.json", "manifest.json", "repositories", "blobs")
_MAX_LINK_HOPS = 16
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Location:
    """Where a blob's bytes are: a file, and a range of it (an archive member)."""

    path: Path
    offset: int
    size: int


class Blobs(Protocol):
    """Read access to a layout's files and blobs, wherever they are kept."""

    label: str

    def file(self, name: str, limit: int) -> bytes | None: ...

    def locate(self, name: str) -> Location | None: ...


def read_location(loc: Location, limit: int, what: str) -> bytes:
    if loc.size > limit:
        raise ImageInvalid(f"{what} is {loc.size} bytes, more than the {limit} allowed")
    with open(loc.path, "rb") as f:
        data = os.pread(f.fileno(), loc.size, loc.offset)
    if len(data) != loc.size:
        raise ImageInvalid(f"{what} is truncated: {len(data)} of {loc.size} bytes")
    return data


def blob_name(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    return f"blobs/{algorithm}/{hexpart}"


def read_blob(blobs: Blobs, digest: str, limit: int, what: str) -> bytes:
    """A whole blob (a manifest or a config), checked against its digest."""
    loc = blobs.locate(blob_name(digest))
    if loc is None:
        raise ImageInvalid(f"Image '{blobs.label}' is invalid: {what} {digest} is missing")
    try:
        return oci.verify(read_location(loc, limit, f"{what} {digest}"), digest, f"{what}")
    except ImageInvalid as e:
        raise ImageInvalid(f"Image '{blobs.label}' is invalid: {e}") from None


class DirBlobs:
    """An OCI image layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = str(root)

    def file(self, name: str, limit: int) -> bytes | None:
        loc = self.locate(name)
        return None if loc is None else read_location(loc, limit, f"'{name}'")

    def locate(self, name: str) -> Location | None:
        path = self.root / name
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            raise ImageInvalid(f"Image '{self.label}' is invalid: '{name}' is not a regular file")
        return Location(path, 0, st.st_size)


class TarBlobs:
    """The regular members of an uncompressed tar, by normalized name, links followed within the archive."""

    def __init__(self, path: Path, label: str = "") -> None:
        self.path = path
        self.label = label or str(path)
        self._members: dict[str, Location] = {}
        links: dict[str, str] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for m in tar:
                    name = _normal(m.name)
                    if m.isreg():
                        if m.issparse():
                            raise ImageInvalid(f"Image '{self.label}' is invalid: member '{name}' is sparse")
                        self._members[name] = Location(path, m.offset_data, m.size)
                    elif m.issym():
                        links[name] = _normal(posixpath.join(posixpath.dirname(name), m.linkname)
                                              if not m.linkname.startswith("/") else m.linkname)
                    elif m.islnk():
                        links[name] = _normal(m.linkname)
        except tarfile.TarError as e:
            raise ImageInvalid(f"Image '{self.label}' is invalid: {e}") from None
        # docker save links a layer met twice to its first copy: follow such links, a bounded number of hops.
        for name, target in links.items():
            for _ in range(_MAX_LINK_HOPS):
                if target not in links:
                    break
                target = links[target]
            if target in self._members and name not in self._members:
                self._members[name] = self._members[target]

    def names(self) -> set[str]:
        return set(self._members)

    def file(self, name: str, limit: int) -> bytes | None:
        loc = self.locate(name)
        return None if loc is None else read_location(loc, limit, f"'{name}' in '{self.label}'")

    def locate(self, name: str) -> Location | None:
        return self._members.get(_normal(name))


def _normal(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def kind_of_directory(path: Path) -> str:
    if (path / "oci-layout").is_file():
        return OCI_DIR
    raise ImageInvalid(f"Image '{path}' is invalid: is a directory, but not an OCI image layout "
                       "(it has no oci-layout file)")


def is_archive_listing(names: set[str]) -> str:
    """The kind of archive whose top-level members are `names`: OCI layout, docker save, or neither."""
    if "oci-layout" in names and "index.json" in names:
        return OCI_ARCHIVE
    if "manifest.json" in names:
        return DOCKER_ARCHIVE
    return ROOTFS


def looks_like_archive(first_member: str) -> bool:
    """From the first member of a compressed tar: whether it may be an image archive rather than a rootfs.
    Only a hint, so that a compressed rootfs is not decompressed twice; the full listing decides."""
    name = _normal(first_member)
    return name.split("/")[0] in _ARCHIVE_FIRST or bool(_HEX_NAME.match(name))


def first_member(path: Path, kind: str) -> str:
    """The name of the first member of a compressed tar, reading only its beginning."""
    head = b""
    with open(path, "rb") as f:
        if kind == "zstd":
            proc = subprocess.Popen(["zstd", "-d", "-c", "-q"], stdin=f, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
            assert proc.stdout is not None
            try:
                head = proc.stdout.read(tarfile.BLOCKSIZE * 4)
            finally:
                proc.stdout.close()
                proc.kill()
                proc.wait()
        else:
            stream = _decompressor(f, kind)
            try:
                head = stream.read(tarfile.BLOCKSIZE * 4)
            except (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError):
                return ""  # broken: the extraction names what is wrong with it
    try:
        info = tarfile.TarInfo.frombuf(head[:tarfile.BLOCKSIZE], tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return ""
    return info.name


def _decompressor(f: BinaryIO, kind: str) -> BinaryIO:
    if kind == "gzip":
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    if kind == "xz":
        return lzma.LZMAFile(f)  # type: ignore[return-value]
    if kind == "bzip2":
        return bz2.BZ2File(f)  # type: ignore[return-value]
    return f


def decompress_to(path: Path, kind: str, out: Path) -> None:
    """Write the decompressed content of path to out (a compressed image archive, read as a plain tar)."""
    with open(path, "rb") as f, open(out, "wb") as sink:
        try:
            if kind == "zstd":
                proc = subprocess.run(["zstd", "-d", "-c", "-q"], stdin=f, stdout=sink, stderr=subprocess.PIPE)
                if proc.returncode:
                    raise ImageInvalid(f"Image '{path}' is invalid: zstd: {proc.stderr.decode(errors='replace')}")
                return
            stream = _decompressor(f, kind)
            while chunk := stream.read(_CHUNK):
                sink.write(chunk)
        except (EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile, OSError) as e:
            if isinstance(e, OSError) and e.errno:
                raise
            raise ImageInvalid(f"Image '{path}' is invalid: invalid compressed data ({e})") from None


def detect(path: Path) -> tuple[str, str]:
    """(kind, compression) of an import source; compression is that of the file ("none" for a directory)."""
    if path.is_dir():
        return kind_of_directory(path), "none"
    compression = tarball.detect_compression(path)
    if compression != "none":
        return (COMPRESSED_ARCHIVE if looks_like_archive(first_member(path, compression)) else ROOTFS), compression
    try:
        with tarfile.open(path, "r:") as tar:
            top: set[str] = set()
            for m in tar:
                name = _normal(m.name)
                if "/" not in name:
                    top.add(name)
    except tarfile.TarError:
        return ROOTFS, compression  # the extraction names what is wrong with it
    return is_archive_listing(top), compression


def choose_in_oci_index(blobs: Blobs, index: oci.Index, ref: str, want: oci.Platform) -> oci.Descriptor:
    """The image an OCI layout's index.json holds: by ref.name annotation when asked, else the one for this
    platform; nested indexes (multi-platform images) are descended into."""
    entries = list(index.manifests)
    if ref:
        named = [d for d in entries if d.annotations.get("org.opencontainers.image.ref.name") == ref]
        if not named:
            known = sorted({d.annotations.get("org.opencontainers.image.ref.name", "") for d in entries} - {""})
            raise NoSuchImage(f"No image '{ref}' in '{blobs.label}' (it has: {', '.join(known) or 'no names'})")
        entries = named
    for _ in range(4):  # an index of indexes of ...: bounded
        if len(entries) == 1 and entries[0].media_type not in oci.INDEX_TYPES:
            if entries[0].platform is not None:  # an index naming one platform: it must be this one
                return oci.choose(oci.Index(oci.OCI_INDEX, tuple(entries)), want, f"'{blobs.label}'")
            return entries[0]
        if len(entries) == 1:
            data = read_blob(blobs, entries[0].digest, oci.MAX_MANIFEST, "image index")
            entries = list(oci.parse_index(data, f"image index {entries[0].digest}").manifests)
            continue
        with_platform = [d for d in entries if d.platform is not None]
        if with_platform:
            return oci.choose(oci.Index(oci.OCI_INDEX, tuple(with_platform)), want, f"'{blobs.label}'")
        names = sorted({d.annotations.get("org.opencontainers.image.ref.name", "") for d in entries} - {""})
        raise ImageInvalid(f"Image '{blobs.label}' holds {len(entries)} images: choose one with the 'ref' option"
                           + (f" ({', '.join(names)})" if names else ""))
    raise ImageInvalid(f"Image '{blobs.label}' is invalid: image indexes nested too deep")
