"""The image store: blobs by digest, each layer unpacked once, images as manifest + config + ordered layers.

Layout under the root (/var/lib/quilt/images):
    blobs/sha256/<hex>   verified blobs: every image's manifest and config; a layer's blob only from its
                         download until it is unpacked (a pull cut short keeps what it verified)
    layers/<hex>/        one layer unpacked, named by its DiffID (sha256 of its tar): an overlayfs lowerdir,
                         shared by every image that has it; complete whenever it exists
    layers/<hex>.json    the layer's size and the digests of the blobs known to unpack into it
    images/<id>.json     an image: its manifest and config digests, its layers base first, where it came
                         from; the id is the config's digest, as in Docker and Podman
    names.json           name:tag -> image id
    tmp/<pid>-<rand>     work in progress: renamed into place when complete and verified, removed on
                         failure, and by the next agent if this one died

Everything lands by rename, in an order that never leaves a half image: blobs and layers first, then the
image's record, then its names. A crash in between leaves complete layers and blobs that no image uses yet:
a retry reuses them, PruneImages removes them.

Images imported before this store (layers/<sha256 of the tarball>/ with a {"source", ...} json) are taken
over as they are, under their old ids, so that their containers keep working.

Blocking: what changes the store (imports, pulls, tags, removals) runs in worker threads, under one lock that
guards the in-memory indexes and every rename into or out of place, held across fsyncs and directory scans. The
reads (get, find, list, is_name, setup_image, config_bytes) never take it: they answer from a Catalog, an immutable
view of the images that each change builds once its I/O is done and swaps in whole. The event loop calls them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from quilt_agent import filetree
from quilt_agent.errors import ImageInvalid, InvalidArgument, NoSuchImage
from quilt_agent.images import archive, oci, reference, tarball
from quilt_agent.images.archive import Blobs, Location

log = logging.getLogger("quilt.images")

_HEX = re.compile(r"[0-9a-f]{64}\Z")
_HEX_PREFIX = re.compile(r"[0-9a-f]{3,64}\Z")
_BLOB_MEMBER = re.compile(r"blobs/sha256/([0-9a-f]{64})\Z")
_CONFIG_MEMBER = re.compile(r"(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?\Z")
REF_NAME = "org.opencontainers.image.ref.name"
# Layers unpacked at once by an import: each is a process (decompressing, writing), so about the cores.
PARALLEL_UNPACK = max(2, min(4, os.cpu_count() or 2))

# progress(phase, done, total): phase is "<verb> <what>", e.g. "unpacking sha256:...", bytes done of total.
Progress = Callable[[str, int, int], None]
Extract = Callable[..., tarball.Extracted]


def _no_progress(phase: str, done: int, total: int) -> None:
    pass


@dataclass(frozen=True)
class Image:
    id: str  # hex sha256 of the config (for images taken over from the tarball store: of the tarball)
    digest: str  # "sha256:..." of the manifest
    config_digest: str
    names: tuple[str, ...]
    layers: tuple[str, ...]  # DiffIDs, base first
    layer_dirs: tuple[Path, ...]  # the unpacked layers, base first
    size: int  # bytes of the layers' regular files
    created_at: int  # usec since the epoch, when it came into this store
    source: str  # the path or reference it was first imported or pulled from
    # A setup cache image (quilt_agent/setup.py): the image its setup steps ran on, their cache key, the steps.
    setup_base: str = ""
    setup_key: str = ""
    setup_steps: tuple[str, ...] = ()
    owner_uid: int = 0  # the uid that brought it into the store first (a later import of the same content, or a
    # new name for it, changes nothing of that)

    @property
    def lower(self) -> str:
        """overlayfs's lowerdir: the top layer first. A layer met twice is kept where it is highest, which
        gives the same tree (the same content again above changes nothing) and overlayfs refuses a
        directory twice."""
        seen: set[Path] = set()
        out: list[str] = []
        for d in reversed(self.layer_dirs):
            if d not in seen:
                seen.add(d)
                out.append(str(d))
        return ":".join(out)


@dataclass(frozen=True)
class Catalog:
    """The images as the store's last change left them. Never changed once built: a reader holds one whole, and
    sees every image with its names and config as they were together."""

    images: Mapping[str, Image]  # image id -> image
    names: Mapping[str, str]  # normalized name -> image id
    configs: Mapping[str, bytes]  # image id -> its config blob (an image's config never changes: its id is its digest)

    def find(self, ref: str) -> str | None:
        """The id of the image ref names: an id ("sha256:" digest, or a unique prefix of at least 3 hex digits) or
        a name."""
        bare = ref.removeprefix("sha256:")
        if _HEX.match(bare) and bare in self.images:
            return bare
        if bare == ref:
            for name in reference.candidates(ref):
                if name in self.names:
                    return self.names[name]
        if _HEX_PREFIX.match(bare):
            matches = [i for i in self.images if i.startswith(bare)]
            if len(matches) > 1:
                raise InvalidArgument(f"Image id prefix '{ref}' is ambiguous: {len(matches)} images start with it")
            if matches:
                return matches[0]
        return None


_EMPTY = Catalog(MappingProxyType({}), MappingProxyType({}), MappingProxyType({}))


@dataclass(frozen=True)
class ImportOptions:
    """What ImportImage accepts besides the source and name."""

    ref: str = ""  # which image of a layout or archive holding several (ref.name annotation, or RepoTag)
    platform: oci.Platform | None = None  # default: this host's
    # For a rootfs tarball only: the config's defaults for containers, as `podman import --change` sets them.
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerDone:
    diff_id: str
    digest: str  # of the blob it came from
    size: int  # of that blob
    compression: str


@dataclass
class _Record:
    manifest: str
    config: str
    layers: list[str]
    source: str
    created_at: int
    size: int
    legacy: bool = False
    setup: dict[str, Any] | None = None  # {"base", "key", "steps"} of a setup cache image
    owner_uid: int = 0  # who brought it into the store first; images from before owners were recorded: root's

    def to_json(self) -> dict[str, Any]:
        out = {"manifest": self.manifest, "config": self.config, "layers": self.layers, "source": self.source,
               "created_at": self.created_at, "size": self.size, "owner_uid": self.owner_uid}
        if self.legacy:
            out["legacy"] = True
        if self.setup:
            out["setup"] = self.setup
        return out


class Session:
    """One import or pull: the layers and blobs it relies on are pinned, so that a concurrent removal or
    prune leaves them alone until its image is committed (or it gives up). What it added is remembered: an
    image found invalid (or not there for this platform) takes its new layers and blobs with it; one cut short
    by anything else (the registry, the network, the disk, a kill) leaves them, verified, for its retry."""

    def __init__(self, store: ImageStore, owner_uid: int = 0) -> None:
        self.store = store
        self.owner_uid = owner_uid  # of an image this session commits that the store did not have
        self.layers: list[str] = []
        self.blobs: list[str] = []
        self.new_layers: set[str] = set()
        self.new_blobs: set[str] = set()


class ImageStore:
    def __init__(self, root: Path, extract: Extract = tarball.extract) -> None:
        """extract unpacks a layer (tarball.extract's signature); the agent passes the fork server's, so
        that no process is forked from its threads."""
        self.root = root
        self._extract = extract
        self._blobs = root / "blobs" / "sha256"
        self._layers = root / "layers"
        self._images = root / "images"
        self._tmp = root / "tmp"
        self._names_file = root / "names.json"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Layers hold the images' setuid binaries: no other user of the host may reach them.
        os.chmod(root, 0o700)
        for d in (self._blobs, self._layers, self._images, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        # Held by worker threads across I/O: never taken by a read (the event loop's), which uses _catalog.
        self._lock = threading.RLock()
        self._records: dict[str, _Record] = {}
        self._names: dict[str, str] = {}
        self._configs: dict[str, bytes] = {}  # image id -> config blob, kept for the catalog
        # Replaced whole (one reference assignment) under _lock, after the change it shows is on disk.
        self._catalog = _EMPTY
        self._layer_meta: dict[str, dict[str, Any]] = {}  # hex DiffID -> its json
        self._blob_layers: dict[str, str] = {}  # blob digest -> hex DiffID of the layer it unpacks into
        self._pinned_layers: Counter[str] = Counter()
        self._pinned_blobs: Counter[str] = Counter()
        self._inflight: dict[str, threading.Event] = {}
        self._hashed: dict[tuple[int, ...], str] = {}
        self._kinds: dict[tuple[int, ...], tuple[str, str]] = {}
        self._remove_stale_work()
        self._load()

    # --- reads: from the catalog, never under the lock ---------------------------------------------

    def get(self, ref: str) -> Image:
        """The image with this id ("sha256:" digest, or a unique prefix of at least 3 hex digits) or name."""
        catalog = self._catalog
        image_id = catalog.find(ref)
        if image_id is None:
            raise NoSuchImage(f"No image '{ref}' known")
        return catalog.images[image_id]

    def find(self, ref: str) -> Image | None:
        catalog = self._catalog
        image_id = catalog.find(ref)
        return None if image_id is None else catalog.images[image_id]

    def list(self) -> list[Image]:
        return sorted(self._catalog.images.values(), key=lambda i: (i.created_at, i.id))

    def config_bytes(self, image: Image) -> bytes:
        config = self._catalog.configs.get(image.id)
        if config is None:
            raise NoSuchImage(f"No image '{image.id}' known")
        return config

    def image_config(self, image: Image) -> oci.ImageConfig:
        return oci.parse_config(self.config_bytes(image), f"config of image {image.id}")

    def is_name(self, ref: str) -> bool:
        catalog = self._catalog
        bare = ref.removeprefix("sha256:")
        return any(c in catalog.names for c in reference.candidates(ref)) and not (
            _HEX.match(bare) and bare in catalog.images)

    def _publish(self) -> None:
        """A new catalog from the indexes: called under the lock by each change, once its files are in place."""
        names_of: dict[str, list[str]] = {}
        for name, image_id in self._names.items():
            names_of.setdefault(image_id, []).append(name)
        images = {i: self._image(i, r, tuple(sorted(names_of.get(i, ())))) for i, r in self._records.items()}
        self._catalog = Catalog(MappingProxyType(images), MappingProxyType(dict(self._names)),
                                MappingProxyType({i: self._configs[i] for i in images}))

    def _image(self, image_id: str, r: _Record, names: tuple[str, ...]) -> Image:
        dirs = tuple(self._layers / d.removeprefix("sha256:") for d in r.layers)
        setup = r.setup or {}
        return Image(id=image_id, digest=r.manifest or f"sha256:{image_id}", config_digest=r.config, names=names,
                     layers=tuple(r.layers), layer_dirs=dirs, size=r.size, created_at=r.created_at, source=r.source,
                     setup_base=setup.get("base", ""), setup_key=setup.get("key", ""),
                     setup_steps=tuple(setup.get("steps", ())), owner_uid=r.owner_uid)

    # --- setup cache -----------------------------------------------------------------------------

    def setup_image(self, key: str) -> Image | None:
        """The newest setup cache image with this key (quilt_agent/setup.py's cache_key), if any."""
        found = [i for i in self._catalog.images.values() if key and i.setup_key == key]
        return max(found, key=lambda i: i.created_at) if found else None

    def commit_layer(self, base_id: str, layer: Path, key: str, steps: tuple[str, ...], owner_uid: int = 0) -> Image:
        """A setup cache image: the base image with one more layer on top (an uncompressed OCI layer tar,
        content-addressed as any other layer), its config's labels saying what it caches. Untagged: prune
        removes it once no container uses it."""
        with self._lock:
            base = self._records.get(base_id)
            if base is None:
                raise NoSuchImage(f"No image '{base_id}' known")
        if base.legacy:
            raise InvalidArgument(f"Image {base_id[:12]} predates manifests: its setup is not cached")
        manifest = json.loads((self._blobs / base.manifest.removeprefix("sha256:")).read_bytes())
        config = json.loads((self._blobs / base.config.removeprefix("sha256:")).read_bytes())
        with self.session(owner_uid) as s:
            for diff_id in base.layers:
                if not self.has_layer(s, diff_id):
                    raise NoSuchImage(f"Image {base_id[:12]} lost its layer {diff_id}")
            done = self.ensure_layer(s, Location(layer, 0, os.stat(layer).st_size),
                                     label=f"setup of image {base_id[:12]}", compression="none")
            config.setdefault("rootfs", {"type": "layers"}).setdefault("diff_ids", []).append(done.diff_id)
            settings = config.setdefault("config", {})
            settings["Labels"] = {**(settings.get("Labels") or {}), "org.quilt.setup.base": base_id,
                                  "org.quilt.setup.key": key}
            config.setdefault("history", []).append({
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "created_by": "quilt setup: " + " && ".join(steps), "comment": "setup cache"})
            config_bytes = oci.canonical(config)
            manifest["config"] = {**manifest.get("config", {}), "digest": oci.sha256(config_bytes),
                                  "size": len(config_bytes)}
            manifest["layers"] = [*manifest.get("layers", []), {"mediaType": oci.OCI_LAYER, "digest": done.digest,
                                                                 "size": done.size}]
            image = self.commit(s, oci.canonical(manifest), config_bytes, list(config["rootfs"]["diff_ids"]), [],
                                f"setup of {base.source}")
            with self._lock:
                record = self._records[image.id]
                if not record.setup:
                    record.setup = {"base": base_id, "key": key, "steps": list(steps)}
                    self._write_json(self._images / f"{image.id}.json", record.to_json())
                    self._publish()
                return self._catalog.images[image.id]

    # --- import ----------------------------------------------------------------------------------

    def import_path(self, path: Path, name: str = "", options: ImportOptions | None = None,
                    progress: Progress = _no_progress, owner_uid: int = 0) -> Image:
        """Import a rootfs tarball, an OCI layout directory, an oci-archive or a docker save archive; the kind
        is read from the content. The same content again gives the same image, unpacking nothing."""
        options = options or ImportOptions()
        if not path.is_absolute():
            raise InvalidArgument(f"Image path '{path}' is not absolute")
        names = [reference.normalize_name(name)] if name else []
        if not path.exists() and not path.is_symlink():
            raise NoSuchImage(f"No image '{path}' (no such file)")
        kind, compression = self._detect(path)
        if options.changes and kind != archive.ROOTFS:
            raise InvalidArgument(f"Config changes ({', '.join(sorted(options.changes))}) apply to rootfs tarballs "
                                  f"only; '{path}' is an image with its own config")
        with self.session(owner_uid) as s:
            if kind == archive.OCI_DIR:
                return self._import_oci(s, archive.DirBlobs(path), names, options, progress, str(path))
            if kind == archive.COMPRESSED_ARCHIVE:
                return self._import_compressed_archive(s, path, compression, names, options, progress)
            if kind in (archive.OCI_ARCHIVE, archive.DOCKER_ARCHIVE):
                return self._import_archive(s, archive.TarBlobs(path), kind, names, options, progress, str(path))
            return self._import_rootfs(s, path, names, options, progress)

    def _detect(self, path: Path) -> tuple[str, str]:
        """archive.detect, remembered for an unchanged file: a create per container names the same tarball,
        and telling a plain rootfs tar from an archive reads all of its headers."""
        try:
            st = os.stat(path)
        except OSError:
            return archive.detect(path)  # it names what is wrong
        if not stat.S_ISREG(st.st_mode):
            return archive.detect(path)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        found = self._kinds.get(key)
        if found is None:
            found = self._kinds[key] = archive.detect(path)
        return found

    def _import_rootfs(self, s: Session, path: Path, names: list[str], options: ImportOptions,
                       progress: Progress) -> Image:
        with tarball.open_tarball(path) as f:
            st = os.fstat(f.fileno())
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            # The same unchanged file again (a run per container): no need to hash it again.
            digest = self._hashed.get(key) or self._hash(f, st.st_size, f"checking {path}", progress)
        compression = tarball.detect_compression(path)
        layer = self.ensure_layer(s, Location(path, 0, st.st_size), label=str(path), digest=digest,
                                  compression=compression, progress=progress)
        if layer.digest != digest:
            # What was unpacked is not what was hashed: the layer would carry a wrong name.
            raise ImageInvalid(f"Image '{path}' is invalid: it changed while it was being imported")
        self._hashed[key] = digest
        platform = options.platform or oci.host_platform()
        config = _rootfs_config([layer.diff_id], platform, options.changes)
        manifest = _manifest(config, [layer])
        return self.commit(s, manifest, config, [layer.diff_id], names, str(path), platform)

    def _import_compressed_archive(self, s: Session, path: Path, compression: str, names: list[str],
                                   options: ImportOptions, progress: Progress) -> Image:
        work = self._work_file(".tar")
        try:
            progress(f"decompressing {path}", 0, 0)
            archive.decompress_to(path, compression, work)
            blobs = archive.TarBlobs(work, label=str(path))
            kind = archive.is_archive_listing({n for n in blobs.names() if "/" not in n})
            if kind == archive.ROOTFS:
                return self._import_rootfs(s, path, names, options, progress)
            if options.changes:
                raise InvalidArgument(f"Config changes apply to rootfs tarballs only; '{path}' is an image with "
                                      "its own config")
            return self._import_archive(s, blobs, kind, names, options, progress, str(path))
        finally:
            work.unlink(missing_ok=True)

    def _import_archive(self, s: Session, blobs: archive.TarBlobs, kind: str, names: list[str],
                        options: ImportOptions, progress: Progress, label: str) -> Image:
        if kind == archive.OCI_ARCHIVE:
            return self._import_oci(s, blobs, names, options, progress, label)
        return self._import_docker(s, blobs, names, options, progress, label)

    def _import_oci(self, s: Session, blobs: Blobs, names: list[str], options: ImportOptions,
                    progress: Progress, label: str) -> Image:
        layout = blobs.file("oci-layout", 4096)
        if layout is None or "imageLayoutVersion" not in oci.parse_json(layout, f"'{label}' oci-layout"):
            raise ImageInvalid(f"Image '{label}' is invalid: its oci-layout file has no imageLayoutVersion")
        raw_index = blobs.file("index.json", oci.MAX_MANIFEST)
        if raw_index is None:
            raise ImageInvalid(f"Image '{label}' is invalid: it has no index.json")
        try:
            index = oci.parse_index(raw_index, "index.json", oci.OCI_INDEX)
        except ImageInvalid as e:
            raise ImageInvalid(f"Image '{label}' is invalid: {e}") from None
        want = options.platform or oci.host_platform()
        chosen = archive.choose_in_oci_index(blobs, index, options.ref, want)
        if chosen.media_type and chosen.media_type not in oci.MANIFEST_TYPES:
            raise ImageInvalid(f"Image '{label}' is invalid: manifest {chosen.digest} has media type "
                               f"'{chosen.media_type}'")
        manifest = archive.read_blob(blobs, chosen.digest, oci.MAX_MANIFEST, "manifest")
        if not names:
            names = _names_from_annotation(chosen.annotations.get(REF_NAME, ""))
        return self._import_manifest(s, blobs, manifest, chosen.media_type, names, want, progress, label,
                                     platform_given=options.platform is not None)

    def _import_manifest(self, s: Session, blobs: Blobs, manifest_bytes: bytes, media_type: str, names: list[str],
                         want: oci.Platform, progress: Progress, label: str, platform_given: bool) -> Image:
        try:
            manifest = oci.parse_manifest(manifest_bytes, "manifest", media_type)
        except ImageInvalid as e:
            raise ImageInvalid(f"Image '{label}' is invalid: {e}") from None
        config_bytes = archive.read_blob(blobs, manifest.config.digest, oci.MAX_CONFIG, "config")
        config = self._check_config(config_bytes, len(manifest.layers), want, label, platform_given)
        jobs = []
        for i, desc in enumerate(manifest.layers):
            loc = blobs.locate(archive.blob_name(desc.digest))
            if loc is None:
                raise ImageInvalid(f"Image '{label}' is invalid: layer {desc.digest} is missing")
            if loc.size != desc.size:
                raise ImageInvalid(f"Image '{label}' is invalid: layer {desc.digest} is {loc.size} bytes, the "
                                   f"manifest says {desc.size}")
            jobs.append(dict(loc=loc, label=f"{label}, layer {i + 1} {desc.digest}", digest=desc.digest,
                             diff_id=config.diff_ids[i], progress=progress))
        self._ensure_layers(s, jobs)
        return self.commit(s, manifest_bytes, config_bytes, list(config.diff_ids), names, label, want)

    def _import_docker(self, s: Session, blobs: archive.TarBlobs, names: list[str], options: ImportOptions,
                       progress: Progress, label: str) -> Image:
        raw = blobs.file("manifest.json", oci.MAX_MANIFEST)
        entries = json.loads(raw) if raw is not None and _is_json(raw) else None
        if not isinstance(entries, list) or not entries or not all(
                isinstance(e, dict) and isinstance(e.get("Config"), str) and isinstance(e.get("Layers"), list)
                and all(isinstance(x, str) for x in e["Layers"]) for e in entries):
            raise ImageInvalid(f"Image '{label}' is invalid: its manifest.json is not a docker save manifest "
                               "(a list of Config, RepoTags, Layers)")
        entry = _choose_docker_entry(entries, options.ref, label)
        config_path = entry["Config"]
        config_bytes = blobs.file(config_path, oci.MAX_CONFIG)
        if config_bytes is None:
            raise ImageInvalid(f"Image '{label}' is invalid: its config '{config_path}' is missing")
        named = _CONFIG_MEMBER.match(config_path)
        if named:  # docker names the config by its digest: check it
            try:
                oci.verify(config_bytes, f"sha256:{named.group(1)}", f"config '{config_path}'")
            except ImageInvalid as e:
                raise ImageInvalid(f"Image '{label}' is invalid: {e}") from None
        want = options.platform or oci.host_platform()
        config = self._check_config(config_bytes, len(entry["Layers"]), want, label, options.platform is not None)
        jobs = []
        for i, member in enumerate(entry["Layers"]):
            loc = blobs.locate(member)
            if loc is None:
                raise ImageInvalid(f"Image '{label}' is invalid: layer '{member}' is missing")
            blob = _BLOB_MEMBER.match(posix_normal(member))
            jobs.append(dict(loc=loc, label=f"{label}, layer {i + 1} '{member}'",
                             digest=f"sha256:{blob.group(1)}" if blob else None, diff_id=config.diff_ids[i],
                             progress=progress))
        done = self._ensure_layers(s, jobs)
        if not names:
            tags = entry.get("RepoTags") or []
            names = [reference.normalize_name(t) for t in tags if isinstance(t, str) and _valid_name(t)]
        return self.commit(s, _manifest(config_bytes, done, oci.DOCKER_CONFIG if not named else oci.OCI_CONFIG),
                           config_bytes, list(config.diff_ids), names, label, want)

    def _check_config(self, config_bytes: bytes, layers: int, want: oci.Platform, label: str,
                      platform_given: bool) -> oci.ImageConfig:
        try:
            config = oci.parse_config(config_bytes, "config")
        except ImageInvalid as e:
            raise ImageInvalid(f"Image '{label}' is invalid: {e}") from None
        if len(config.diff_ids) != layers:
            raise ImageInvalid(f"Image '{label}' is invalid: the manifest has {layers} layers, the config "
                               f"{len(config.diff_ids)} DiffIDs")
        if config.platform is not None and not want.matches(config.platform):
            hint = "" if platform_given else " (the 'platform' option takes it anyway)"
            raise NoSuchImage(f"No image for {want} in '{label}': it is for {config.platform}{hint}")
        return config

    # --- layers, blobs, commit: also what a pull uses ---------------------------------------------

    @contextmanager
    def session(self, owner_uid: int = 0) -> Iterator[Session]:
        s = Session(self, owner_uid)
        trash: list[Path] = []
        try:
            yield s
        except (ImageInvalid, NoSuchImage):
            with self._lock:
                self._unpin(s)
                trash = self._unreferenced(s.new_layers, s.new_blobs)
            raise
        finally:
            with self._lock:
                self._unpin(s)
            self._empty_trash(trash)

    def _unpin(self, s: Session) -> None:
        self._pinned_layers.subtract(s.layers)
        self._pinned_blobs.subtract(s.blobs)
        self._pinned_layers += Counter()  # drops the zero counts
        self._pinned_blobs += Counter()
        s.layers.clear()
        s.blobs.clear()

    def has_layer(self, s: Session, diff_id: str) -> bool:
        """Whether the layer is unpacked already; if so it stays pinned for the session."""
        hexid = diff_id.removeprefix("sha256:")
        with self._lock:
            if hexid in self._layer_meta and (self._layers / hexid).is_dir():
                self._pin_layer(s, hexid)
                return True
        return False

    def ensure_layer(self, s: Session, loc: Location, *, label: str, digest: str | None = None,
                     diff_id: str | None = None, compression: str = "",
                     progress: Progress = _no_progress) -> LayerDone:
        """The layer in loc, unpacked once: found by its DiffID or its blob's digest when known, else unpacked
        and checked against both. Concurrent calls for the same blob unpack it once."""
        key = digest or diff_id or f"{loc.path}:{loc.offset}"
        while True:
            known = self._known_layer(s, digest, diff_id)
            if known is not None:
                hexid, meta = known
                blob_digest = digest or self._digest_of(loc, label, progress)
                progress(f"exists {blob_digest}", loc.size, loc.size)
                return LayerDone(f"sha256:{hexid}", blob_digest, loc.size,
                                 compression or tarball.detect_compression(loc.path, loc.offset, label))
            with self._lock:
                waiting = self._inflight.get(key)
                if waiting is None:
                    mine = self._inflight[key] = threading.Event()
            if waiting is None:
                break
            waiting.wait()  # the other one's layer, or its failure: then try ourselves
        try:
            return self._unpack(s, loc, label, digest, diff_id, progress)
        finally:
            with self._lock:
                del self._inflight[key]
            mine.set()

    def _ensure_layers(self, s: Session, jobs: list[dict[str, Any]]) -> list[LayerDone]:
        """ensure_layer for each, a few at a time (each unpacking is a process of its own); the first error, in
        layer order, is raised once the others have stopped."""
        if len(jobs) <= 1:
            return [self.ensure_layer(s, **job) for job in jobs]
        with ThreadPoolExecutor(max_workers=PARALLEL_UNPACK, thread_name_prefix="quilt-unpack") as pool:
            futures = [pool.submit(self.ensure_layer, s, **job) for job in jobs]
            wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                f.cancel()  # those not started yet: the image fails anyway
        for f in futures:
            if not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
        if any(f.cancelled() for f in futures):
            raise RuntimeError("a layer's unpacking was cancelled without an error")
        return [f.result() for f in futures]

    def _known_layer(self, s: Session, digest: str | None, diff_id: str | None) -> tuple[str, dict] | None:
        with self._lock:
            for hexid in ((diff_id or "").removeprefix("sha256:"), self._blob_layers.get(digest or "", "")):
                if hexid and hexid in self._layer_meta and (self._layers / hexid).is_dir():
                    self._pin_layer(s, hexid)
                    return hexid, self._layer_meta[hexid]
        return None

    def _digest_of(self, loc: Location, label: str, progress: Progress) -> str:
        """The digest of a blob whose layer is there already, when nothing names it (a docker save layer.tar):
        the manifest Quilt writes for the image must be true."""
        with open(loc.path, "rb") as f:
            return self._hash(f, loc.size, f"checking {label}", progress, offset=loc.offset)

    def _unpack(self, s: Session, loc: Location, label: str, digest: str | None, diff_id: str | None,
                progress: Progress) -> LayerDone:
        work = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self._tmp))
        shown = digest or diff_id or label
        try:
            # The layer's "/" when the archive has no "./" entry of its own.
            os.chmod(work, 0o755)
            progress(f"unpacking {shown}", 0, loc.size)
            try:
                done = self._extract(loc.path, work, offset=loc.offset, size=loc.size, label=label,
                                     progress=lambda n: progress(f"unpacking {shown}", n, loc.size))
            except ImageInvalid:
                # A blob that is not what the manifest says is the first thing wrong with it, whatever its
                # unpacking stumbled on (a CRC error in a changed gzip stream, say).
                if digest is not None:
                    with open(loc.path, "rb") as f:
                        actual = self._hash(f, loc.size, f"checking {label}", _no_progress, offset=loc.offset)
                    if actual != digest:
                        raise ImageInvalid(f"Image '{label}' is invalid: its blob does not match its digest: "
                                           f"expected {digest}, got {actual}") from None
                raise
            if digest is not None and done.digest != digest:
                raise ImageInvalid(f"Image '{label}' is invalid: its blob does not match its digest: expected "
                                   f"{digest}, got {done.digest}")
            if diff_id is not None and done.diff_id != diff_id:
                raise ImageInvalid(f"Image '{label}' is invalid: its content does not match the config's DiffID: "
                                   f"expected {diff_id}, got {done.diff_id}")
            if done.skipped_count:
                # As Podman does without privileges: no device nodes from images.
                log.warning("Image '%s': skipped %d device nodes and FIFOs (the runtime provides /dev): %s%s",
                            label, done.skipped_count, ", ".join(f"{what} '{name}'" for name, what in done.skipped),
                            ", ..." if done.skipped_count > len(done.skipped) else "")
            hexid = done.diff_id.removeprefix("sha256:")
            size = _tree_size(work)
            with self._lock:
                final = self._layers / hexid
                if hexid in self._layer_meta and final.is_dir():
                    meta = self._layer_meta[hexid]  # unpacked meanwhile (another blob of the same tar)
                else:
                    if final.exists():  # a layer directory without its json: left by a crash, unknown
                        self._trash(final)
                    os.rename(work, final)
                    s.new_layers.add(hexid)
                    meta = {"id": done.diff_id, "size": size, "created_at": time.time_ns() // 1000, "blobs": []}
                    log.info("Unpacked layer %s from '%s' (%d bytes)", done.diff_id, label, size)
                if done.digest not in meta["blobs"]:
                    meta = {**meta, "blobs": [*meta["blobs"], done.digest]}
                    self._write_json(self._layers / f"{hexid}.json", meta)
                self._layer_meta[hexid] = meta
                self._blob_layers[done.digest] = hexid
                self._pin_layer(s, hexid)
            progress(f"unpacked {shown}", loc.size, loc.size)
            return LayerDone(done.diff_id, done.digest, done.size, done.compression)
        finally:
            if os.path.lexists(work):
                filetree.remove_tree(work)  # the layer's own tree, as deep as the image made it

    def blob_location(self, s: Session, digest: str) -> Location | None:
        """A verified blob kept in the store (pinned for the session), or None."""
        path = self._blobs / oci.check_digest(digest, "blob").removeprefix("sha256:")
        with self._lock:
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                return None
            self._pin_blob(s, digest)
        return Location(path, 0, size)

    def work_file(self, suffix: str = "") -> Path:
        """A new empty file under tmp/, for a download."""
        return self._work_file(suffix)

    def add_blob(self, s: Session, work: Path, digest: str) -> Location:
        """Move a downloaded file, already checked against digest, into blobs/."""
        path = self._blobs / oci.check_digest(digest, "blob").removeprefix("sha256:")
        with self._lock:
            os.rename(work, path)
            self._pin_blob(s, digest)
            s.new_blobs.add(digest)
        return Location(path, 0, os.stat(path).st_size)

    def keep_blob(self, s: Session, digest: str, data: bytes) -> None:
        """Keep a small blob already checked against digest (a pulled config): a retry needs not fetch it."""
        self._write_blob(s, digest, data)

    def drop_blob(self, digest: str) -> None:
        """A layer's blob, once its layer is unpacked: the layer is the content now."""
        with self._lock:
            if self._pinned_blobs[digest] <= 1 and digest not in self._referenced_blobs():
                (self._blobs / digest.removeprefix("sha256:")).unlink(missing_ok=True)

    def commit(self, s: Session, manifest: bytes, config: bytes, diff_ids: list[str], names: list[str], source: str,
               want: oci.Platform | None = None) -> Image:
        """Record an image whose layers this session has: its manifest and config blobs, its record, its names."""
        parsed = oci.parse_config(config, "config")
        if list(parsed.diff_ids) != diff_ids:
            raise ImageInvalid(f"Image '{source}' is invalid: the config's DiffIDs are not those of its layers")
        manifest_digest, config_digest = oci.sha256(manifest), oci.sha256(config)
        image_id = config_digest.removeprefix("sha256:")
        self._write_blob(s, config_digest, config)
        self._write_blob(s, manifest_digest, manifest)
        with self._lock:
            missing = [d for d in diff_ids if d.removeprefix("sha256:") not in s.layers]
            if missing:
                raise RuntimeError(f"committing image {image_id} without its layers {missing}")
            record = self._records.get(image_id)
            if record is None or record.manifest != manifest_digest:
                size = sum(self._layer_meta[h]["size"] for h in {d.removeprefix("sha256:") for d in diff_ids})
                record = _Record(manifest=manifest_digest, config=config_digest, layers=list(diff_ids),
                                 source=record.source if record else source,
                                 created_at=record.created_at if record else time.time_ns() // 1000, size=size,
                                 owner_uid=record.owner_uid if record else s.owner_uid)
                self._write_json(self._images / f"{image_id}.json", record.to_json())
                self._records[image_id] = record
                self._configs[image_id] = config
                log.info("Image %s (%s) from '%s': %d layers, %d bytes", image_id[:12], manifest_digest, source,
                         len(diff_ids), size)
            if names:
                self._set_names({**self._names, **{n: image_id for n in names}})
            self._publish()
            return self._catalog.images[image_id]

    # --- names, removal, prune -------------------------------------------------------------------

    def tag(self, image_id: str, name: str) -> Image:
        name = reference.normalize_name(name)
        with self._lock:
            if image_id not in self._records:
                raise NoSuchImage(f"No image '{image_id}' known")
            self._set_names({**self._names, name: image_id})
            self._publish()
            return self._catalog.images[image_id]

    def untag(self, name: str) -> Image:
        """Take a name off its image; returns the image as it is after."""
        with self._lock:
            for candidate in reference.candidates(name):
                if candidate in self._names:
                    image_id = self._names[candidate]
                    self._set_names({n: i for n, i in self._names.items() if n != candidate})
                    self._publish()
                    return self._catalog.images[image_id]
        raise NoSuchImage(f"No image named '{name}' known")

    def remove(self, image_id: str) -> int:
        """Remove an image, its names, and the layers and blobs no other image uses; return the bytes freed.
        The caller makes sure no container uses it."""
        with self._lock:
            if image_id not in self._records:
                raise NoSuchImage(f"No image '{image_id}' known")
            record = self._drop_image(image_id)
            self._publish()
            trash = self._unreferenced({d.removeprefix("sha256:") for d in record.layers},
                                       {record.manifest, record.config})
        return self._empty_trash(trash)

    def prune(self, keep: set[str]) -> tuple[int, list[str]]:
        """Remove images with no name that no container uses (ids in keep), then every layer and blob that no
        image uses; return the bytes freed and the ids of the images removed."""
        with self._lock:
            removed = [i for i in self._records if i not in keep and i not in self._names.values()]
            for image_id in removed:
                self._drop_image(image_id)
            self._publish()
            trash = self._unreferenced(None, None)
        return self._empty_trash(trash), removed

    def _drop_image(self, image_id: str) -> _Record:
        # The record first: from the next catalog on the image is gone for get and list, whatever happens to its
        # layers.
        os.unlink(self._images / f"{image_id}.json")
        record = self._records.pop(image_id)
        self._configs.pop(image_id, None)
        if image_id in self._names.values():
            self._set_names({n: i for n, i in self._names.items() if i != image_id})
        log.info("Removed image %s", image_id)
        return record

    def _referenced_blobs(self) -> set[str]:
        return {d for r in self._records.values() for d in (r.manifest, r.config) if d}

    def _unreferenced(self, layers: set[str] | None, blobs: set[str] | None) -> list[Path]:
        """Move the layers and blobs among those given (None: all) that no image uses and no session pins
        out of place; return where to. Only prune takes all: a pull cut short keeps its layers and blobs
        for its retry until then."""
        used_layers = {d.removeprefix("sha256:") for r in self._records.values() for d in r.layers}
        used_blobs = self._referenced_blobs()
        out: list[Path] = []
        for entry in os.scandir(self._layers):
            hexid = entry.name.removesuffix(".json")
            if not _HEX.match(hexid) or hexid in used_layers or self._pinned_layers[hexid] > 0:
                continue
            if layers is not None and hexid not in layers:
                continue
            if hexid in self._layer_meta:
                meta = self._layer_meta.pop(hexid)
                for blob in meta.get("blobs", []):
                    if self._blob_layers.get(blob) == hexid:
                        del self._blob_layers[blob]
            out.append(self._trash(Path(entry.path)))
        for entry in os.scandir(self._blobs):
            digest = f"sha256:{entry.name}"
            if blobs is not None and digest not in blobs:
                continue
            if digest not in used_blobs and self._pinned_blobs[digest] <= 0:
                out.append(self._trash(Path(entry.path)))
        return out

    def _trash(self, path: Path) -> Path:
        """Rename out of place into tmp/ (never seen half-deleted where it was); deleted by _empty_trash."""
        trash = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-trash-", dir=self._tmp))
        os.rename(path, trash / path.name)
        return trash

    def _empty_trash(self, trash: list[Path]) -> int:
        freed = 0
        for t in trash:
            freed += _tree_size(t, count_metadata=True)
            filetree.remove_tree(t, ignore_errors=True)
        return freed

    # --- helpers ---------------------------------------------------------------------------------

    def _pin_layer(self, s: Session, hexid: str) -> None:
        s.layers.append(hexid)
        self._pinned_layers[hexid] += 1

    def _pin_blob(self, s: Session, digest: str) -> None:
        s.blobs.append(digest)
        self._pinned_blobs[digest] += 1

    def _hash(self, f: Any, size: int, phase: str, progress: Progress, offset: int = 0) -> str:
        h = hashlib.sha256()
        fd = f.fileno()
        done = 0
        while done < size:
            chunk = os.pread(fd, min(1 << 20, size - done), offset + done)
            if not chunk:
                break
            h.update(chunk)
            done += len(chunk)
            progress(phase, done, size)
        return "sha256:" + h.hexdigest()

    def _write_blob(self, s: Session, digest: str, data: bytes) -> None:
        path = self._blobs / digest.removeprefix("sha256:")
        with self._lock:
            self._pin_blob(s, digest)
            if path.exists():
                return
        work = self._work_file()
        try:
            with open(work, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(work, path)
            s.new_blobs.add(digest)
        finally:
            work.unlink(missing_ok=True)

    def _write_json(self, final: Path, data: Any) -> None:
        work = self._work_file(".json")
        try:
            with open(work, "w") as f:
                json.dump(data, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(work, final)
        finally:
            work.unlink(missing_ok=True)

    def _work_file(self, suffix: str = "") -> Path:
        fd, name = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=suffix, dir=self._tmp)
        os.close(fd)
        return Path(name)

    def _set_names(self, names: dict[str, str]) -> None:
        self._write_json(self._names_file, names)
        self._names = names

    def _load(self) -> None:
        with self._lock:
            self._take_over_legacy()
            for entry in os.scandir(self._layers):
                hexid = entry.name.removesuffix(".json")
                if entry.name.endswith(".json") and _HEX.match(hexid):
                    meta = _read_json(Path(entry.path))
                    if isinstance(meta, dict) and isinstance(meta.get("blobs"), list) and "size" in meta:
                        self._layer_meta[hexid] = meta
                        for blob in meta["blobs"]:
                            self._blob_layers[blob] = hexid
            for entry in os.scandir(self._images):
                image_id = entry.name.removesuffix(".json")
                data = _read_json(Path(entry.path)) if _HEX.match(image_id) else None
                try:
                    record = _Record(**data) if isinstance(data, dict) else None
                except TypeError:
                    record = None
                if record is None:
                    log.warning("Ignoring unreadable image record %s", entry.path)
                    continue
                missing = [d for d in record.layers if d.removeprefix("sha256:") not in self._layer_meta]
                missing += [d for d in (record.manifest, record.config)
                            if not record.legacy and not (self._blobs / d.removeprefix("sha256:")).is_file()]
                config = self._read_config(record) if not missing else None
                if config is None:
                    # Only tampering does this (removal drops the record first): the rest is prune's.
                    log.warning("Ignoring image %s: its %s are missing", image_id, ", ".join(missing) or record.config)
                    continue
                self._records[image_id] = record
                self._configs[image_id] = config
            names = _read_json(self._names_file) or {}
            self._names = {n: i for n, i in names.items() if isinstance(n, str) and i in self._records}
            self._publish()

    def _read_config(self, record: _Record) -> bytes | None:
        if record.legacy:
            return _rootfs_config(record.layers, oci.host_platform(), {})
        try:
            return (self._blobs / record.config.removeprefix("sha256:")).read_bytes()
        except OSError:
            return None

    def _take_over_legacy(self) -> None:
        """The store before images had manifests: layers/<id>/ with layers/<id>.json {"source", "size",
        "created_at"}, id the sha256 of the tarball. Each becomes a one-layer image under the same id, whose
        layer keeps its directory; it is not found by its tarball's digest (that is no DiffID), so importing
        the tarball again makes a proper image, and the old one goes once no container uses it."""
        for meta_path in self._layers.glob("*.json"):
            old = _read_json(meta_path)
            image_id = meta_path.stem
            if not (isinstance(old, dict) and "source" in old and "blobs" not in old and _HEX.match(image_id)):
                continue
            if not (self._layers / image_id).is_dir():
                meta_path.unlink()
                continue
            layer = f"sha256:{image_id}"
            record = _Record(manifest="", config="", layers=[layer], source=str(old.get("source", "")),
                             created_at=int(old.get("created_at", 0)), size=int(old.get("size", 0)), legacy=True)
            self._write_json(self._images / f"{image_id}.json", record.to_json())
            self._write_json(meta_path, {"id": layer, "size": record.size, "created_at": record.created_at,
                                         "blobs": []})
            log.info("Took over image %s (from '%s') from the previous store layout", image_id, record.source)

    def _remove_stale_work(self) -> None:
        """Remove work left in tmp/ by agents that died mid-import (SIGKILL, power loss)."""
        for entry in os.scandir(self._tmp):
            pid = entry.name.partition("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                try:
                    filetree.remove_tree(entry.path)
                except Exception:
                    # Left for the next start: one stuck entry must not keep the runtime from starting.
                    log.exception("cannot remove %s", entry.path)


def posix_normal(name: str) -> str:
    return os.path.normpath("/" + name).lstrip("/")


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _valid_name(text: str) -> bool:
    try:
        reference.normalize_name(text)
    except InvalidArgument:
        return False
    return True


def _names_from_annotation(ref_name: str) -> list[str]:
    # skopeo's oci:DIR:NAME stores NAME as given; a bare tag ("latest") names no repository and is left out.
    if (":" in ref_name or "/" in ref_name) and _valid_name(ref_name):
        return [reference.normalize_name(ref_name)]
    return []


def _choose_docker_entry(entries: list[dict[str, Any]], ref: str, label: str) -> dict[str, Any]:
    if ref:
        wanted = set(reference.candidates(ref))
        for e in entries:
            tags = {reference.normalize_name(t) for t in e.get("RepoTags") or [] if isinstance(t, str)
                    and _valid_name(t)}
            if tags & wanted:
                return e
        raise NoSuchImage(f"No image '{ref}' in '{label}'")
    if len(entries) > 1:
        tags = [t for e in entries for t in e.get("RepoTags") or [] if isinstance(t, str)]
        raise ImageInvalid(f"Image '{label}' holds {len(entries)} images: choose one with the 'ref' option"
                           + (f" ({', '.join(tags)})" if tags else ""))
    return entries[0]


_CHANGE_KEYS = {"env": "Env", "entrypoint": "Entrypoint", "cmd": "Cmd", "workdir": "WorkingDir", "user": "User",
                "labels": "Labels", "stop_signal": "StopSignal"}


def _rootfs_config(diff_ids: list[str], platform: oci.Platform, changes: dict[str, Any]) -> bytes:
    """The config of a rootfs tarball's image: nothing but the platform, the layer and the changes asked
    for, and no date, so that the same tarball imported again is the same image."""
    doc: dict[str, Any] = {"architecture": platform.architecture, "os": platform.os,
                           "config": {_CHANGE_KEYS[k]: v for k, v in sorted(changes.items())},
                           "rootfs": {"type": "layers", "diff_ids": list(diff_ids)}}
    if platform.variant:
        doc["variant"] = platform.variant
    return oci.canonical(doc)


def _manifest(config: bytes, layers: list[LayerDone], config_type: str = oci.OCI_CONFIG) -> bytes:
    return oci.canonical({
        "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG if config_type == oci.OCI_CONFIG else config_type,
                   "digest": oci.sha256(config), "size": len(config)},
        "layers": [{"mediaType": oci.LAYER_TYPES.get(layer.compression, oci.OCI_LAYER), "digest": layer.digest,
                    "size": layer.size} for layer in layers],
    })


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as e:
        log.warning("Ignoring unreadable %s: %s", path, e)
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _tree_size(top: Path, count_metadata: bool = False) -> int:
    """Bytes of the regular files under top (or top itself), each hardlinked file once."""
    seen: set[int] = set()
    total = 0
    if top.is_file():
        return top.stat().st_size
    for st in filetree.lstat_below(top):  # an image's layer may be deeper than os.walk's recursion goes
        if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
            seen.add(st.st_ino)
            total += st.st_size
    return total


