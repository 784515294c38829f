"""Pack a container's overlayfs upper directory into an OCI layer tar (the setup cache's layer).

The upper directory holds what the container changed: new and changed files, and overlayfs's own marks for
what it removed (a 0/0 character device is a deleted file, the trusted.overlay.opaque xattr a directory whose
lower content is hidden). An OCI layer says the same with `.wh.NAME` and `.wh..wh..opq` entries, which the
image store turns back into overlayfs marks when it unpacks the layer (images/tarball.py).

Written by hand: no packaged tool writes OCI whiteouts from an overlayfs upper directory (umoci and buildah
diff two trees; Podman's is Go code inside containers/storage).

The packing child chroots into the upper directory first: the container could have planted symlinks there,
and inside the chroot they can only point at the container's own files.
"""
from __future__ import annotations

import os
import stat
import tarfile

from quilt_agent.filetree import inside_id
from quilt_agent.images.tarball import KEPT_XATTRS, XATTR_PAX

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"


def pack(upper: str, dest: str, skip: tuple[str, ...] = (), id_first: int = -1) -> None:
    """Write the layer of upper to dest (a new file) in a chrooted child; OSError if it could not be done.
    skip: absolute paths inside the container to leave out (files Quilt itself put there). id_first: the first
    host id of the container's user namespace: the layer gets the ids the container saw, so that it serves
    every container as the image's own layers do."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chroot(upper)
            os.chdir("/")
            with os.fdopen(fd, "wb") as out:
                write_layer(".", out, frozenset(s.lstrip("/") for s in skip), id_first)
            code = 0
        except BaseException as e:  # noqa: BLE001 - told through the exit code and stderr
            os.write(2, f"packing the setup layer failed: {e}\n".encode())
        finally:
            os._exit(code)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status):
        try:
            os.unlink(dest)
        except OSError:
            pass
        raise OSError(f"packing {upper} failed")


def write_layer(top: str, out: object, skip: frozenset[str] = frozenset(), id_first: int = -1) -> None:
    """The OCI layer of the overlayfs upper directory top, written to the binary file out; owners moved down
    from the user namespace's range that starts at id_first (-1: none)."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for directory, dirs, files in os.walk(top):
            dirs.sort()
            rel_dir = os.path.relpath(directory, top)
            for name in sorted(dirs) + sorted(files):
                path = os.path.join(directory, name)
                arcname = os.path.normpath(os.path.join(rel_dir, name))
                if arcname in skip:
                    continue
                st = os.lstat(path)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    _add_empty(tar, os.path.join(os.path.dirname(arcname), WHITEOUT_PREFIX + name), st)
                    continue
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                    continue  # device nodes, FIFOs, sockets: the runtime provides /dev
                info = tar.gettarinfo(path, arcname)
                if id_first >= 0:
                    info.uid, info.gid = inside_id(info.uid, id_first), inside_id(info.gid, id_first)
                    info.uname = info.gname = ""  # the host's names of the range's ids say nothing inside
                _add_xattrs(path, info)
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
                if stat.S_ISDIR(st.st_mode) and _opaque(path):
                    _add_empty(tar, os.path.join(arcname, OPAQUE), st)


def _add_xattrs(path: str, info: tarfile.TarInfo) -> None:
    """File capabilities and user.* attributes a setup step set (a package's postinst may setcap), as PAX
    SCHILY.xattr.NAME headers, which the image store applies again when it unpacks the layer."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name in KEPT_XATTRS or name.startswith("user."):
            value = os.getxattr(path, name, follow_symlinks=False)
            info.pax_headers[XATTR_PAX + name] = value.decode("utf-8", "surrogateescape")


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _add_empty(tar: tarfile.TarFile, arcname: str, st: os.stat_result) -> None:
    info = tarfile.TarInfo(arcname)
    info.mtime = int(st.st_mtime)
    info.mode = 0o644
    tar.addfile(info)
