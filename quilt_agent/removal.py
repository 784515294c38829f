"""Removals that take containers with them: an image, volume or network removed with force first removes the
containers that use it (as `podman rmi -f`, `podman volume rm -f`, `podman network rm -f` do).

The one place where the container lifecycle (manager.py) and its peers (images, volumes, networks) meet, so
that neither reaches the other: each peer says who uses what it holds and refuses to remove it while in use;
this module removes those containers through the manager, then asks the peer again.

A removal with force is in two steps: affected() says which containers it would remove, the bus layer
authorizes each, and the removal then removes those and no other: a container that came to use the object in
between was not authorized, and the removal is refused, having changed nothing more.
"""
from __future__ import annotations

import logging
from collections.abc import Collection

from quilt_agent.containers import User
from quilt_agent.errors import AccessDenied, NoSuchContainer
from quilt_agent.images.service import Images
from quilt_agent.manager import Manager
from quilt_agent.model import Container
from quilt_agent.network.core import Networks
from quilt_agent.volumes import Volumes

log = logging.getLogger("quilt.removal")

KINDS = ("image", "volume", "network")


class Removal:
    def __init__(self, manager: Manager, images: Images, volumes: Volumes, networks: Networks) -> None:
        self._manager = manager
        self._images = images
        self._volumes = volumes
        self._networks = networks

    def affected(self, kind: str, name_or_id: str) -> list[Container]:
        """The containers a removal with force of the image, volume or network would remove, in order. Raises
        the peer's NoSuch* for a name that finds nothing."""
        if kind == "image":
            image = self._images.get(name_or_id)
            if self._images.store.is_name(name_or_id) and len(image.names) > 1:
                return []  # only the name goes
            ids = [u.id for u in self._images.users_of(image.id)]
        elif kind == "volume":
            ids = [u.id for u in self._volumes.used_by(self._volumes.get(name_or_id).name)]
        elif kind == "network":
            ids = self._networks.removal_order(name_or_id)
        else:
            raise ValueError(f"no removal of a {kind}")
        out = []
        for container_id in ids:
            try:
                out.append(self._manager.get(container_id))
            except NoSuchContainer:
                pass  # a create under way (id ""), which the peer refuses to remove under, or gone meanwhile
        return out

    async def image(self, ref: str, force: bool, authorized: Collection[str] = ()) -> None:
        """authorized: the ids of the containers the caller may have removed (a removal with force)."""
        async def remove_users(users: list[User]) -> None:
            await self._remove_containers([u.id for u in users], authorized, f"it uses image {ref}, removed with force")
        await self._images.remove(ref, remove_users if force else None)

    async def volume(self, name_or_id: str, force: bool, authorized: Collection[str] = ()) -> int:
        """The bytes freed."""
        if not force:
            return await self._volumes.remove(name_or_id)
        volume = self._volumes.get(name_or_id)
        await self._remove_containers([u.id for u in self._volumes.used_by(volume.name)], authorized,
                                      f"it uses volume {volume.name}, removed with force")
        return await self._volumes.remove(volume.id, cascaded=True)

    async def network(self, name_or_id: str, force: bool, authorized: Collection[str] = ()) -> None:
        if not force:
            return await self._networks.remove(name_or_id)
        network = self._networks.get(name_or_id)
        await self._remove_containers(self._networks.removal_order(network.id), authorized,
                                      f"it uses network {network.name}, removed with force")
        await self._networks.remove(network.id, cascaded=True)

    async def _remove_containers(self, container_ids: list[str], authorized: Collection[str], why: str) -> None:
        # All checked before the first is removed: one not authorized refuses the whole removal.
        unauthorized = [c for c in self._manager.list() if c.id in container_ids and c.id not in authorized]
        if unauthorized:
            raise AccessDenied(f"Container '{unauthorized[0].name}' came to use what is being removed while the "
                               "removal was being authorized: call again")
        for container_id in container_ids:
            if not container_id:
                continue  # a create still under way, which no removal can stop: the peer refuses then
            try:
                name = self._manager.get(container_id).name
                log.info("Removing container %s: %s", name, why)
                await self._manager.remove(container_id, force=True)
            except NoSuchContainer:
                pass  # removed meanwhile
