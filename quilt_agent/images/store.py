"""The image store: each rootfs tarball unpacked once into a layer named by the sha256 of its bytes.

Layout under the root:
    layers/<id>/       the unpacked rootfs (an overlayfs lowerdir); complete whenever it exists
    layers/<id>.json   source, size, created_at; the image exists for get/list once this is there
    tmp/<pid>-<rand>   work in progress, renamed into layers/ when complete, removed on failure

Blocking: the manager calls these methods from a worker thread.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from quilt_agent.errors import ImageInvalid, NoSuchImage
from quilt_agent.images import tarball

log = logging.getLogger("quilt.images")

_ID = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class Image:
    id: str  # sha256 hex digest of the tarball's bytes as given (compressed)
    digest: str  # "sha256:" + id
    source: str  # the path it was first imported from
    rootfs: Path  # the unpacked layer, used as overlayfs lowerdir
    size: int  # bytes of regular files in the layer, each hardlinked file once
    created_at: int  # usec since the epoch


class ImageStore:
    def __init__(self, root: Path, extract: Callable[[Path, Path], None] = tarball.extract) -> None:
        """extract unpacks a tarball into an empty directory; the agent passes the fork server's,
        so that no process is forked from its threads."""
        self.root = root
        self._extract = extract
        self._layers = root / "layers"
        self._tmp = root / "tmp"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Layers hold the images' setuid binaries: no other user of the host may reach them.
        os.chmod(root, 0o700)
        self._layers.mkdir(exist_ok=True)
        self._tmp.mkdir(exist_ok=True)
        self._remove_stale_work()
        self._hashed: dict[tuple[int, ...], str] = {}

    def import_tarball(self, path: Path) -> Image:
        """Import a rootfs tarball; the same bytes give the same Image and are unpacked only once."""
        with tarball.open_tarball(path) as f:
            hashed = os.fstat(f.fileno())
            key = (hashed.st_dev, hashed.st_ino, hashed.st_size, hashed.st_mtime_ns, hashed.st_ctime_ns)
            # The same unchanged file again (a run per container): no need to hash it again.
            known = self._hashed.get(key)
            image_id = known or hashlib.file_digest(f, "sha256").hexdigest()
        image = self._load(image_id)
        self._hashed[key] = image_id
        if image is not None and image.rootfs.is_dir():
            return image
        layer = self._layers / image_id
        if not layer.is_dir():
            self._unpack(path, hashed, layer)
        return self._record(image_id, path, layer)

    def get(self, image_id: str) -> Image:
        """The image with this id (its "sha256:" digest is accepted too)."""
        bare = image_id.removeprefix("sha256:")
        # Checked before the id goes into a path; a malformed id is simply not known.
        image = self._load(bare) if _ID.match(bare) else None
        if image is None:
            raise NoSuchImage(f"No image '{image_id}' known")
        return image

    def list(self) -> list[Image]:
        images = (self._load(p.stem) for p in self._layers.glob("*.json") if _ID.match(p.stem))
        return sorted((i for i in images if i is not None), key=lambda i: (i.created_at, i.id))

    def remove(self, image_id: str) -> None:
        """Remove an image and its layer. The caller makes sure no container uses it."""
        image = self.get(image_id)
        try:
            # First, so that get/list stop seeing the image before its layer starts to go.
            os.unlink(self._layers / f"{image.id}.json")
        except FileNotFoundError:
            raise NoSuchImage(f"No image '{image_id}' known") from None
        trash = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self._tmp))
        try:
            # Renamed away first: a layer is never seen half-deleted under layers/.
            os.rename(image.rootfs, trash / "layer")
        except FileNotFoundError:
            pass
        finally:
            shutil.rmtree(trash)
        log.info("Removed image %s (from '%s')", image.digest, image.source)

    def _unpack(self, path: Path, hashed: os.stat_result, layer: Path) -> None:
        work = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self._tmp))
        try:
            # The layer's "/" when the archive has no "./" entry of its own.
            os.chmod(work, 0o755)
            self._extract(path, work)
            now = os.stat(path)
            if (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) != (
                    hashed.st_dev, hashed.st_ino, hashed.st_size, hashed.st_mtime_ns):
                # What was unpacked may not be what was hashed: the layer would carry a wrong id.
                raise ImageInvalid(f"Image '{path}' is invalid: it changed while it was being imported")
            try:
                os.rename(work, layer)
            except OSError as e:
                # A concurrent import of the same bytes got there first; its layer is as good as ours.
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            else:
                log.info("Unpacked image '%s' into %s", path, layer)
        finally:
            if os.path.lexists(work):
                shutil.rmtree(work)

    def _record(self, image_id: str, path: Path, layer: Path) -> Image:
        """Write layers/<id>.json unless a concurrent import already did; return what is recorded."""
        meta = {"source": str(path), "size": _tree_size(layer), "created_at": time.time_ns() // 1000}
        final = self._layers / f"{image_id}.json"
        fd, work = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=".json", dir=self._tmp)
        try:
            with open(fd, "w") as f:
                json.dump(meta, f)
                f.flush()
                os.fsync(f.fileno())
            try:
                # link, not replace: the first import's metadata stays, so every caller gets one Image.
                os.link(work, final)
            except FileExistsError:
                if self._load(image_id) is None:
                    os.replace(work, final)  # the existing one is unreadable
        finally:
            if os.path.lexists(work):
                os.unlink(work)
        image = self._load(image_id)
        assert image is not None
        return image

    def _load(self, image_id: str) -> Image | None:
        meta_path = self._layers / f"{image_id}.json"
        try:
            meta = json.loads(meta_path.read_text())
            return Image(id=image_id, digest=f"sha256:{image_id}", source=meta["source"],
                         rootfs=self._layers / image_id, size=meta["size"], created_at=meta["created_at"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            log.warning("Ignoring unreadable image metadata %s: %s", meta_path, e)
            return None

    def _remove_stale_work(self) -> None:
        """Remove work left in tmp/ by agents that died mid-import (SIGKILL, power loss)."""
        for entry in os.scandir(self._tmp):
            pid = entry.name.partition("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _tree_size(top: Path) -> int:
    seen: set[int] = set()
    total = 0
    for directory, _, names in os.walk(top):
        for name in names:
            st = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total
