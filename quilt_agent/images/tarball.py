"""Layer tarballs: what compression they use, and unpacking them so that nothing lands outside the layer.

The unpacking runs in a forked child that chroot()s into the destination first. Absolute symlinks such
as /bin/sh -> /bin/busybox are normal in images and are kept as they are; inside the chroot the kernel
resolves them (and any "..") within the layer, so a member written through a symlink can never reach
the host. The name checks below are the rules GNU tar applies too; the chroot is what makes them safe.

The parent reads the input (a whole file, or a member of an archive given by offset and size) and hashes
it as it feeds the child: that is the blob's digest. The child decompresses and hashes the tar stream it
unpacks: that is the layer's DiffID. One pass over the bytes gives both, and the caller compares them with
what the manifest and the config promise before it keeps anything.

OCI whiteouts become what overlayfs understands, inside the chroot: `.wh.NAME` a character device 0/0
named NAME, `.wh..wh..opq` the xattr trusted.overlay.opaque=y on its directory.
"""

from __future__ import annotations

import bz2
import codecs
import errno
import gzip
import hashlib
import json
import logging
import lzma
import os
import posixpath
import signal
import stat
import subprocess
import sys
import tarfile
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NoReturn

from quilt_agent import filetree
from quilt_agent.errors import ImageInvalid, InvalidArgument, NoSuchImage

log = logging.getLogger("quilt.images")

codecs.lookup(tarfile.ENCODING)  # cached now, so that decoding member names never loads a codec module

# Leading bytes of each compressed format, as the formats' specifications define them.
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
)

# Errors of the decompressors the child runs: the input is broken, not the host.
_DECOMPRESS_ERRORS = (zlib.error, lzma.LZMAError, gzip.BadGzipFile, EOFError)
_CHUNK = 1 << 20
_TAR_BUFFER = 1 << 16
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
XATTR_PAX = "SCHILY.xattr."  # a PAX header key: the rest is an extended attribute's name
KEPT_XATTRS = ("security.capability",)  # and user.*
MAX_SKIPPED_REPORTED = 100  # devices named in the report; the count is always exact
# Deeper members are refused, with a clear message: no real image comes near it, and the paths tarfile extracts by
# stop at PATH_MAX (2048 levels of one-letter names) anyway.
MAX_DEPTH = 1024

# Failures of the machine rather than of the image: these must not be reported as a broken image.
_HOST_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM, errno.EROFS,
                          errno.EMFILE, errno.ENFILE})


def open_tarball(path: Path) -> BinaryIO:
    """Open an image file for reading, with the errors a caller sees for a bad path."""
    if not path.is_absolute():
        raise InvalidArgument(f"Image path '{path}' is not absolute")
    try:
        st = os.stat(path)
        # Checked before opening: open() on a FIFO would block, on a device it may have side effects.
        if not stat.S_ISREG(st.st_mode):
            raise ImageInvalid(f"Image '{path}' is invalid: "
                               + ("is a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"))
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        raise NoSuchImage(f"No image '{path}' (no such file)") from None
    f = open(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between stat and open
        f.close()
        raise ImageInvalid(f"Image '{path}' is invalid: not a regular file")
    return f


@dataclass(frozen=True)
class Extracted:
    """What one unpacking read and made."""

    digest: str  # "sha256:..." of the bytes read: the blob as stored or served, compressed
    diff_id: str  # "sha256:..." of the uncompressed tar stream: the layer's DiffID
    size: int  # bytes read
    compression: str  # "none", "gzip", "xz", "zstd" or "bzip2"
    skipped: tuple[tuple[str, str], ...] = ()  # (member, what) not unpacked: device nodes and FIFOs
    skipped_count: int = 0


def detect_compression(path: Path, offset: int = 0, label: str = "") -> str:
    """The tarball's compression from its content: "none", "gzip", "xz", "zstd" or "bzip2".

    Anything else is ImageInvalid.
    """
    with open_tarball(path) as f:
        return _detect(f, label or str(path), offset)


def _detect(f: BinaryIO, label: str, offset: int = 0) -> str:
    head = os.pread(f.fileno(), tarfile.BLOCKSIZE, offset)
    if not head:
        raise ImageInvalid(f"Image '{label}' is invalid: empty file")
    # First: a plain tar's first member may well be named "BZh..." or the like.
    if head[257:262] == b"ustar":
        return "none"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    # Pre-POSIX tars have no magic; tarfile's header parser (checksum included) decides.
    try:
        tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
    except (tarfile.EmptyHeaderError, tarfile.EOFHeaderError):  # a zero block: the end-of-archive marker
        raise ImageInvalid(f"Image '{label}' is invalid: empty tar archive") from None
    except tarfile.HeaderError:
        raise ImageInvalid(f"Image '{label}' is invalid: not a tar archive "
                           "(nor gzip, xz, zstd or bzip2 compressed)") from None
    return "none"


def extract(path: Path, dest: Path, *, offset: int = 0, size: int | None = None, label: str = "",
            progress: Callable[[int], None] | None = None) -> Extracted:
    """Unpack the (possibly compressed) tarball at path, or its `size` bytes from `offset`, into dest, an
    existing empty directory; return the digests of what was read and unpacked.

    Owners are kept numerically, modes (setuid/setgid included), mtimes and symlinks as they are.
    Device nodes and FIFOs are skipped (the runtime provides /dev) and named in the result, for the caller
    to say so. Whiteouts become overlayfs whiteouts.
    Raises ImageInvalid naming what was wrong (as "Image 'LABEL' is invalid: ..."; LABEL defaults to the
    path); OSError when the host failed (disk full, I/O error). progress, if given, is called with the bytes
    read so far, about every MiB.
    """
    label = label or str(path)
    if not dest.is_dir() or next(os.scandir(dest), None) is not None:
        raise InvalidArgument(f"Destination '{dest}' is not an empty directory")
    with open_tarball(path) as f:
        length = os.fstat(f.fileno()).st_size
        end = length if size is None else offset + size
        if offset < 0 or end > length or end < offset:
            raise ImageInvalid(f"Image '{label}' is invalid: truncated: {end - offset} bytes expected at offset "
                               f"{offset}, the file has {length}")
        kind = _detect(f, label, offset)
        report, digest, zstd_said = _run(f, offset, end, dest, kind, progress)
    if zstd_said is not None and report.result in ("ok", "invalid"):
        # zstd failed on its own: its words name the cause, tarfile only saw the stream end early.
        raise ImageInvalid(f"Image '{label}' is invalid: {zstd_said}")
    if report.result == "ok":
        return Extracted(digest=digest, diff_id=report.diff_id or digest, size=end - offset, compression=kind,
                         skipped=tuple((n, w) for n, w in report.skipped), skipped_count=report.skipped_count)
    if report.result == "invalid":
        raise ImageInvalid(f"Image '{label}' is invalid: {report.text}")
    if report.result == "host":
        raise OSError(report.errno, f"Could not unpack image '{label}': {report.text}")
    raise RuntimeError(f"Unpacking image '{label}' failed: {report.text}")


def _run(f: BinaryIO, offset: int, end: int, dest: Path, kind: str,
         progress: Callable[[int], None] | None) -> tuple[_Report, str, str | None]:
    """Fork the unpacking child, feed it the input (through `zstd -dc` for zstd), collect its report.

    Returns the report, the digest of the bytes fed, and what zstd said if it failed by itself (not
    killed by SIGPIPE because the child stopped reading).
    """
    # The child decompresses gzip, xz and bzip2 itself; zstd is not in the stdlib and comes as a plain tar.
    child_kind = "none" if kind == "zstd" else kind
    # For a plain tar the bytes fed are the tar stream: their digest is the DiffID, no second hash needed.
    data_r, data_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid, report_r = _fork_child(data_r, dest, child_kind, hash_tar=kind != "none")
    except BaseException:
        os.close(data_w)
        raise
    zstd: subprocess.Popen[bytes] | None = None
    hasher = hashlib.sha256()
    try:
        if kind == "zstd":
            try:
                zstd = subprocess.Popen(["zstd", "-d", "-c", "-q"], stdin=subprocess.PIPE, stdout=data_w,
                                        stderr=subprocess.PIPE)
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, "zstd-compressed images need the zstd program",
                                        "zstd") from None
            finally:
                os.close(data_w)
            assert zstd.stdin is not None
            sink: BinaryIO = zstd.stdin
        else:
            sink = open(data_w, "wb")
        _feed(f, offset, end, sink, hasher, progress)
        with open(report_r, "rb") as pipe:
            lines = pipe.read().splitlines()
        _, status = os.waitpid(pid, 0)
        pid = 0
        zstd_said = None
        if zstd is not None:
            # The child has exited and zstd's input is closed, so zstd has finished or dies of SIGPIPE.
            assert zstd.stderr is not None
            err = zstd.stderr.read()
            zstd.wait()
            if zstd.returncode > 0:
                zstd_said = "zstd: " + (err.decode(errors="replace").strip() or f"exit status {zstd.returncode}")
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if zstd is not None:
            if zstd.returncode is None:
                zstd.kill()
                zstd.wait()
            assert zstd.stderr is not None
            zstd.stderr.close()
    report = _Report(**json.loads(lines[-1])) if lines else _Report()
    if report.result == "crashed" and not report.text:
        code = os.waitstatus_to_exitcode(status)
        report.text = f"the unpacking process died ({f'signal {-code}' if code < 0 else f'exit status {code}'})"
    return report, "sha256:" + hasher.hexdigest(), zstd_said


def _feed(f: BinaryIO, offset: int, end: int, sink: BinaryIO, hasher: "hashlib._Hash",
          progress: Callable[[int], None] | None) -> None:
    """Copy the input range into sink, hashing it. A reader that stopped early (the child refused the image)
    ends the copy quietly: its report says why."""
    fd = f.fileno()
    position = offset
    try:
        with sink:
            while position < end:
                chunk = os.pread(fd, min(_CHUNK, end - position), position)
                if not chunk:
                    raise OSError(errno.EIO, "the file was shortened while it was being read")
                hasher.update(chunk)
                sink.write(chunk)
                position += len(chunk)
                if progress is not None:
                    progress(position - offset)
    except BrokenPipeError:
        pass
    # Bytes not fed (the child stopped early) are still hashed: the digest is the input's either way.
    while position < end:
        chunk = os.pread(fd, min(_CHUNK, end - position), position)
        if not chunk:
            break
        hasher.update(chunk)
        position += len(chunk)


@dataclass
class _Report:
    """What the child said: result is "ok", "invalid" (the image), "host" (errno) or "crashed"."""

    result: str = "crashed"
    text: str = ""
    errno: int = 0
    diff_id: str = ""
    skipped: list[list[str]] = field(default_factory=list)
    skipped_count: int = 0


def _fork_child(source: int, dest: Path, kind: str, hash_tar: bool) -> tuple[int, int]:
    """Fork the unpacking child (it owns source from now on); return its pid and the read end of its report."""
    try:
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
    except BaseException:
        os.close(source)
        raise
    try:
        pid = os.fork()
    except BaseException:
        for fd in (source, report_r, report_w):
            os.close(fd)
        raise
    if pid == 0:
        os.close(report_r)
        _child(source, report_w, dest, kind, hash_tar)
    os.close(source)
    os.close(report_w)
    return pid, report_r


def _child(source: int, report_fd: int, dest: Path, kind: str, hash_tar: bool) -> NoReturn:
    """The forked child: chroot into dest, unpack, report once at the end (the parent reads the report only
    after it has fed all the input). Never returns into the caller's code."""
    status = 2
    try:
        report = open(report_fd, "wb")

        def send(**message: object) -> None:
            report.write(json.dumps(message).encode() + b"\n")

        try:
            # The agent's handlers (asyncio's wakeup fd among them) belong to the parent.
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            # An inherited descriptor of a host directory would be a way out of the chroot.
            low, high = sorted((source, report_fd))
            os.closerange(3, low)
            os.closerange(low + 1, high)
            os.closerange(high + 1, os.sysconf("SC_OPEN_MAX"))
            os.chroot(dest)
            os.chdir("/")
            # Inside the chroot, Python would import modules from the image's own files: code from the
            # image run as root, which could leave the chroot. An unexpected import fails instead.
            sys.meta_path.clear()
            sys.path.clear()
        except OSError as e:
            send(result="host", errno=e.errno, text=f"cannot enter '{dest}': {e.strerror}")
            status = 1
        else:
            cursor = _Cursor()
            try:
                diff_id = _unpack(open(source, "rb"), kind, hash_tar, cursor)
                send(result="ok", diff_id=diff_id, skipped=cursor.skipped, skipped_count=cursor.skipped_count)
                status = 0
            except Exception as e:
                send(**_classify(e, cursor))
                status = 1
        report.close()
    finally:
        os._exit(status)


class _Cursor:
    """The member being extracted, for error messages (None between members), and what was skipped."""

    def __init__(self) -> None:
        self.member: str | None = None
        self.skipped: list[list[str]] = []
        self.skipped_count = 0

    def skip(self, name: str, what: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_SKIPPED_REPORTED:
            self.skipped.append([_shown(name), what])


def _classify(e: Exception, cursor: _Cursor) -> dict[str, object]:
    if isinstance(e, OSError) and e.errno in _HOST_ERRNOS:
        return {"result": "host", "errno": e.errno, "text": e.strerror}
    if isinstance(e, ImageInvalid):
        return {"result": "invalid", "text": str(e)}  # already names the member
    if isinstance(e, _DECOMPRESS_ERRORS) or (isinstance(e, OSError) and not e.errno):
        # zlib, lzma and bz2 (a plain OSError without errno) on broken or cut input.
        text = f"invalid compressed data ({e})"
    elif isinstance(e, tarfile.ReadError) and str(e).startswith("zlib error: "):
        # tarfile's own wrapping of a zlib.error met while it read a header.
        text = f"invalid compressed data ({str(e).removeprefix('zlib error: ')})"
    elif isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: '{_shown(e.filename.lstrip('/'))}'" if isinstance(e.filename, str) else e.strerror
    elif isinstance(e, (tarfile.TarError, ValueError, OSError)):
        text = str(e)
    else:
        return {"result": "crashed", "text": traceback.format_exc()}
    if cursor.member is not None:
        text += f" (member '{_shown(cursor.member)}')"
    return {"result": "invalid", "text": text}


class _Hashing:
    """A reader that hashes what is read through it: the uncompressed tar stream, for the DiffID."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.hash.update(data)
        return data


def _decompressed(raw: BinaryIO, kind: str) -> BinaryIO:
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind == "xz":
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if kind == "bzip2":
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    return raw


def _unpack(raw: BinaryIO, kind: str, hash_tar: bool, cursor: _Cursor) -> str:
    """Runs chrooted in the child: "/" is the layer. Returns the tar stream's digest ("" if not hashed)."""
    stream = _decompressed(raw, kind)
    hashing = _Hashing(stream) if hash_tar else None
    # tarfile's stream copies its whole buffer on every read, a 512-byte header included: 64 KiB reads and
    # copies were twice as fast as its 10 KiB default on a 300 MB rootfs, and 1 MiB ones slower again.
    with tarfile.open(fileobj=hashing or stream, mode="r|", errorlevel=2, tarinfo=_StrictTarInfo,
                      bufsize=_TAR_BUFFER) as tar:
        tar.copybufsize = _TAR_BUFFER
        # extractall() defers directory modes and mtimes until their contents are in place.
        tar.extractall("/", members=_checked(tar, cursor), numeric_owner=True)
        cursor.member = None
        # Read to the end: the DiffID covers the whole stream, xz/bzip2/gzip verify their checksums at
        # the end, and zstd must not be cut off by EPIPE.
        while tar.fileobj.read(_CHUNK):
            pass
    while raw.read(_CHUNK):  # what follows the compressed stream still belongs to the blob
        pass
    return "sha256:" + hashing.hash.hexdigest() if hashing else ""


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile ends the archive quietly at a missing, cut or garbled header after the first one;
    here only the end-of-archive marker (a zero block) ends it, so a truncated image is refused."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            raise
        except tarfile.EmptyHeaderError:
            if tar.offset == 0:
                raise ImageInvalid("empty tar archive") from None
            raise ImageInvalid("truncated: the archive ends without its end-of-archive marker") from None
        except tarfile.TruncatedHeaderError:
            raise ImageInvalid(f"truncated: cut off in the header at offset {tar.offset}") from None
        except tarfile.InvalidHeaderError as e:
            raise ImageInvalid(f"{'not a tar archive: ' if tar.offset == 0 else ''}{e} at offset {tar.offset}") from None


def _checked(tar: tarfile.TarFile, cursor: _Cursor) -> Iterator[tarfile.TarInfo]:
    """The members to extract, names made relative; refuses escapes, skips devices and FIFOs, turns
    whiteouts into overlayfs's own."""
    for member in tar:
        cursor.member = member.name
        name = _relative(member.name)
        if name is None:
            raise ImageInvalid(f"member '{_shown(member.name)}' is outside the image root")
        member.name = name
        if name.count("/") >= MAX_DEPTH:
            shown = "/".join(name.split("/", 3)[:3])
            raise ImageInvalid(f"member '{_shown(shown)}/...' is deeper than {MAX_DEPTH} levels")
        base = posixpath.basename(name)
        if base.startswith(WHITEOUT):
            _whiteout(name)
            continue
        if any(part.startswith(WHITEOUT + WHITEOUT) for part in name.split("/")):
            continue  # aufs's own bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not part of the image
        if member.ischr() or member.isblk() or member.isfifo():
            cursor.skip(member.name, "FIFO" if member.isfifo() else
                        ("character" if member.ischr() else "block") + " device")
            continue
        if member.islnk():
            target = _relative(member.linkname)
            # tarfile would fall back to re-reading the target from the archive, which a stream
            # cannot do; a target missing from the layer is an error in the image.
            if target is None or not os.path.exists(target):
                raise ImageInvalid(f"hardlink '{_shown(member.name)}' points to '{_shown(member.linkname)}', "
                                   "which is not in the image")
            member.linkname = target
            # The link shares its target's inode; as with GNU tar, its header must not change it
            # (tarfile would chown and chmod the target with the link header's owner and mode).
            st = os.stat(target)
            member.mode, member.uid, member.gid, member.mtime = (
                stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime)
        if not member.isdir() and os.path.lexists(member.name) and not os.path.isdir(member.name):
            # As GNU tar does: replace what is there. tarfile would open an existing symlink and
            # write through it, changing another file of the layer.
            os.unlink(member.name)
        yield member
        _set_xattrs(member)  # now that tarfile has written and chowned it (a chown drops file capabilities)
        cursor.member = None


def _set_xattrs(member: tarfile.TarInfo) -> None:
    """The member's extended attributes from its PAX header (SCHILY.xattr.NAME, as GNU tar and Go's archive/tar
    write them): file capabilities (`setcap cap_net_raw+ep /bin/ping`) and user.* ones. Others are left out:
    trusted.overlay.* would steer overlayfs, security.selinux is the host's business."""
    for key, value in member.pax_headers.items():
        if not key.startswith(XATTR_PAX):
            continue
        name = key[len(XATTR_PAX):]
        if name in KEPT_XATTRS or name.startswith("user."):
            try:
                # tarfile hands binary PAX values over as surrogate-escaped text.
                os.setxattr(member.name, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP):  # user.* on a symlink; a filesystem without
                    raise


def _whiteout(name: str) -> None:
    """A whiteout member, as overlayfs spells it. Runs chrooted: paths resolve inside the layer."""
    directory, base = posixpath.split(name)
    directory = directory or "."
    if not os.path.isdir(directory):
        if os.path.lexists(directory):
            # This layer has a file there (umoci writes "opt/dir", then "opt/dir/.wh.inner" when a directory
            # became a file): it hides the lower directory whole already, the whiteout has nothing to do.
            return
        os.makedirs(directory, 0o755)  # as tar does for a member whose directory has no entry of its own
    if base == OPAQUE:
        # Hides what the layers below have in this directory; what this layer has stays.
        os.setxattr(directory, OPAQUE_XATTR, b"y")
        return
    hidden = base[len(WHITEOUT):]
    if hidden in ("", ".", "..") or hidden.startswith(WHITEOUT):
        raise ImageInvalid(f"whiteout '{_shown(name)}' names no file")
    target = posixpath.join(directory, hidden)
    if os.path.lexists(target):
        filetree.remove_tree(target)  # a directory this layer made may be of any depth
    os.mknod(target, stat.S_IFCHR, os.makedev(0, 0))  # mode 0, as the kernel makes them


def _relative(name: str) -> str | None:
    """name without leading "/", normalised; None when it climbs out of the root."""
    normal = posixpath.normpath(name.lstrip("/") or ".")
    return None if normal == ".." or normal.startswith("../") else normal


def _shown(name: str) -> str:
    # Member names are bytes decoded with surrogateescape; messages must be valid UTF-8 (D-Bus strings).
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
