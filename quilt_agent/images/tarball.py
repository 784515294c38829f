"""Rootfs tarballs: what compression they use, and unpacking them so that nothing lands outside the layer.

The unpacking runs in a forked child that chroot()s into the destination first. Absolute symlinks such
as /bin/sh -> /bin/busybox are normal in images and are kept as they are; inside the chroot the kernel
resolves them (and any "..") within the layer, so a member written through a symlink can never reach
the host. The name checks below are the rules GNU tar applies too; the chroot is what makes them safe.
"""

from __future__ import annotations

import bz2  # noqa: F401  imported here: the chrooted child must never import (see _child)
import codecs
import errno
import json
import logging
import lzma  # noqa: F401
import os
import posixpath
import signal
import stat
import subprocess
import sys
import tarfile
import traceback
import zlib  # noqa: F401
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NoReturn

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

# tarfile stream modes; zstd is not in the stdlib, it comes through a `zstd -dc` pipe as a plain tar.
_TAR_MODE = {"none": "r|", "gzip": "r|gz", "xz": "r|xz", "bzip2": "r|bz2", "zstd": "r|"}

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


def detect_compression(path: Path) -> str:
    """The tarball's compression from its content: "none", "gzip", "xz", "zstd" or "bzip2".

    Anything else is ImageInvalid.
    """
    with open_tarball(path) as f:
        return _detect(f, path)


def _detect(f: BinaryIO, path: Path) -> str:
    head = os.pread(f.fileno(), tarfile.BLOCKSIZE, 0)
    if not head:
        raise ImageInvalid(f"Image '{path}' is invalid: empty file")
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
        raise ImageInvalid(f"Image '{path}' is invalid: empty tar archive") from None
    except tarfile.HeaderError:
        raise ImageInvalid(f"Image '{path}' is invalid: not a tar archive "
                           "(nor gzip, xz, zstd or bzip2 compressed)") from None
    return "none"


def extract(path: Path, dest: Path) -> None:
    """Unpack the (possibly compressed) tarball at path into dest, an existing empty directory.

    Owners are kept numerically, modes (setuid/setgid included), mtimes and symlinks as they are.
    Device nodes and FIFOs are skipped: the runtime provides /dev. Raises ImageInvalid naming what
    was wrong; OSError when the host failed (disk full, I/O error).
    """
    if not dest.is_dir() or next(os.scandir(dest), None) is not None:
        raise InvalidArgument(f"Destination '{dest}' is not an empty directory")
    with open_tarball(path) as f:
        kind = _detect(f, path)
        if kind == "zstd":
            report, zstd_said = _extract_zstd(f, dest)
        else:
            report, zstd_said = _run_child(os.dup(f.fileno()), dest, _TAR_MODE[kind]), None
    for name, what in report.skipped:
        log.info("Image '%s': skipped %s '%s' (the runtime provides /dev)", path, what, name)
    if zstd_said is not None and report.result in ("ok", "invalid"):
        # zstd failed on its own: its words name the cause, tarfile only saw the stream end early.
        raise ImageInvalid(f"Image '{path}' is invalid: {zstd_said}")
    if report.result == "ok":
        return
    if report.result == "invalid":
        raise ImageInvalid(f"Image '{path}' is invalid: {report.text}")
    if report.result == "host":
        raise OSError(report.errno, f"Could not unpack image '{path}': {report.text}")
    raise RuntimeError(f"Unpacking image '{path}' failed: {report.text}")


def _extract_zstd(f: BinaryIO, dest: Path) -> tuple[_Report, str | None]:
    """Unpack through `zstd -dc`, started before the fork so that the child only reads a pipe.

    Returns the child's report and what zstd said if it failed by itself (not killed by SIGPIPE
    because the child stopped reading).
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        zstd = subprocess.Popen(["zstd", "-d", "-c", "-q"], stdin=f, stdout=w, stderr=subprocess.PIPE)
    except FileNotFoundError:
        os.close(r)
        raise FileNotFoundError(errno.ENOENT, "zstd-compressed images need the zstd program", "zstd") from None
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    try:
        report = _run_child(r, dest, _TAR_MODE["zstd"])
        # The child has exited, so zstd has finished or dies of SIGPIPE; the timeout is for a zstd
        # that hangs anyway.
        _, err = zstd.communicate(timeout=10)
    finally:
        if zstd.returncode is None:
            zstd.kill()
            zstd.communicate()
    if zstd.returncode > 0:
        return report, "zstd: " + (err.decode(errors="replace").strip() or f"exit status {zstd.returncode}")
    return report, None


@dataclass
class _Report:
    """What the child said: result is "ok", "invalid" (the image), "host" (errno) or "crashed"."""

    result: str = "crashed"
    text: str = ""
    errno: int = 0
    skipped: list[list[str]] = field(default_factory=list)


def _run_child(source: int, dest: Path, mode: str) -> _Report:
    """Fork the unpacking child (it owns source from now on) and collect its report."""
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
        _child(source, report_w, dest, mode)
    os.close(source)
    os.close(report_w)
    status = None
    try:
        with open(report_r, "rb") as pipe:
            lines = pipe.read().splitlines()
        _, status = os.waitpid(pid, 0)
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    report = _Report()
    for line in lines:
        message = json.loads(line)
        if "skipped" in message:
            report.skipped.append(message["skipped"])
        else:
            report = _Report(**message, skipped=report.skipped)
    if report.result == "crashed" and not report.text:
        code = os.waitstatus_to_exitcode(status)
        report.text = f"the unpacking process died ({f'signal {-code}' if code < 0 else f'exit status {code}'})"
    return report


def _child(source: int, report_fd: int, dest: Path, mode: str) -> NoReturn:
    """The forked child: chroot into dest, unpack, report. Never returns into the caller's code."""
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
                _unpack(open(source, "rb"), mode, cursor, send)
                send(result="ok")
                status = 0
            except Exception as e:
                send(**_classify(e, cursor))
                status = 1
        report.close()
    finally:
        os._exit(status)


class _Cursor:
    """The member being extracted, for error messages; None between members."""

    member: str | None = None


def _classify(e: Exception, cursor: _Cursor) -> dict[str, object]:
    if isinstance(e, OSError) and e.errno in _HOST_ERRNOS:
        return {"result": "host", "errno": e.errno, "text": e.strerror}
    if isinstance(e, ImageInvalid):
        return {"result": "invalid", "text": str(e)}  # already names the member
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: '{_shown(e.filename.lstrip('/'))}'" if isinstance(e.filename, str) else e.strerror
    elif isinstance(e, (tarfile.TarError, EOFError, ValueError, OSError)):
        text = str(e)
    else:
        return {"result": "crashed", "text": traceback.format_exc()}
    if cursor.member is not None:
        text += f" (member '{_shown(cursor.member)}')"
    return {"result": "invalid", "text": text}


def _unpack(stream: BinaryIO, mode: str, cursor: _Cursor, send: Callable[..., None]) -> None:
    """Runs chrooted in the child: "/" is the layer."""
    with tarfile.open(fileobj=stream, mode=mode, errorlevel=2, tarinfo=_StrictTarInfo) as tar:
        # extractall() defers directory modes and mtimes until their contents are in place.
        tar.extractall("/", members=_checked(tar, cursor, send), numeric_owner=True)
        # Read to the end so that xz/bzip2 verify their checksums and zstd is not cut off by EPIPE.
        while tar.fileobj.read(1 << 16):
            pass


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


def _checked(tar: tarfile.TarFile, cursor: _Cursor, send: Callable[..., None]) -> Iterator[tarfile.TarInfo]:
    """The members to extract, names made relative; refuses escapes, skips devices and FIFOs."""
    for member in tar:
        cursor.member = member.name
        name = _relative(member.name)
        if name is None:
            raise ImageInvalid(f"member '{_shown(member.name)}' is outside the image root")
        member.name = name
        if member.ischr() or member.isblk() or member.isfifo():
            what = "FIFO" if member.isfifo() else ("character" if member.ischr() else "block") + " device"
            send(skipped=[_shown(member.name), what])
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
        cursor.member = None


def _relative(name: str) -> str | None:
    """name without leading "/", normalised; None when it climbs out of the root."""
    normal = posixpath.normpath(name.lstrip("/") or ".")
    return None if normal == ".." or normal.startswith("../") else normal


def _shown(name: str) -> str:
    # Member names are bytes decoded with surrogateescape; messages must be valid UTF-8 (D-Bus strings).
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
