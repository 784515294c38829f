"""Named volumes: made on first use by a container (as Podman does) or by CreateVolume, kept after their
containers and the agent.

A named volume is a directory /var/lib/quilt/volumes/NAME/_data (as Podman and Docker lay it out) and a row in
the volumes table (store.py). Which containers use one is the container table's to say (containers.py); a removal
with force, which removes those containers first, is removal.py's.
"""
from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from collections.abc import Collection
from typing import Any, Protocol

from quilt_agent import filetree
from quilt_agent.containers import ContainerTable, User
from quilt_agent.errors import InvalidArgument, NoSuchPath, NoSuchVolume, VolumeInUse, VolumeNameInUse
from quilt_agent.store import StateStore
from quilt_agent.model import now_usec
from quilt_agent.volume_options import ANONYMOUS_NAME_RE, Volume, parse_volume, validate_volume_name


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


class Volumes:
    """The named volumes: in memory, in the store, on disk."""

    def __init__(self, root: Path, store: StateStore, containers: ContainerTable) -> None:
        self._root = root
        self._store = store
        self._containers = containers  # read only: who uses a volume
        self._volumes: dict[str, Volume] = {}
        self._listeners: list[VolumeListener] = []
        self._held: dict[str, int] = {}  # volumes an ensure() is making for a create: in use meanwhile

    def subscribe(self, listener: VolumeListener) -> None:
        self._listeners.append(listener)

    async def load(self) -> None:
        volumes = await self._store.volumes()
        for v in volumes:
            self._volumes[v.name] = v
        await asyncio.to_thread(_make_mountpoints, volumes)

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

    def find(self, name: str) -> Volume | None:
        """The volume a container's mount names (by name only, as mounts do), or None."""
        return self._volumes.get(name)

    def used_by(self, name: str) -> list[User]:
        users = self._containers.volume_users(name)
        return users + [User("", "a container being created")] * (name in self._held and not users)

    async def create(self, name: str, options: dict[str, Any], exist_ok: bool = False, owner_uid: int = 0) -> Volume:
        validate_volume_name(name)
        labels = _parse_create_options(options)
        if name in self._volumes:
            if exist_ok:
                return self._volumes[name]
            raise VolumeNameInUse(name)
        # An anonymous volume's name is already 64 random hex digits: its id too, as Podman shows one string.
        vid = name if ANONYMOUS_NAME_RE.fullmatch(name) else secrets.token_hex(32)
        data = self._root / name / "_data"
        v = Volume(id=vid, name=name, mountpoint=str(data), created_at=now_usec(), labels=labels, owner_uid=owner_uid)
        self._volumes[name] = v  # taken before the await: a concurrent create of the same name is refused
        try:
            await asyncio.to_thread(self._make_dirs, data)
            await self._store.insert_volume(v)
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

    async def ensure(self, names: list[str], owner_uid: int = 0) -> list[Volume]:
        """Make the named volumes a container names that do not exist yet (first use, as Podman), owned by the
        container's owner; returns them all, in order."""
        for name in names:
            self._held[name] = self._held.get(name, 0) + 1
        try:
            return [self._volumes.get(name) or await self.create(name, {}, exist_ok=True, owner_uid=owner_uid)
                    for name in names]
        finally:
            for name in names:
                self._held[name] -= 1
                if not self._held[name]:
                    del self._held[name]

    async def remove(self, name_or_id: str, cascaded: bool = False) -> int:
        """Remove a volume no container uses, and its data; returns the bytes freed. VolumeInUse otherwise.
        cascaded: its containers were just removed for it (removal.py), so one found now came meanwhile."""
        v = self.get(name_or_id)
        users = self.used_by(v.name)
        if users and cascaded:
            raise VolumeInUse(f"Volume '{v.name}' is still in use: {', '.join(u.name for u in users)}")
        if users:
            raise VolumeInUse(f"Volume '{v.name}' is used by container(s) "
                              f"{', '.join(u.name for u in users)} (remove them first, or use force)")
        if self._volumes.get(v.name) is not v:
            raise NoSuchVolume(name_or_id)
        del self._volumes[v.name]
        freed = await asyncio.to_thread(filetree.tree_size, Path(v.path))
        await self._store.delete_volume(v.id)
        # What containers wrote into it, at any depth.
        await asyncio.to_thread(filetree.remove_tree, v.path, None, True)
        for listener in self._listeners:
            listener.volume_removed(v)
        return freed

    async def prune(self, only: Collection[str] | None = None) -> int:
        """Remove the volumes no container uses (only: among these ids); the bytes freed."""
        freed = 0
        for v in list(self._volumes.values()):
            if not self.used_by(v.name) and (only is None or v.id in only):
                try:
                    freed += await self.remove(v.name)
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


def _make_mountpoints(volumes: list[Volume]) -> None:
    """Each volume's _data again, should an administrator have removed one: a container that names the volume
    then starts with it empty rather than failing."""
    for v in volumes:
        os.makedirs(v.mountpoint, mode=0o755, exist_ok=True)
