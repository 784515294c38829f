"""The containers the agent knows, in memory: the manager changes them, its peers read them.

Networks resolve `container:NAME` and ping targets here; images and volumes ask which containers use one
before a removal or a prune. A create holds its name, image and volumes from its first check until its row is
stored (`hold`), so that no removal or second create slips in while it awaits.
"""
from __future__ import annotations

from dataclasses import dataclass

from quilt_agent.errors import NoSuchContainer
from quilt_agent.model import Container
from quilt_agent.volume_options import named_volumes


@dataclass(frozen=True)
class User:
    """A container that uses an image or a volume; id "" for a create not yet stored."""

    id: str
    name: str


@dataclass(frozen=True)
class _Hold:
    image_id: str
    volumes: tuple[str, ...]


class ContainerTable(dict[str, Container]):
    """container id -> Container, and the creates under way."""

    def __init__(self) -> None:
        super().__init__()
        self._creating: dict[str, _Hold] = {}  # name -> what the create holds
        # name -> id, kept with the table: every property read of a container's bus object finds it, and a scan of
        # thousands of containers per read made each start slower the more ran.
        self._names: dict[str, str] = {}

    def __setitem__(self, container_id: str, c: Container) -> None:
        old = super().get(container_id)
        if old is not None and self._names.get(old.name) == container_id:
            del self._names[old.name]
        super().__setitem__(container_id, c)
        self._names[c.name] = container_id

    def __delitem__(self, container_id: str) -> None:
        old = super().__getitem__(container_id)
        super().__delitem__(container_id)
        if self._names.get(old.name) == container_id:
            del self._names[old.name]

    def pop(self, container_id: str, *default: Container | None) -> Container | None:  # type: ignore[override]
        if container_id not in self:
            return super().pop(container_id, *default)
        c = self[container_id]
        del self[container_id]
        return c

    def clear(self) -> None:
        super().clear()
        self._names.clear()

    def find(self, name_or_id: str) -> Container:
        """By id, name, or an unambiguous id prefix of at least 3 characters; NoSuchContainer otherwise."""
        c = self.get(name_or_id)
        if c is None and name_or_id in self._names:
            c = self.get(self._names[name_or_id])
        if c is not None:
            return c
        if len(name_or_id) >= 3:
            matches = [c for c in self.values() if c.id.startswith(name_or_id)]
            if len(matches) == 1:
                return matches[0]
        raise NoSuchContainer(name_or_id)

    def name_taken(self, name: str) -> bool:
        return name in self._creating or name in self._names

    def hold(self, name: str, image_id: str, volumes: tuple[str, ...]) -> None:
        self._creating[name] = _Hold(image_id, volumes)

    def release(self, name: str) -> None:
        self._creating.pop(name, None)

    @property
    def creating(self) -> bool:
        return bool(self._creating)

    def image_users(self) -> dict[str, list[User]]:
        """image id -> the containers that use it (as their image or cached setup image) and the creates that
        hold it."""
        users: dict[str, list[User]] = {}
        for c in self.values():
            users.setdefault(c.spec.image_id, []).append(User(c.id, c.name))
            if c.setup_image:
                users.setdefault(c.setup_image, []).append(User(c.id, c.name))
        for name, hold in self._creating.items():
            users.setdefault(hold.image_id, []).append(User("", name))
        return users

    def volume_users(self, volume: str) -> list[User]:
        """The containers that name the volume, and the creates that hold it."""
        users = [User(c.id, c.name) for c in self.values() if volume in named_volumes(c.spec.volumes)]
        return users + [User("", name) for name, hold in self._creating.items() if volume in hold.volumes]
