"""Trees of files read and written by file descriptor: what `cp`, volume copy-up and the CLI's side of a copy share.

Every entry is reached relative to an fd of its parent, by one name: the reading side opens with O_PATH|O_NOFOLLOW
and looks at what it got before reading it (a device node is never opened, a FIFO never blocks a read); the writing
side resolves a parent with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), so a symlink left in the destination
(by an earlier copy, or swapped in by a container meanwhile) is replaced or refused, never followed: the docker cp
CVE-2018-15664 class. Symlinks are copied as symlinks; device nodes, FIFOs, sockets and hard links are not copied.

Written by hand: shutil.copytree and TarFile.extractall open each destination path again by name, following any
symlink on the way, and Python has no openat2.
"""
from __future__ import annotations

import ctypes
import errno
import itertools
import os
import platform
import stat
import struct
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
# Below the top of a copy: never a symlink, never out of it.
STRICT = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
CHUNK = 1 << 20
SETID = stat.S_ISUID | stat.S_ISGID
# Deeper trees are refused: each level is an open fd on both sides of a copy.
MAX_DEPTH = 256

_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "riscv64": 437, "ppc64le": 437, "s390x": 437}
_libc = ctypes.CDLL(None, use_errno=True)


class CopyError(OSError):
    """A copy cannot go on: the text says which path and why."""


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    how = struct.pack("QQQ", flags | os.O_CLOEXEC, mode, resolve)
    buf = ctypes.create_string_buffer(how, len(how))
    fd = _libc.syscall(_SYS_OPENAT2[platform.machine()], dirfd, os.fsencode(path), buf, len(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"openat2 {path}: {os.strerror(err)}")
    return fd


def open_in_root(root_fd: int, path: str, flags: int = os.O_PATH | os.O_DIRECTORY) -> int:
    """path inside a container's root: its symlinks are followed as if root_fd were '/', never out of it."""
    return openat2(root_fd, path.lstrip("/") or ".", flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)


def mount_id(fd: int) -> int:
    """The id of the mount fd is on (what RESOLVE_NO_XDEV compares), from /proc/self/fdinfo."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise CopyError(errno.EINVAL, f"no mount id for fd {fd}")


@dataclass(frozen=True)
class Entry:
    """One file of a tree: its path below the tree's top (() for the top itself), what it is and its metadata.
    For a regular file, read(n) gives its content and size its length."""

    path: tuple[str, ...]
    kind: str  # "dir", "file" or "symlink"
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    target: str = ""
    size: int = 0
    read: Callable[[int], bytes] | None = None


def _entry(path: tuple[str, ...], kind: str, st: os.stat_result, **kw: object) -> Entry:
    return Entry(path, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns,
                 **kw)  # type: ignore[arg-type]


def _reopen(path_fd: int, flags: int) -> int:
    # An O_PATH fd reopened through its /proc magic link: the same inode, whatever its name is now.
    return os.open(f"/proc/self/fd/{path_fd}", flags | os.O_CLOEXEC | os.O_NONBLOCK)


def walk(top: int, same_mount: bool = False) -> Iterator[Entry]:
    """The tree at top (an fd opened with O_PATH|O_NOFOLLOW, not consumed), parents before children.

    same_mount: entries on another mount than top's are left out (a volume's copy-up reads only the image's
    own files, never a /proc or /sys mounted below them)."""
    yield from _walk(top, (), mount_id(top) if same_mount else 0)


def _walk(fd: int, path: tuple[str, ...], mnt: int) -> Iterator[Entry]:
    st = os.fstat(fd)
    if stat.S_ISLNK(st.st_mode):
        yield _entry(path, "symlink", st, target=os.readlink("", dir_fd=fd))  # readlinkat(fd, ""): the link's text
    elif stat.S_ISREG(st.st_mode):
        data = _reopen(fd, os.O_RDONLY)
        try:
            yield _entry(path, "file", os.fstat(data), size=os.fstat(data).st_size,
                         read=lambda n: os.read(data, n))
        finally:
            os.close(data)
    elif stat.S_ISDIR(st.st_mode):
        listing = _reopen(fd, os.O_RDONLY | os.O_DIRECTORY)
        try:
            names = sorted(os.listdir(listing))
        finally:
            os.close(listing)
        yield _entry(path, "dir", st)
        if names and len(path) + 1 >= MAX_DEPTH:
            raise CopyError(errno.ELOOP, f"'{'/'.join(path[:3])}/...' is deeper than {MAX_DEPTH} levels")
        for name in names:
            resolve = STRICT | (RESOLVE_NO_XDEV if mnt else 0)
            try:
                child = openat2(fd, name, os.O_PATH | os.O_NOFOLLOW, resolve)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.EXDEV):
                    continue  # gone meanwhile, or another mount below the copy-up's directory
                raise
            try:
                if mnt and mount_id(child) != mnt:
                    continue
                yield from _walk(child, (*path, name), mnt)
            finally:
                os.close(child)
    # device nodes, FIFOs and sockets: not copied


class Sink:
    """Writes entries below the directory fd parent, the top under the name top.

    owners: set owners as the entries say (as root; a caller's own copy keeps its own uid). strip_setid: drop
    setuid and setgid bits (what a container gives the host never becomes a setuid program there).
    Each directory on the way is held open, one name at a time below its parent (openat2, STRICT), so any depth
    is written without a path longer than a name; a missing one (a tar stream without it) is made 0755, as
    docker cp does. A directory the copy makes is 0700 until its content is in: it gets its mode, owner and times
    when the copy leaves it (entries come parents first, as walk and tar give them)."""

    def __init__(self, parent: int, top: str, owners: bool = True, strip_setid: bool = False) -> None:
        if not top or top in (".", "..") or "/" in top:
            raise CopyError(errno.EINVAL, f"invalid name '{top}'")
        self._parent = parent
        self._top = top
        self._owners = owners
        self._strip = strip_setid
        self._held: list[tuple[str, int]] = []  # the open directories from the top down: (name, O_PATH fd)
        self._meta_of: dict[int, Entry] = {}  # depth -> metadata for the directory held there, set when left

    def put(self, e: Entry) -> None:
        parts = (self._top, *e.path)
        if len(parts) > MAX_DEPTH:
            raise CopyError(errno.ELOOP, f"'{'/'.join(parts[:3])}/...' is deeper than {MAX_DEPTH} levels")
        parent = self._reach(parts[:-1])
        self._put(parent, parts[-1], "/".join(parts), e, len(parts))

    def _reach(self, parts: tuple[str, ...]) -> int:
        """The fd of the directory parts below parent, reusing the held ones that are on the way."""
        keep = 0
        while keep < len(self._held) and keep < len(parts) and self._held[keep][0] == parts[keep]:
            keep += 1
        self._leave(keep)
        for name in parts[keep:]:
            up = self._held[-1][1] if self._held else self._parent
            try:
                fd = openat2(up, name, os.O_PATH | os.O_DIRECTORY, STRICT)
            except FileNotFoundError:
                os.mkdir(name, 0o755, dir_fd=up)
                fd = openat2(up, name, os.O_PATH | os.O_DIRECTORY, STRICT)
            except OSError as err:
                where = "/".join(parts[:len(self._held) + 1])
                raise CopyError(err.errno, f"cannot reach '{where}': {err.strerror}") from None
            self._held.append((name, fd))
        return self._held[-1][1] if self._held else self._parent

    def _leave(self, depth: int) -> None:
        """Close the held directories below depth, each getting its metadata first (its content is complete)."""
        while len(self._held) > depth:
            level = len(self._held)
            _, fd = self._held.pop()
            try:
                e = self._meta_of.pop(level, None)
                if e is not None:
                    self._meta(f"/proc/self/fd/{fd}", e)
            finally:
                os.close(fd)

    def _put(self, parent: int, leaf: str, rel: str, e: Entry, depth: int) -> None:
        try:
            existing: os.stat_result | None = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            if e.kind != "dir":
                raise CopyError(errno.EISDIR, f"cannot overwrite directory '{rel}' with a non-directory")
        elif existing is not None:
            os.unlink(leaf, dir_fd=parent)  # a file or symlink in the way: replaced, never written through
        if e.kind == "dir":
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(leaf, 0o700, dir_fd=parent)
            self._reach(tuple(n for n, _ in self._held) + (leaf,))
            self._meta_of[depth] = e
        elif e.kind == "symlink":
            os.symlink(e.target, leaf, dir_fd=parent)
            if self._owners:
                os.chown(leaf, e.uid, e.gid, dir_fd=parent, follow_symlinks=False)
            os.utime(leaf, ns=(e.atime_ns, e.mtime_ns), dir_fd=parent, follow_symlinks=False)
        elif e.kind == "file":
            try:
                out = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=parent)
            except FileExistsError:
                raise CopyError(errno.EEXIST, f"'{rel}' appeared during the copy") from None
            try:
                assert e.read is not None
                _pump(e.read, out)
                self._meta(out, e)
            finally:
                os.close(out)

    def _meta(self, target: int | str, e: Entry) -> None:
        """Owner, mode and times of an open file (fd) or of a held directory (its /proc/self/fd path: an O_PATH
        fd takes no fchmod, and the magic link reaches the same inode, whatever its name is now)."""
        if self._owners:
            os.chown(target, e.uid, e.gid)
        os.chmod(target, e.mode & ~SETID if self._strip else e.mode)
        os.utime(target, ns=(e.atime_ns, e.mtime_ns))

    def close(self) -> None:
        """Leave every held directory: the last ones get their metadata."""
        self._leave(0)


def _pump(read: Callable[[int], bytes], out: int) -> None:
    while data := read(CHUNK):
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]


# A user namespace's ids (quilt_agent/userns.py): inside 0..RANGE-1 are FIRST..FIRST+RANGE-1 on the host, and an
# id without a mapping shows as the overflow id, as the kernel shows it.
RANGE, OVERFLOW_ID = 65536, 65534


def host_id(inside: int, first: int) -> int:
    """The host's id of a container's id, its range starting at first."""
    return first + (inside if 0 <= inside < RANGE else OVERFLOW_ID)


def inside_id(host: int, first: int) -> int:
    """The id a container's processes see for a host id, its range starting at first."""
    return host - first if first <= host < first + RANGE else OVERFLOW_ID


def _shifted(entries: Iterable[Entry], first: int, shift: Callable[[int, int], int]) -> Iterator[Entry]:
    if first < 0:
        yield from entries
        return
    for e in entries:
        yield replace(e, uid=shift(e.uid, first), gid=shift(e.gid, first))


def into_range(entries: Iterable[Entry], first: int) -> Iterator[Entry]:
    """Entries whose owners are a container's ids (a tar stream for it, a host tree copied in as its root's own
    files) as the host stores them in its layer: moved up to its range. first < 0: no user namespace, as they are."""
    return _shifted(entries, first, host_id)


def out_of_range(entries: Iterable[Entry], first: int) -> Iterator[Entry]:
    """Entries read from a container's tree (host ids in its range) with the owners its processes see."""
    return _shifted(entries, first, inside_id)


def copy(entries: Iterable[Entry], sink: Sink) -> None:
    try:
        for e in entries:
            sink.put(e)
    finally:
        sink.close()


# --- tar streams: how a tree crosses the bus between the agent and a caller's own process -----------------------

def write_tar(entries: Iterable[Entry], top: str, out: BinaryIO) -> None:
    """entries as a POSIX tar stream, under the top name top ("": the top's content at the archive's root, as
    an oci-archive holds an OCI layout)."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            if not top and not e.path:
                continue
            info = tarfile.TarInfo("/".join((top, *e.path)) if top else "/".join(e.path))
            info.mode, info.uid, info.gid = e.mode, e.uid, e.gid
            info.mtime = e.mtime_ns / 1e9
            # Written as exact decimals: a float's str() keeps only about 0.1 µs of today's times.
            info.pax_headers = {"mtime": _seconds(e.mtime_ns), "atime": _seconds(e.atime_ns)}
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, e.target
                tar.addfile(info)
            else:
                assert e.read is not None
                info.size = e.size
                tar.addfile(info, _Exactly(e.read, e.size))


class _Exactly:
    """A file's content as tarfile reads it: exactly the size written in the header, even if the file grew or
    shrank meanwhile (a short file is padded with zeros), or the stream would be corrupt."""

    def __init__(self, read: Callable[[int], bytes], size: int) -> None:
        self._read, self._left = read, size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = b""
        while len(data) < n:  # a read may return less than asked before the end (FUSE, a signal)
            more = self._read(n - len(data))
            if not more:
                data += b"\0" * (n - len(data))
                break
            data += more
        self._left -= len(data)
        return data


def _seconds(ns: int) -> str:
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    return f"{sign}{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def _ns(text: str) -> int:
    """A PAX time (decimal seconds) as nanoseconds, without going through a float."""
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text)
    whole, _, frac = digits.partition(".")
    if not whole.isdigit() or not (frac.isdigit() or frac == ""):
        return int(float(text) * 1e9)  # another writer's spelling
    return sign * (int(whole) * 1_000_000_000 + int((frac + "000000000")[:9]))


def read_tar(inp: BinaryIO) -> tuple[str, Iterator[Entry]]:
    """The top name and the entries of a tar stream holding one tree (every name under the same first component),
    in order. A name with '..' or another top is refused; hard links, devices and FIFOs are skipped."""
    tar = tarfile.open(fileobj=inp, mode="r|")
    members = iter(tar)
    first = next(members, None)
    if first is None:
        raise CopyError(errno.EINVAL, "the archive is empty")
    top = _parts(first)[0]
    return top, _tar_entries(tar, itertools.chain([first], members), top)


def _parts(member: tarfile.TarInfo) -> tuple[str, ...]:
    parts = tuple(p for p in member.name.split("/") if p and p != ".")
    if not parts or ".." in parts:
        raise CopyError(errno.EINVAL, f"unsafe name '{member.name}' in the archive")
    return parts


def _tar_entries(tar: tarfile.TarFile, members: Iterator[tarfile.TarInfo], top: str) -> Iterator[Entry]:
    for member in members:
        parts = _parts(member)
        if parts[0] != top:
            raise CopyError(errno.EINVAL, f"'{member.name}' is not below '{top}': one tree per archive")
        mtime = _ns(member.pax_headers.get("mtime", str(member.mtime)))
        atime = _ns(member.pax_headers.get("atime", str(member.mtime)))
        meta = (member.mode & 0o7777, member.uid, member.gid, atime, mtime)
        if member.isdir():
            yield Entry(parts[1:], "dir", *meta)
        elif member.issym():
            yield Entry(parts[1:], "symlink", *meta, target=member.linkname)
        elif member.isreg():
            f = tar.extractfile(member)
            assert f is not None
            yield Entry(parts[1:], "file", *meta, size=member.size, read=f.read)


def tar_top(name: str) -> str:
    """The name a path's tree has at the top of its archive: its last component ('/' -> 'root')."""
    return os.path.basename(os.path.normpath(name)) or "root"


def destination(open_dir: Callable[[str], int], dest: str, top: str) -> tuple[int, str]:
    """Where a copy named top goes for dest, as docker cp decides: into dest under its own name when dest is an
    existing directory, else dest is the new name and its parent must exist. Returns (parent fd, name);
    open_dir opens a directory (the container's resolution, or the host's). FileNotFoundError names the
    missing parent."""
    try:
        return open_dir(dest), top
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise
        if dest.endswith("/"):  # docker cp: 'the destination directory must exist', never made
            raise FileNotFoundError(errno.ENOENT, f"no directory '{dest}'", dest) from None
    head, name = os.path.split(os.path.normpath(dest))
    if not name or name in (".", ".."):
        raise CopyError(errno.EINVAL, f"invalid destination '{dest}'")
    try:
        return open_dir(head or "/"), name
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FileNotFoundError(errno.ENOENT, f"no directory '{head or '/'}'", head or "/") from None
        raise


# --- removing and measuring trees of any depth -------------------------------------------------------------------
# A container or an image decides how deep its trees go. shutil.rmtree and os.walk recurse once per level (a
# RecursionError past about 990 levels, which ignore_errors does not catch) and os.walk goes by path (ENAMETOOLONG
# past PATH_MAX): these go down by name from a directory fd, with a stack of their own.

# Directory fds held at once below the top, whatever the depth: the ones above are reopened on the way back up.
_HELD = 32


class _Level:
    """A directory on the way down: its name in the one above, its identity, its fd (-1 while closed to bound the
    fds held), and the names of its subdirectories not visited yet (None until it is listed)."""

    __slots__ = ("name", "dev", "ino", "fd", "pending")

    def __init__(self, name: str, fd: int) -> None:
        st = os.fstat(fd)
        self.name, self.dev, self.ino, self.fd = name, st.st_dev, st.st_ino, fd
        self.pending: list[str] | None = None


class _Descent:
    """The directories from a tree's top down to the one being worked in. Each is entered by one name with
    O_NOFOLLOW|O_DIRECTORY (a symlink is never followed) and never on another mount than the top's. Only the top
    and the deepest _HELD levels keep their fd; a closed level is reopened by '..' from the level below when the
    walk comes back to it, and must be the directory it recorded (st_dev, st_ino), or the walk stops (ESTALE):
    the tree was moved meanwhile, and '..' now leads elsewhere.

    Mounts are told apart by their mount id (a bind mount of the same filesystem has the same st_dev); without a
    /proc to read it from (a chroot), by st_dev."""

    def __init__(self, parent: int, name: str) -> None:
        fd = _open_dir(parent, name)
        try:
            self.levels = [_Level(name, fd)]
        except BaseException:
            os.close(fd)
            raise
        try:
            self._mnt = mount_id(fd)
        except OSError:
            self._mnt = 0

    @property
    def fd(self) -> int:
        return self.levels[-1].fd

    def down(self, name: str) -> None:
        fd = _open_dir(self.fd, name)
        try:
            level = _Level(name, fd)
            if (mount_id(fd) != self._mnt) if self._mnt else (level.dev != self.levels[0].dev):
                raise OSError(errno.EXDEV, f"'{name}' is a mount point: not crossed")
        except BaseException:
            os.close(fd)
            raise
        self.levels.append(level)
        if len(self.levels) > _HELD + 1:
            old = self.levels[-_HELD - 1]
            os.close(old.fd)
            old.fd = -1

    def up(self) -> None:
        """Back to the level above (never above the top)."""
        below = self.levels.pop()
        try:
            above = self.levels[-1]
            if above.fd < 0:
                fd = _open_dir(below.fd, "..")
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (above.dev, above.ino):
                    os.close(fd)
                    raise OSError(errno.ESTALE, f"'{below.name}' was moved out of its directory meanwhile")
                above.fd = fd
        finally:
            os.close(below.fd)

    def close(self) -> None:
        for level in self.levels:
            if level.fd >= 0:
                os.close(level.fd)
        self.levels = []


def _open_dir(parent: int, name: str) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)


def _listing(fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(fd) as it:  # scandir works on a dup of fd: fd stays the caller's
        return list(it)


def _split(path: str | os.PathLike[str]) -> tuple[str, str]:
    head, name = os.path.split(os.fspath(path).rstrip("/"))
    if name in ("", ".", ".."):
        raise ValueError(f"'{os.fspath(path)}' names no entry to remove or measure")
    return head or ("/" if os.fspath(path).startswith("/") else "."), name


def remove_tree(path: str | os.PathLike[str], dir_fd: int | None = None, ignore_errors: bool = False) -> None:
    """Remove path (relative to dir_fd if given) and, if it is a directory, everything below it, at any depth.

    The directories leading to path are the caller's and are followed; path itself and everything below it are
    entered by name, never through a symlink (a symlink is unlinked, whatever it points at) and never across a
    mount. A missing path is no error. Entries that cannot be removed are left with their parents, the rest is
    removed; then the first error is raised (an OSError), unless ignore_errors."""
    head, name = _split(path)
    errors: list[OSError] = []
    parent = os.open(head, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        _remove_entry(parent, name, errors)
    except OSError as e:  # the walk cannot go on (the top or a level moved away)
        errors.append(e)
    finally:
        os.close(parent)
    if errors and not ignore_errors:
        first = errors[0]
        raise OSError(first.errno, f"cannot remove all of '{os.fspath(path)}': {first.strerror or first}")


def _remove_entry(parent: int, name: str, errors: list[OSError]) -> None:
    try:
        os.unlink(name, dir_fd=parent)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    try:
        descent = _Descent(parent, name)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):  # replaced by a symlink or a file meanwhile
            _unlink(parent, name, errors)
        else:
            errors.append(e)
        return
    try:
        _empty(descent, errors)
    finally:
        descent.close()
    _rmdir(parent, name, errors)


def _empty(descent: _Descent, errors: list[OSError]) -> None:
    """Everything below the descent's top, leaves first; depth costs memory (a name per level), not the stack."""
    while True:
        level = descent.levels[-1]
        if level.pending is None:
            level.pending = []
            try:
                entries = _listing(level.fd)
            except OSError as e:
                errors.append(e)
                entries = []
            for entry in entries:
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if is_dir:
                    level.pending.append(entry.name)
                    continue
                try:
                    os.unlink(entry.name, dir_fd=level.fd)
                except FileNotFoundError:
                    pass
                except IsADirectoryError:  # made a directory meanwhile
                    level.pending.append(entry.name)
                except OSError as e:
                    errors.append(e)
        if level.pending:
            name = level.pending.pop()
            try:
                descent.down(name)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):  # replaced by a symlink or a file meanwhile
                    _unlink(level.fd, name, errors)
                else:
                    errors.append(e)
            continue
        if len(descent.levels) == 1:
            return
        descent.up()
        _rmdir(descent.fd, level.name, errors)


def _gone(remove: Callable[..., None], parent: int, name: str, errors: list[OSError]) -> None:
    """remove (os.unlink or os.rmdir) name below parent; already gone is fine, any other failure is kept."""
    try:
        remove(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    except OSError as e:
        errors.append(e)


def _unlink(parent: int, name: str, errors: list[OSError]) -> None:
    _gone(os.unlink, parent, name, errors)


def _rmdir(parent: int, name: str, errors: list[OSError]) -> None:
    _gone(os.rmdir, parent, name, errors)


def lstat_below(path: str | os.PathLike[str]) -> Iterator[os.stat_result]:
    """The lstat of every entry below the directory path, at any depth, never through a symlink or across a mount.
    Entries that vanish or cannot be read meanwhile are left out, as os.walk leaves them; a path that is not a
    directory has nothing below it."""
    head, name = _split(path)
    parent = os.open(head, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        descent = _Descent(parent, name)
    except OSError:
        return
    finally:
        os.close(parent)
    try:
        while True:
            level = descent.levels[-1]
            if level.pending is None:
                level.pending = []
                try:
                    entries = _listing(level.fd)
                except OSError:
                    entries = []
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    yield st
                    if stat.S_ISDIR(st.st_mode):
                        level.pending.append(entry.name)
            if level.pending:
                try:
                    descent.down(level.pending.pop())
                except OSError:
                    pass
                continue
            if len(descent.levels) == 1:
                return
            try:
                descent.up()
            except OSError:
                return  # moved away meanwhile: the rest is not below path any more
    finally:
        descent.close()


def tree_size(path: str | os.PathLike[str]) -> int:
    """The bytes the content of the directory path takes on disk: st_blocks * 512 of every entry below it."""
    return sum(st.st_blocks * 512 for st in lstat_below(path))
