"""Volumes and mounts: the create options volumes, tmpfs and read_only, and named volumes.

A named volume is a directory /var/lib/quilt/volumes/NAME/_data (as Podman and Docker lay it out) and a row in
the volumes table (migration 3 of store.MIGRATIONS). It is made on first use by a container, as Podman does, or by
CreateVolume; it outlives its containers and the agent. The mounts themselves are made by the container's init in
its mount namespace (helper/mounts.py), each target resolved inside the container's root.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

import aiosqlite

from quilt_agent import filetree
from quilt_agent.errors import InvalidArgument, NoSuchPath, NoSuchVolume, VolumeInUse, VolumeNameInUse

VOLUME_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
ANONYMOUS_NAME_RE = re.compile(r"[0-9a-f]{64}")  # name_anonymous's names
MAX_VOLUME_NAME = 128
MOUNT_OPTIONS = ("ro", "rw", "nosuid", "nodev", "noexec")
FORBIDDEN_TARGETS = ("/proc", "/sys", "/dev")
SIZE_RE = re.compile(r"(\d+)([kmg]?)", re.IGNORECASE)
MODE_RE = re.compile(r"[0-7]{3,4}")
DEFAULT_TMPFS_SIZE = 64 * 1024 * 1024


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"Option '{key}' must be a list of strings, not {value!r}")
    return tuple(value)


def validate_volume_name(name: str) -> str:
    if not name or len(name) > MAX_VOLUME_NAME or not VOLUME_NAME_RE.fullmatch(name):
        raise InvalidArgument(f"Invalid volume name '{name}': use letters, digits, '_', '.' and '-', starting with "
                              f"a letter or digit, at most {MAX_VOLUME_NAME} characters")
    return name


def check_target(target: str, what: str) -> str:
    """A mount's destination inside the container: absolute, no '..', not /proc, /sys, /dev or below them."""
    if not target.startswith("/") or "\0" in target:
        raise InvalidArgument(f"Invalid {what} destination '{target}': must be an absolute path")
    if ".." in target.split("/"):
        raise InvalidArgument(f"Invalid {what} destination '{target}': must not contain '..'")
    norm = os.path.normpath(target)
    if norm == "/":
        raise InvalidArgument(f"Invalid {what} destination '{target}': cannot mount over the container's root")
    for forbidden in FORBIDDEN_TARGETS:
        if norm == forbidden or norm.startswith(forbidden + "/"):
            raise InvalidArgument(f"Invalid {what} destination '{target}': {forbidden} is the runtime's own")
    return norm


@dataclass(frozen=True)
class VolumeMount:
    source: str  # an absolute host path, a volume's name, or "" for an anonymous volume (named at create)
    target: str
    options: tuple[str, ...] = ()

    @property
    def named(self) -> bool:
        return bool(self.source) and not self.source.startswith("/")

    @property
    def anonymous(self) -> bool:
        return not self.source

    @property
    def read_only(self) -> bool:
        return "ro" in self.options

    def text(self) -> str:
        parts = (self.source, self.target) if self.source else (self.target,)
        return ":".join((*parts, *([",".join(self.options)] if self.options else [])))


def parse_volume(entry: str) -> VolumeMount:
    """SOURCE:DEST[:OPTIONS], OPTIONS comma-separated among ro, rw, nosuid, nodev, noexec; or DEST alone, an
    anonymous volume (as `podman run -v /data`)."""
    if entry.startswith("/") and ":" not in entry:
        return VolumeMount("", check_target(entry, "volume"))
    parts = entry.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidArgument(f"Invalid volume '{entry}': expected SOURCE:DEST[:OPTIONS]")
    source, target = parts[0], parts[1]
    if source.startswith("/"):
        if "\0" in source or ".." in source.split("/"):
            raise InvalidArgument(f"Invalid volume source '{source}': an absolute path without '..'")
        source = os.path.normpath(source)
    else:
        validate_volume_name(source)
    target = check_target(target, "volume")
    options: list[str] = []
    if len(parts) == 3:
        for opt in parts[2].split(","):
            if opt not in MOUNT_OPTIONS:
                raise InvalidArgument(f"Invalid volume option '{opt}' in '{entry}': choose among "
                                      f"{', '.join(MOUNT_OPTIONS)}")
            if opt in ("ro", "rw") and ({"ro", "rw"} & set(options)):
                raise InvalidArgument(f"Invalid volume options in '{entry}': ro and rw given together or twice")
            if opt not in options:
                options.append(opt)
    return VolumeMount(source, target, tuple(o for o in options if o != "rw"))


def parse_volumes(value: Any) -> tuple[str, ...]:
    mounts = [parse_volume(v) for v in _strings("volumes", value)]
    _no_duplicate_targets([m.target for m in mounts])
    return tuple(m.text() for m in mounts)


def _size(text: str, entry: str) -> int:
    m = SIZE_RE.fullmatch(text)
    if not m:
        raise InvalidArgument(f"Invalid tmpfs size '{text}' in '{entry}': expected a number with k, m or g")
    size = int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    if size <= 0:
        raise InvalidArgument(f"Invalid tmpfs size '{text}' in '{entry}': must be above 0")
    return size


def parse_tmpfs_entry(entry: str) -> tuple[str, int, str]:
    """DEST[:size=64m,mode=1777] -> (dest, size in bytes, octal mode)."""
    target, _, opts = entry.partition(":")
    target = check_target(target, "tmpfs")
    size, mode = DEFAULT_TMPFS_SIZE, "1777"
    if opts:
        for opt in opts.split(","):
            key, sep, val = opt.partition("=")
            if key == "size" and sep:
                size = _size(val, entry)
            elif key == "mode" and sep and MODE_RE.fullmatch(val):
                mode = val
            else:
                raise InvalidArgument(f"Invalid tmpfs option '{opt}' in '{entry}': expected size=N[k|m|g] or "
                                      "mode=OCTAL")
    return target, size, mode


def parse_tmpfs(value: Any) -> tuple[str, ...]:
    out = []
    for entry in _strings("tmpfs", value):
        target, size, mode = parse_tmpfs_entry(entry)
        out.append(f"{target}:size={size},mode={mode}")
    _no_duplicate_targets([e.split(":")[0] for e in out])
    return tuple(out)


def _no_duplicate_targets(targets: list[str]) -> None:
    seen: set[str] = set()
    for t in targets:
        if t in seen:
            raise InvalidArgument(f"Two mounts have the same destination '{t}'")
        seen.add(t)


def _read_only(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"Option 'read_only' must be a boolean, not {value!r}")
    return value


# Merged into model.OPTION_PARSERS: option key -> (ContainerSpec field, parser).
CONTAINER_OPTIONS = {
    "volumes": ("volumes", parse_volumes),
    "tmpfs": ("tmpfs", parse_tmpfs),
    "read_only": ("read_only", _read_only),
}


def check_mount_targets(volumes: tuple[str, ...], tmpfs: tuple[str, ...]) -> None:
    _no_duplicate_targets([parse_volume(v).target for v in volumes] + [t.split(":")[0] for t in tmpfs])


# --- named volumes --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Volume:
    id: str
    name: str
    mountpoint: str  # the _data directory a container mounts
    created_at: int
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The volume's own directory (the parent of its _data)."""
        return os.path.dirname(self.mountpoint)


class Users(Protocol):
    def volume_users(self) -> dict[str, list[tuple[str, str]]]:
        """volume name -> (container id, name) of the containers that name it."""

    async def remove(self, container_id: str, force: bool) -> None: ...


class VolumeListener(Protocol):
    def volume_added(self, volume: Volume) -> None: ...

    def volume_removed(self, volume: Volume) -> None: ...


def _parse_create_options(options: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for key, value in options.items():
        if key == "labels":
            if not isinstance(value, dict) or not all(isinstance(k, str) and k and isinstance(v, str)
                                                      for k, v in value.items()):
                raise InvalidArgument("Option 'labels' must be a dictionary of strings with non-empty keys")
            labels = dict(value)
        else:
            raise InvalidArgument(f"Unknown volume option '{key}': known options are labels")
    return labels


def _usec() -> int:
    import time
    return time.time_ns() // 1000


class Volumes:
    """The named volumes: in memory, in the store (through the manager's ordered writes), on disk."""

    def __init__(self, root: Path, db: aiosqlite.Connection,
                 write: Callable[[Callable[[], Awaitable[None]]], asyncio.Future[None]]) -> None:
        self._root = root
        self._db = db
        self._write = write
        self._volumes: dict[str, Volume] = {}
        self._users: Users | None = None
        self._listeners: list[VolumeListener] = []
        self._held: dict[str, int] = {}  # volumes an ensure() is making for a create: in use meanwhile

    def attach(self, users: Users) -> None:
        self._users = users

    def subscribe(self, listener: VolumeListener) -> None:
        self._listeners.append(listener)

    async def load(self) -> None:
        async with self._db.execute("SELECT * FROM volumes ORDER BY created_at") as cur:
            for r in await cur.fetchall():
                v = Volume(id=r["id"], name=r["name"], mountpoint=r["mountpoint"], created_at=r["created_at"],
                           labels=json.loads(r["labels"]))
                self._volumes[v.name] = v
                os.makedirs(v.mountpoint, mode=0o755, exist_ok=True)

    def list(self) -> list[Volume]:
        return sorted(self._volumes.values(), key=lambda v: (v.created_at, v.name))

    def get(self, name_or_id: str) -> Volume:
        v = self._volumes.get(name_or_id)
        if v is not None:
            return v
        matches = [v for v in self._volumes.values() if v.id == name_or_id
                   or (len(name_or_id) >= 3 and v.id.startswith(name_or_id))]
        if len(matches) == 1:
            return matches[0]
        raise NoSuchVolume(name_or_id)

    def used_by(self, name: str) -> list[tuple[str, str]]:
        users = (self._users.volume_users() if self._users else {}).get(name, [])
        return users + [("", "a container being created")] * (name in self._held and not users)

    async def create(self, name: str, options: dict[str, Any], exist_ok: bool = False) -> Volume:
        validate_volume_name(name)
        labels = _parse_create_options(options)
        if name in self._volumes:
            if exist_ok:
                return self._volumes[name]
            raise VolumeNameInUse(name)
        # An anonymous volume's name is already 64 random hex digits: its id too, as Podman shows one string.
        vid = name if ANONYMOUS_NAME_RE.fullmatch(name) else secrets.token_hex(32)
        data = self._root / name / "_data"
        v = Volume(id=vid, name=name, mountpoint=str(data), created_at=_usec(), labels=labels)
        self._volumes[name] = v  # taken before the await: a concurrent create of the same name is refused
        try:
            await asyncio.to_thread(self._make_dirs, data)
            await self._write(lambda: self._db.execute(
                "INSERT INTO volumes (id, name, mountpoint, created_at, labels) VALUES (?, ?, ?, ?, ?)",
                (v.id, v.name, v.mountpoint, v.created_at, json.dumps(labels, sort_keys=True))))
        except BaseException:
            self._volumes.pop(name, None)
            filetree.remove_tree(self._root / name, ignore_errors=True)
            raise
        for listener in self._listeners:
            listener.volume_added(v)
        return v

    def _make_dirs(self, data: Path) -> None:
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        data.parent.mkdir(mode=0o700)
        data.mkdir(mode=0o755)

    async def ensure(self, names: list[str]) -> None:
        """Make the named volumes a container names that do not exist yet (first use, as Podman)."""
        for name in names:
            self._held[name] = self._held.get(name, 0) + 1
        try:
            for name in names:
                if name not in self._volumes:
                    await self.create(name, {}, exist_ok=True)
        finally:
            for name in names:
                self._held[name] -= 1
                if not self._held[name]:
                    del self._held[name]

    async def remove(self, name_or_id: str, force: bool) -> int:
        """Remove a volume and its data; returns the bytes freed. In use: VolumeInUse, unless forced (then its
        containers are removed first, as podman volume rm -f)."""
        v = self.get(name_or_id)
        users = self.used_by(v.name)
        if users:
            if not force:
                raise VolumeInUse(f"Volume '{v.name}' is used by container(s) "
                                  f"{', '.join(n for _, n in users)} (remove them first, or use force)")
            assert self._users is not None
            for cid, _ in users:
                if cid:  # "": a create still under way, which no removal can stop
                    await self._users.remove(cid, True)
            if self.used_by(v.name):
                raise VolumeInUse(f"Volume '{v.name}' is still in use: "
                                  f"{', '.join(n for _, n in self.used_by(v.name))}")
        if self._volumes.get(v.name) is not v:
            raise NoSuchVolume(name_or_id)
        del self._volumes[v.name]
        freed = await asyncio.to_thread(_du, Path(v.path))
        await self._write(lambda: self._db.execute("DELETE FROM volumes WHERE id = ?", (v.id,)))
        # What containers wrote into it, at any depth.
        await asyncio.to_thread(filetree.remove_tree, v.path, None, True)
        for listener in self._listeners:
            listener.volume_removed(v)
        return freed

    async def prune(self) -> int:
        freed = 0
        for v in list(self._volumes.values()):
            if not self.used_by(v.name):
                try:
                    freed += await self.remove(v.name, False)
                except (VolumeInUse, NoSuchVolume):
                    pass
        return freed

    def resolve(self, volumes: tuple[str, ...]) -> tuple[tuple[str, str, str], ...]:
        """A container's volumes option -> (host source, target, options) for the LaunchSpec; host paths
        checked again (they may have gone since create)."""
        out = []
        for entry in volumes:
            m = parse_volume(entry)
            if m.named:
                source = self.get(m.source).mountpoint
                opts = (*m.options, "copyup")
            else:
                if not os.path.exists(m.source):
                    raise NoSuchPath(f"Host path '{m.source}' of volume '{entry}' does not exist")
                source, opts = m.source, m.options
            out.append((source, m.target, ",".join(opts)))
        return tuple(out)


def check_host_paths(volumes: tuple[str, ...]) -> None:
    for entry in volumes:
        m = parse_volume(entry)
        if not m.named and not m.anonymous and not os.path.exists(m.source):
            raise NoSuchPath(f"Host path '{m.source}' of volume '{entry}' does not exist")


def host_sources(volumes: object) -> list[str]:
    """The host paths a create's volumes option would bind (its bad entries are left for create to name)."""
    out = []
    for entry in volumes if isinstance(volumes, (list, tuple)) else ():
        try:
            m = parse_volume(entry) if isinstance(entry, str) else None
        except InvalidArgument:
            continue
        if m is not None and m.source.startswith("/"):
            out.append(m.source)
    return out


def named_volumes(volumes: tuple[str, ...]) -> list[str]:
    return [m.source for m in map(parse_volume, volumes) if m.named]


def name_anonymous(volumes: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Give each anonymous volume (DEST alone) a name of its own, as Podman does (64 hex digits): the volumes
    option as the container keeps it, and the names made."""
    out, made = [], []
    for entry in volumes:
        m = parse_volume(entry)
        if m.anonymous:
            m = VolumeMount(secrets.token_hex(32), m.target, m.options)
            made.append(m.source)
        out.append(m.text())
    return tuple(out), tuple(made)


def _du(path: Path) -> int:
    return filetree.tree_size(path)
